"""studies/guide_quality.py: how close a model's guide is to the clean VIS luminance."""

import numpy as np
import pytest

from cspsr_tf.model.build import build_cspsr
from cspsr_tf.model.configs import get_config
from studies.guide_quality import gained_psnr, measure
from tests.test_guided_filter import numpy_guided_filter


def test_gained_psnr_fits_one_gain_per_channel():
    rng = np.random.default_rng(0)
    reference = rng.random((5, 6, 2))
    # Channel 0 at half brightness, channel 1 exact: a gain of 2 restores channel 0 exactly.
    image = np.stack([reference[..., 0] / 2, reference[..., 1]], axis=-1)
    assert gained_psnr(image, reference) > 250
    # An offset on channel 1 no gain removes: the fitted gain and its MSE by hand.
    noisy = image + np.stack([np.zeros((5, 6)), np.full((5, 6), 0.1)], axis=-1)
    gain = (noisy[..., 1] * reference[..., 1]).sum() / (noisy[..., 1] ** 2).sum()
    mse = np.mean(np.stack([np.zeros((5, 6)), gain * noisy[..., 1] - reference[..., 1]], axis=-1) ** 2)
    assert gained_psnr(noisy, reference) == pytest.approx(10 * np.log10(1 / mse), rel=1e-9)


def test_measure_on_a_tiny_untrained_guided_filter_model():
    config = get_config("tiny", "full_gf_skip", scale=2)
    model = build_cspsr(config)
    rng = np.random.default_rng(1)
    degraded, clean = [], []
    for k in range(2):
        clean_lr = rng.random((1, 10, 12, 3)).astype(np.float32)
        vis_lr = (0.25 * clean_lr + rng.normal(0, 0.02, clean_lr.shape)).astype(np.float32)
        nir_lr = rng.random((1, 10, 12, 1)).astype(np.float32)
        degraded.append((f"f{k}", vis_lr, nir_lr, None, "aligned"))
        clean.append((f"f{k}", clean_lr, nir_lr, None, "aligned"))
    got = measure(model, config, degraded, clean)
    assert set(got) == {"nir", "luma", "unfiltered"}
    # The oracle row: the guided filter (radius 2, eps 1e-4) by the clean luminance, in numpy.
    psnrs = []
    for (_, vis_lr, *_), (_, clean_lr, *_) in zip(degraded, clean, strict=True):
        luma = clean_lr[0].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        filtered = np.stack([numpy_guided_filter(vis_lr[0, ..., c].astype(np.float64), luma, 2, 1e-4)
                             for c in range(3)], axis=-1)
        psnrs.append(gained_psnr(filtered, clean_lr[0]))
    assert got["luma"]["filter_psnr"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert got["unfiltered"]["filter_psnr"] == pytest.approx(
        np.mean([gained_psnr(d[1], c[1]) for d, c in zip(degraded, clean, strict=True)]), rel=1e-9)
    with pytest.raises(ValueError, match="out of step"):
        measure(model, config, degraded, clean[::-1])
    with pytest.raises(ValueError, match="no NIR-guided filter"):
        plain = get_config("tiny", "full", scale=2)
        measure(build_cspsr(plain), plain, degraded, clean)


def test_without_a_cvm_the_nir_guide_is_the_nir_input():
    import tensorflow as tf

    from cspsr_tf.ops.cross_spectral_similarity import local_ncc_squared, luminance

    config = get_config("tiny", "full_gf", scale=2).replace(use_cvm=False)
    rng = np.random.default_rng(5)
    clean_lr = rng.random((1, 10, 12, 3)).astype(np.float32)
    nir_lr = rng.random((1, 10, 12, 1)).astype(np.float32)
    frames = [("f", 0.5 * clean_lr, nir_lr, None, "stereo")]
    got = measure(build_cspsr(config), config, frames, [("f", clean_lr, nir_lr, None, "stereo")])
    want = float(tf.reduce_mean(local_ncc_squared(tf.constant(nir_lr), luminance(tf.constant(clean_lr)))))
    assert got["nir"]["ncc2"] == pytest.approx(want, rel=1e-6)
    assert "learned" not in got
