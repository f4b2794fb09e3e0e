"""The NIR-guided filter layer, checked against a numpy loop and its defining properties."""

import json

import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.model.build import build_cspsr
from cspsr_tf.model.configs import CSPSRConfig, get_config
from cspsr_tf.model.layers.guided_filter import NIRGuidedFilter, box_mean, guided_filter
from tests.layer_test_utils import run_layer_checks
from tests.model_helpers import perturb_weights


def numpy_box(image, radius):
    """Mean over the window, clipped to the frame, by explicit loops."""
    height, width = image.shape
    out = np.zeros_like(image)
    for i in range(height):
        for j in range(width):
            window = image[max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1]
            out[i, j] = window.mean()
    return out


def numpy_guided_filter(source, guide, radius, eps):
    """He et al.'s Algorithm 1 in float64, one channel."""
    mean_g, mean_s = numpy_box(guide, radius), numpy_box(source, radius)
    a = (numpy_box(guide * source, radius) - mean_g * mean_s) / (
        numpy_box(guide * guide, radius) - mean_g * mean_g + eps
    )
    b = mean_s - a * mean_g
    return numpy_box(a, radius) * guide + numpy_box(b, radius)


def bicubic_of_guided_filter(vis_lr, guide, scale, radius=2, eps=1e-4):
    """The bicubic upsampling of `numpy_guided_filter` of each colour of vis_lr [1, h, w, 3] by
    guide [h, w]: what a `full_gf_skip`-type model outputs while its residual branch is zero."""
    from cspsr_tf.model.layers.bicubic_upsample import BicubicUpsample

    filtered = np.stack([numpy_guided_filter(np.asarray(vis_lr)[0, ..., c].astype(np.float64), guide, radius, eps)
                         for c in range(3)], axis=-1)
    return BicubicUpsample(scale)(filtered[None].astype(np.float32)).numpy()


def random_pair(batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "vis_lr": rng.random((batch, height, width, 3), dtype=np.float32),
        "nir_lr": rng.random((batch, height, width, 1), dtype=np.float32),
    }


def _images(seed, height=9, width=11, channels=3):
    rng = np.random.default_rng(seed)
    return (
        rng.random((1, height, width, channels)).astype(np.float32),
        rng.random((1, height, width, 1)).astype(np.float32),
    )


def test_box_mean_equals_the_loop_including_the_borders():
    image = np.random.default_rng(0).random((1, 6, 8, 1)).astype(np.float32)
    for radius in (1, 2, 4):
        got = box_mean(tf.constant(image), radius).numpy()[0, ..., 0]
        np.testing.assert_allclose(got, numpy_box(image[0, ..., 0].astype(np.float64), radius), atol=1e-6)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_guided_filter_equals_the_numpy_algorithm_per_channel_eps(radius):
    source, guide = _images(1)
    eps = np.array([1e-4, 1e-2, 0.3])
    got = guided_filter(tf.constant(source), tf.constant(guide), radius, tf.constant(eps, tf.float32))
    g = guide[0, ..., 0].astype(np.float64)
    want = np.stack(
        [numpy_guided_filter(source[0, ..., c].astype(np.float64), g, radius, eps[c]) for c in range(3)],
        axis=-1,
    )
    np.testing.assert_allclose(got.numpy()[0], want, atol=2e-5)


def test_guided_filter_reproduces_an_affine_function_of_the_guide():
    # source = 0.7 * guide + 0.2 is fitted exactly by every window (eps -> 0).
    _, guide = _images(2, channels=1)
    source = 0.7 * guide + 0.2
    got = guided_filter(tf.constant(source), tf.constant(guide), 2, 1e-9).numpy()
    np.testing.assert_allclose(got, source, atol=1e-4)


def test_guided_filter_with_a_flat_guide_is_a_double_box_mean():
    # A constant guide explains nothing: a = 0, b = box(source), output box(box(source)).
    source, _ = _images(3, channels=1)
    guide = np.full_like(source, 0.4)
    got = guided_filter(tf.constant(source), tf.constant(guide), 1, 1e-3).numpy()[0, ..., 0]
    s = source[0, ..., 0].astype(np.float64)
    np.testing.assert_allclose(got, numpy_box(numpy_box(s, 1), 1), atol=1e-6)


def test_the_filter_removes_noise_that_the_guide_does_not_have():
    # A noisy copy of a smooth NIR-like scene comes back closer to the clean scene.
    rng = np.random.default_rng(4)
    y, x = np.mgrid[0:32, 0:32] / 32.0
    clean = (0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y)).astype(np.float32)[None, ..., None]
    noisy = clean + rng.normal(0, 0.05, clean.shape).astype(np.float32)
    out = guided_filter(tf.constant(noisy), tf.constant(clean), 2, 1e-4).numpy()
    assert np.mean((out - clean) ** 2) < 0.2 * np.mean((noisy - clean) ** 2)


def test_layer_checks_and_learned_eps():
    source, guide = _images(5)
    run_layer_checks(
        NIRGuidedFilter, {"radius": 2, "initial_eps": 1e-3}, (source, guide),
        expected_output_shapes=(1, 9, 11, 3),
    )
    layer = NIRGuidedFilter(radius=1, initial_eps=1e-3)
    out = layer((source, guide)).numpy()
    np.testing.assert_allclose(np.exp(layer.log_eps.numpy()), [1e-3] * 3, rtol=1e-6)
    g = guide[0, ..., 0].astype(np.float64)
    want = np.stack(
        [numpy_guided_filter(source[0, ..., c].astype(np.float64), g, 1, 1e-3) for c in range(3)],
        axis=-1,
    )
    np.testing.assert_allclose(out[0], want, atol=2e-5)


def test_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="radius must be >= 1"):
        NIRGuidedFilter(radius=0)
    with pytest.raises(ValueError, match="initial_eps must be > 0"):
        NIRGuidedFilter(initial_eps=0.0)
    source, _ = _images(6)
    with pytest.raises(ValueError, match="guide must have 1 channel"):
        NIRGuidedFilter()((source, source))


def test_full_gf_model_reads_the_filtered_vis_and_depends_on_the_nir():
    config = get_config("tiny", "full_gf", scale=2)
    assert config.nir_guided_filter_radius == 2
    model = perturb_weights(build_cspsr(config), seed=1, stddev=0.1)
    layer = model.get_layer("nir_guided_filter_r2")
    assert layer.compute_dtype == "float32"
    # The VIS branch's first conv reads 3 VIS + 3 filtered channels.
    assert model.get_layer("vis_conv1").kernel.shape[2] == 6
    inputs = random_pair(1, 12, 16, seed=2)
    other_nir = np.random.default_rng(3).random((1, 12, 16, 1), dtype=np.float32)
    sr = model(inputs)["vis_sr"].numpy()
    assert np.abs(sr - model({**inputs, "nir_lr": other_nir})["vis_sr"].numpy()).mean() > 1e-3


def test_full_gf_filter_stays_float32_in_bfloat16():
    model = build_cspsr(get_config("tiny", "full_gf", scale=2), precision="bfloat16")
    assert model.get_layer("nir_guided_filter_r2").compute_dtype == "float32"
    assert model.get_layer("vis_conv1").compute_dtype == "bfloat16"
    out = model(random_pair(1, 8, 8, seed=4))
    assert np.isfinite(out["vis_sr"].numpy()).all()


def test_guided_filter_config_checks_and_legacy_configs():
    for bad in [-1, 1.5, True]:
        with pytest.raises(ValueError, match="integer >= 0"):
            CSPSRConfig(nir_guided_filter_radius=bad)
    with pytest.raises(ValueError, match="dual-branch switch"):
        get_config("tiny", "baseline", nir_guided_filter_radius=2)
    config = get_config("tiny", "full_gf")
    assert CSPSRConfig.from_dict(json.loads(config.to_json())) == config
    # Configs saved with the list of radii: none or one load; a bank was retired.
    values = get_config("tiny").to_dict()
    del values["nir_guided_filter_radius"]
    assert CSPSRConfig.from_dict(values).nir_guided_filter_radius == 0
    assert CSPSRConfig.from_dict({**values, "nir_guided_filter_radii": []}).nir_guided_filter_radius == 0
    assert CSPSRConfig.from_dict({**values, "nir_guided_filter_radii": [2]}).nir_guided_filter_radius == 2
    with pytest.raises(ValueError, match=r"nir_guided_filter_radii=\[1, 2, 4\] was retired"):
        CSPSRConfig.from_dict({**values, "nir_guided_filter_radii": [1, 2, 4]})
