"""studies/supervised_guide.py: a guide trained alone, with and without the NIR."""

import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.data.resize import bicubic_downscale
from studies.guide_quality import gained_psnr
from studies.supervised_guide import EPS_GRID, score, train_guide
from tests.test_guided_filter import numpy_guided_filter

LUMA = np.array([0.299, 0.587, 0.114])


def test_score_takes_the_best_eps_of_the_grid_for_each_guide():
    rng = np.random.default_rng(0)
    degraded, clean = [], []
    for k in range(2):
        clean_lr = rng.random((1, 9, 10, 3)).astype(np.float32)
        vis_lr = (0.25 * clean_lr + rng.normal(0, 0.03, clean_lr.shape)).astype(np.float32)
        degraded.append((f"f{k}", vis_lr, None, None, "aligned"))
        clean.append((f"f{k}", clean_lr, None, None, "aligned"))
    got = score(lambda vis, nir, c: tf.constant(c) @ tf.constant(LUMA[:, None], tf.float32), degraded, clean)
    by_eps = {}
    for eps in EPS_GRID:  # the guided filter by the clean luminance, in numpy
        psnrs = []
        for (_, vis_lr, *_), (_, clean_lr, *_) in zip(degraded, clean, strict=True):
            guide = clean_lr[0].astype(np.float64) @ LUMA
            filtered = np.stack([numpy_guided_filter(vis_lr[0, ..., c].astype(np.float64), guide, 2, eps)
                                 for c in range(3)], axis=-1)
            psnrs.append(gained_psnr(filtered, clean_lr[0]))
        by_eps[eps] = np.mean(psnrs)
    best = max(by_eps, key=by_eps.get)
    assert got["eps"] == best
    assert got["filter_psnr"] == pytest.approx(by_eps[best], abs=1e-3)
    for eps in EPS_GRID:
        assert got["filter_psnr_by_eps"][f"{eps:g}"] == pytest.approx(by_eps[eps], abs=1e-3)
    with pytest.raises(ValueError, match="out of step"):
        score(lambda vis, nir, c: vis[..., :1], degraded, clean[::-1])


def test_the_vis_only_guide_does_not_see_the_nir():
    # The NIR is exactly the target (the clean LR luminance) and the VIS is unrelated noise:
    # with the NIR the guide starts at zero loss and stays near it; fed a zero NIR it cannot.
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(4):
        vis_hr = tf.constant(rng.random((2, 8, 8, 3)), tf.float32)
        nir_lr = tf.constant(np.asarray(bicubic_downscale(vis_hr, 2)) @ LUMA[:, None], tf.float32)
        vis_lr = tf.constant(rng.random((2, 4, 4, 3)), tf.float32)
        batches.append(({"vis_lr": vis_lr, "nir_lr": nir_lr}, {"vis_hr": vis_hr}))
    stream = _Batches(batches)
    kwargs = dict(steps=8, learning_rate=1e-3, seed=0, scale=2, channels=4, hidden_layers=1)
    _, with_nir = train_guide(stream, True, **kwargs)
    _, vis_only = train_guide(stream, False, **kwargs)
    assert with_nir < 1e-3 * vis_only
    assert vis_only > 1e-3


class _Batches:
    """A list of batches with the `.take(n)` of a tf.data stream (cycled)."""

    def __init__(self, batches):
        self.batches = batches

    def take(self, n):
        return [self.batches[i % len(self.batches)] for i in range(n)]
