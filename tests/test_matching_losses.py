"""The CVM's alignment signal: the matching loss finds a known shift of a cross-spectral pair
(the pairs are built in tests/cross_spectral_pairs.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.ops.warp import disparity_to_lr
from cspsr_tf.train.matching_losses import cvm_matching_loss_per_example, photometric_per_example
from tests.cross_spectral_pairs import cross_spectral_pair


def constant(value, height, width):
    return tf.fill([1, height, width, 1], float(value))


def test_photometric_term_is_smallest_at_the_true_shift():
    rng = np.random.default_rng(0)
    height, width, shift = 24, 64, 5
    vis, nir = cross_spectral_pair(rng, height, width, shift)
    losses = [
        float(photometric_per_example(vis, nir, constant(d, height, width), constant(d, height, width))[0])
        for d in range(0, 11)
    ]
    assert int(np.argmin(losses)) == shift, losses
    # Not a flat valley: one pixel off costs clearly more than the match.
    assert min(losses[shift - 1], losses[shift + 1]) > 1.1 * losses[shift], losses


def test_label_free_loss_moves_a_disparity_to_the_true_shift():
    # Gradient descent on one disparity value from 2.5 px, true shift 4 px.
    rng = np.random.default_rng(1)
    height, width, shift = 16, 48, 4
    vis, nir = cross_spectral_pair(rng, height, width, shift, sigma=2.0)
    d = tf.Variable(2.5)
    optimizer = keras.optimizers.Adam(0.1)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            disp = tf.fill([1, height, width, 1], 1.0) * d
            loss = cvm_matching_loss_per_example({"disp_l": disp, "disp_r": disp}, vis, nir)["total"][0]
        optimizer.apply_gradients([(tape.gradient(loss, d), d)])

    for _ in range(100):
        step()
    assert float(d) == pytest.approx(shift, abs=0.25)


def test_supervised_term_is_the_masked_l1_error_by_hand():
    disp = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 1, 4, 1)
    gt = np.array([1.5, 2.0, 0.0, 10.0], np.float32).reshape(1, 1, 4, 1)
    valid = np.array([1, 1, 1, 0], np.float32).reshape(1, 1, 4, 1)
    vis = np.zeros((1, 1, 4, 3), np.float32)
    nir = np.zeros((1, 1, 4, 1), np.float32)
    out = cvm_matching_loss_per_example(
        {"disp_l": disp, "disp_r": disp}, vis, nir, disparity=gt, disparity_valid=valid
    )
    # |1 - 1.5| + |2 - 2| + |3 - 0| over the 3 valid pixels; the 4th is masked.
    assert float(out["supervised"][0]) == pytest.approx(3.5 / 3, rel=1e-6)


def test_registered_examples_keep_only_the_supervised_term():
    rng = np.random.default_rng(2)
    vis, nir = cross_spectral_pair(rng, 16, 32, 3)
    vis, nir = np.concatenate([vis, vis]), np.concatenate([nir, nir])
    disp = tf.fill([2, 16, 32, 1], 1.0)
    out = cvm_matching_loss_per_example(
        {"disp_l": disp, "disp_r": disp}, vis, nir, stereo=np.array([1.0, 0.0], np.float32)
    )
    assert float(out["photometric"][0]) > 0.05
    for name in ("photometric", "smoothness", "consistency", "total"):
        assert float(out[name][1]) == 0.0


def test_disparity_to_lr_averages_blocks_and_needs_every_pixel_valid():
    disparity = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    valid = np.ones((1, 4, 4, 1), np.float32)
    valid[0, 3, 3, 0] = 0.0
    lr, lr_valid = disparity_to_lr(disparity, valid, 2)
    # Top-left block: (0 + 1 + 4 + 5) / 4 = 2.5 HR px = 1.25 LR px.
    np.testing.assert_allclose(lr.numpy()[0, ..., 0], [[1.25, 2.25], [5.25, 6.25]])
    np.testing.assert_array_equal(lr_valid.numpy()[0, ..., 0], [[1, 1], [1, 0]])
