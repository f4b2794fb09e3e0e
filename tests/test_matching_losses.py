"""The CVM's alignment signal: the matching loss finds a known shift of a cross-spectral pair
(the pairs are built in tests/cross_spectral_pairs.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.ops.warp import disparity_to_lr
from cspsr_tf.train.matching_losses import (
    CONSISTENCY_THRESHOLD,
    OCCLUDED_WEIGHT,
    _visibility_weight,
    consistency_per_example,
    cvm_matching_loss_per_example,
    edge_aware_smoothness_per_example,
    photometric_per_example,
    supervised_per_example,
)
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


# --- Each term by value against numpy, on non-constant disparities -----------------------
#
# The tests above move one constant disparity (disp_l == disp_r), for which the smoothness and
# the consistency are 0 and every pixel passes the left-right check. Below, every term of the
# loss is recomputed with numpy (float64, explicit loops; never by calling the module under
# test) from its documented formula, on small hand-made inputs whose disparities vary from
# pixel to pixel, fail the left-right check in places and sample outside the frame in places.
# Disparities are multiples of 0.25, so the warps are exact in float32 as well.

LUMA = np.array([0.299, 0.587, 0.114])


def np_luminance(image):
    image = np.asarray(image, np.float64)
    return (image * LUMA).sum(-1, keepdims=True) if image.shape[-1] == 3 else image


def np_warp(image, disparity, sign):
    """out(i, j) = linear interpolation of row i at x = j + sign * d(i, j), clamped to the
    frame; valid = 1 where x lies in [0, W - 1]."""
    image = np.asarray(image, np.float64)
    b, h, w, c = image.shape
    out = np.zeros_like(image)
    valid = np.zeros((b, h, w, 1))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                x = j + sign * float(disparity[n, i, j, 0])
                valid[n, i, j, 0] = 0.0 <= x <= w - 1
                x = min(max(x, 0.0), w - 1.0)
                x0 = int(np.floor(x))
                x1 = min(x0 + 1, w - 1)
                t = x - x0
                out[n, i, j] = (1 - t) * image[n, i, x0] + t * image[n, i, x1]
    return out, valid


def np_blur(image, sigma):
    """Separable Gaussian (radius int(3 sigma + 0.5)), border replicated; sigma 0: identity."""
    image = np.asarray(image, np.float64)
    if sigma <= 0:
        return image
    radius = int(3 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    _, h, w, _ = image.shape
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(taps[k] * padded[:, k : k + h] for k in range(2 * radius + 1))
    return sum(taps[k] * rows[:, :, k : k + w] for k in range(2 * radius + 1))


def np_ncc_squared(a, b, window=1.5, relative_floor=0.01):
    """cov^2 / ((var_a + floor_a)(var_b + floor_b)) in Gaussian windows, at most 1; each floor
    is relative_floor times the example's mean local variance (+1e-12)."""
    mean_a, mean_b = np_blur(a, window), np_blur(b, window)
    var_a = np.maximum(np_blur(a * a, window) - mean_a**2, 0.0)
    var_b = np.maximum(np_blur(b * b, window) - mean_b**2, 0.0)
    cov = np_blur(a * b, window) - mean_a * mean_b
    floor_a = relative_floor * var_a.mean(axis=(1, 2, 3), keepdims=True) + 1e-12
    floor_b = relative_floor * var_b.mean(axis=(1, 2, 3), keepdims=True) + 1e-12
    return np.minimum(cov**2 / ((var_a + floor_a) * (var_b + floor_b)), 1.0)


def np_visibility(disp, other, sign):
    """1 where |disp - other sampled at j + sign * disp| < 1 px, else 0.2."""
    other_here, _ = np_warp(other, disp, sign)
    return np.where(np.abs(np.asarray(disp, np.float64) - other_here) < 1.0, 1.0, 0.2)


def np_weighted_mean(cost_maps, weight):
    """Per example: sum over maps and pixels of weight * cost / (number of maps * sum of weight)."""
    out = []
    for n in range(weight.shape[0]):
        total = sum((weight[n] * cost[n]).sum() for cost in cost_maps)
        norm = len(cost_maps) * weight[n].sum()
        out.append(total / norm if norm > 0 else 0.0)
    return np.array(out)


def np_photometric(vis, nir, disp_l, disp_r):
    lum_vis, lum_nir = np_luminance(vis), np_luminance(nir)
    nir_l, inside_l = np_warp(lum_nir, disp_l, -1)
    vis_r, inside_r = np_warp(lum_vis, disp_r, +1)
    weight_l = inside_l * np_visibility(disp_l, disp_r, -1)
    weight_r = inside_r * np_visibility(disp_r, disp_l, +1)
    sigmas = (0.0, 1.0, 2.0)
    cost_l = [1.0 - np_ncc_squared(np_blur(lum_vis, s), np_blur(nir_l, s)) for s in sigmas]
    cost_r = [1.0 - np_ncc_squared(np_blur(lum_nir, s), np_blur(vis_r, s)) for s in sigmas]
    return np_weighted_mean(cost_l, weight_l) + np_weighted_mean(cost_r, weight_r)


def np_smoothness(disp, image):
    """mean over horizontal neighbours of |d(j+1) - d(j)| exp(-10 |lum(j+1) - lum(j)|) plus the
    same vertically, with d = disp / (mean(disp) + 1e-3), per example."""
    disp = np.asarray(disp, np.float64)
    lum = np_luminance(image)
    out = []
    for n in range(disp.shape[0]):
        d = disp[n, ..., 0] / (disp[n].mean() + 1e-3)
        g = lum[n, ..., 0]
        h, w = d.shape
        dx = [abs(d[i, j + 1] - d[i, j]) * np.exp(-10 * abs(g[i, j + 1] - g[i, j]))
              for i in range(h) for j in range(w - 1)]
        dy = [abs(d[i + 1, j] - d[i, j]) * np.exp(-10 * abs(g[i + 1, j] - g[i, j]))
              for i in range(h - 1) for j in range(w)]
        out.append(np.mean(dx) + np.mean(dy))
    return np.array(out)


def np_consistency(disp_l, disp_r):
    r_in_l, inside_l = np_warp(disp_r, disp_l, -1)
    l_in_r, inside_r = np_warp(disp_l, disp_r, +1)
    return np_weighted_mean([np.abs(disp_l - r_in_l)], inside_l) + np_weighted_mean(
        [np.abs(disp_r - l_in_r)], inside_r
    )


def np_resize_bilinear(image, height, width):
    """Bilinear resize with half-pixel centres (tf.image.resize): the source position of output
    pixel o is (o + 0.5) * in / out - 0.5, clamped to the frame."""
    image = np.asarray(image, np.float64)
    b, h, w, c = image.shape
    out = np.zeros((b, height, width, c))
    for i in range(height):
        y = min(max((i + 0.5) * h / height - 0.5, 0.0), h - 1.0)
        y0 = int(np.floor(y))
        y1, ty = min(y0 + 1, h - 1), y - y0
        for j in range(width):
            x = min(max((j + 0.5) * w / width - 0.5, 0.0), w - 1.0)
            x0 = int(np.floor(x))
            x1, tx = min(x0 + 1, w - 1), x - x0
            top = (1 - tx) * image[:, y0, x0] + tx * image[:, y0, x1]
            bottom = (1 - tx) * image[:, y1, x0] + tx * image[:, y1, x1]
            out[:, i, j] = (1 - ty) * top + ty * bottom
    return out


def np_supervised(disp_l, pyramid, gt, valid):
    """Masked L1 of disp_l plus, for every head but the finest, of its left channel upsampled
    to the padded size and cropped to the frame."""
    h, w = disp_l.shape[1:3]
    ph, pw = pyramid[-1].shape[1:3]
    loss = np_weighted_mean([np.abs(np.asarray(disp_l, np.float64) - gt)], valid)
    for level in pyramid[:-1]:
        up = np_resize_bilinear(level[..., :1], ph, pw)[:, :h, :w]
        loss = loss + np_weighted_mean([np.abs(up - gt)], valid)
    return loss


def quarter_steps(rng, shape, high):
    """Random disparities on the 0.25 px grid in [0, high]."""
    return (rng.integers(0, int(4 * high) + 1, shape) / 4.0).astype(np.float32)


@pytest.fixture(scope="module")
def stereo_batch():
    """Two examples: random textures and varying disparities (some pixels fail the left-right
    check, some sample outside the frame)."""
    rng = np.random.default_rng(11)
    vis = rng.random((2, 8, 12, 3)).astype(np.float32)
    nir = rng.random((2, 8, 12, 1)).astype(np.float32)
    disp_l = quarter_steps(rng, (2, 8, 12, 1), 3.0)
    disp_r = quarter_steps(rng, (2, 8, 12, 1), 3.0)
    return vis, nir, disp_l, disp_r


def test_the_batch_exercises_occlusions_and_the_frame_border(stereo_batch):
    # Guards the fixture itself: with every pixel consistent or inside, the tests below would
    # not see the visibility weight or the mask.
    _, _, disp_l, disp_r = stereo_batch
    weight = np_visibility(disp_l, disp_r, -1)
    _, inside = np_warp(disp_r, disp_l, -1)
    assert 0.1 < (weight == 0.2).mean() < 0.9
    assert 0.0 < (inside == 0).mean() < 0.5


def test_visibility_weight_by_hand():
    # Left view: disp_r is sampled at j - disp_l = [-0.5 (clamped to 0), 0, 1, 1.5]:
    # [1, 1, 1, (1 + 0) / 2] -> |disp_l - it| = [0.5, 0, 0, 1.0]; 1.0 is not < 1 -> 0.2.
    # Right view: disp_l is sampled at j + disp_r = [1, 2, 2, 3.5 (clamped to 3)]:
    # [1, 1, 1, 1.5] -> |disp_r - it| = [0, 0, 1, 1] -> [1, 1, 0.2, 0.2].
    disp_l = np.array([0.5, 1.0, 1.0, 1.5], np.float32).reshape(1, 1, 4, 1)
    disp_r = np.array([1.0, 1.0, 0.0, 0.5], np.float32).reshape(1, 1, 4, 1)
    left = _visibility_weight(tf.constant(disp_l), tf.constant(disp_r), "right_to_left")
    right = _visibility_weight(tf.constant(disp_r), tf.constant(disp_l), "left_to_right")
    np.testing.assert_allclose(left.numpy()[0, 0, :, 0], [1.0, 1.0, 1.0, 0.2], rtol=1e-6)
    np.testing.assert_allclose(right.numpy()[0, 0, :, 0], [1.0, 1.0, 0.2, 0.2], rtol=1e-6)
    assert OCCLUDED_WEIGHT == 0.2 and CONSISTENCY_THRESHOLD == 1.0


def test_visibility_weight_matches_numpy_and_passes_no_gradient(stereo_batch):
    _, _, disp_l, disp_r = stereo_batch
    d_l, d_r = tf.Variable(disp_l), tf.Variable(disp_r)
    with tf.GradientTape() as tape:
        weight = _visibility_weight(d_l, d_r, "right_to_left")
        total = tf.reduce_sum(weight * d_l)
    np.testing.assert_allclose(weight.numpy(), np_visibility(disp_l, disp_r, -1), rtol=1e-6)
    np.testing.assert_allclose(
        _visibility_weight(disp_r, disp_l, "left_to_right").numpy(), np_visibility(disp_r, disp_l, +1),
        rtol=1e-6,
    )
    # The weight is a constant to the optimiser: d(sum w * d_l) / d d_l = w, and nothing flows
    # to disp_r through it.
    grad_l, grad_r = tape.gradient(total, [d_l, d_r])
    np.testing.assert_allclose(grad_l.numpy(), weight.numpy(), rtol=1e-6)
    assert grad_r is None or not np.any(grad_r.numpy())


def test_photometric_term_matches_numpy(stereo_batch):
    vis, nir, disp_l, disp_r = stereo_batch
    got = photometric_per_example(vis, nir, disp_l, disp_r).numpy()
    np.testing.assert_allclose(got, np_photometric(vis, nir, disp_l, disp_r), rtol=2e-5)


def test_smoothness_by_hand():
    # d = disp / (mean 1.5 + 1e-3). Horizontal differences: row 0 |3 - 1| = 2 across a
    # luminance step of 0.1 (weight e^-1), row 1 zero; vertical: column 0 zero, column 1
    # |1 - 3| = 2 across the same 0.1 step (weight e^-1). Each mean is over 2 differences:
    # (2 e^-1 / 1.501) / 2 + (2 e^-1 / 1.501) / 2.
    disp = np.array([[1.0, 3.0], [1.0, 1.0]], np.float32).reshape(1, 2, 2, 1)
    nir = np.array([[0.0, 0.1], [0.0, 0.0]], np.float32).reshape(1, 2, 2, 1)
    expected = 2 * np.exp(-1.0) / 1.501
    got = float(edge_aware_smoothness_per_example(disp, nir)[0])
    assert got == pytest.approx(expected, rel=1e-5)
    # A flat image does not lower the penalty: 2 / 1.501.
    flat = float(edge_aware_smoothness_per_example(disp, np.zeros_like(nir))[0])
    assert flat == pytest.approx(2 / 1.501, rel=1e-5)
    # An RGB image is weighted through its luminance: a 0.1 step in green alone is 0.0587.
    rgb = np.zeros((1, 2, 2, 3), np.float32)
    rgb[..., 1] = nir[..., 0]
    got_rgb = float(edge_aware_smoothness_per_example(disp, rgb)[0])
    assert got_rgb == pytest.approx(2 * np.exp(-0.587) / 1.501, rel=1e-5)


def test_smoothness_matches_numpy(stereo_batch):
    vis, nir, disp_l, disp_r = stereo_batch
    np.testing.assert_allclose(
        edge_aware_smoothness_per_example(disp_l, vis).numpy(), np_smoothness(disp_l, vis), rtol=1e-5
    )
    np.testing.assert_allclose(
        edge_aware_smoothness_per_example(disp_r, nir).numpy(), np_smoothness(disp_r, nir), rtol=1e-5
    )


def test_consistency_by_hand():
    # Left: disp_r at j - disp_l = [-0.5 (outside: masked), 0, 1, 1.5] = [-, 1, 1, 0.5]
    # -> |disp_l - it| = [-, 0, 0, 1]: 1/3. Right: disp_l at j + disp_r = [1, 2, 2, 3.5
    # (outside: masked)] = [1, 1, 1, -] -> |disp_r - it| = [0, 0, 1, -]: 1/3.
    disp_l = np.array([0.5, 1.0, 1.0, 1.5], np.float32).reshape(1, 1, 4, 1)
    disp_r = np.array([1.0, 1.0, 0.0, 0.5], np.float32).reshape(1, 1, 4, 1)
    assert float(consistency_per_example(disp_l, disp_r)[0]) == pytest.approx(2 / 3, rel=1e-6)


def test_consistency_matches_numpy(stereo_batch):
    _, _, disp_l, disp_r = stereo_batch
    np.testing.assert_allclose(
        consistency_per_example(disp_l, disp_r).numpy(), np_consistency(disp_l, disp_r), rtol=1e-5
    )


def test_supervised_pyramid_by_hand():
    # Three heads (coarse to fine) at the padded size 4 x 8 of a 3 x 6 frame. The finest head is
    # disp_l itself (not counted twice); the coarser ones count through their LEFT channel
    # (constant 2 and 0.5 here; the right channel holds 100 to catch a channel mix-up).
    disp_l = np.full((1, 3, 6, 1), 1.0, np.float32)
    gt = np.zeros((1, 3, 6, 1), np.float32)
    valid = np.ones((1, 3, 6, 1), np.float32)

    def head(h, w, left):
        return np.concatenate(
            [np.full((1, h, w, 1), left, np.float32), np.full((1, h, w, 1), 100.0, np.float32)], -1
        )

    pyramid = [head(1, 2, 2.0), head(2, 4, 0.5), head(4, 8, 7.0)]
    got = float(supervised_per_example(disp_l, pyramid, gt, valid)[0])
    assert got == pytest.approx(1.0 + 2.0 + 0.5, rel=1e-6)
    # Without a pyramid (or a pyramid of one head) only the finest term remains.
    assert float(supervised_per_example(disp_l, [pyramid[-1]], gt, valid)[0]) == pytest.approx(1.0)


def test_supervised_pyramid_matches_numpy():
    # Non-constant coarse heads: bilinear upsampling to the padded size 8 x 16, cropped to the
    # 7 x 13 frame, half the ground truth masked.
    rng = np.random.default_rng(5)
    disp_l = quarter_steps(rng, (2, 7, 13, 1), 4.0)
    gt = quarter_steps(rng, (2, 7, 13, 1), 4.0)
    valid = (rng.random((2, 7, 13, 1)) < 0.5).astype(np.float32)
    pyramid = [quarter_steps(rng, (2, 8 // 2**k, 16 // 2**k, 2), 4.0) for k in (2, 1, 0)]
    got = supervised_per_example(disp_l, pyramid, gt, valid).numpy()
    np.testing.assert_allclose(got, np_supervised(disp_l, pyramid, gt, valid), rtol=1e-5)
    # Each coarser head does count: the loss is clearly above the finest term alone.
    finest = np_weighted_mean([np.abs(disp_l - gt)], valid)
    assert np.all(got > finest + 0.3)


def test_total_is_the_weighted_sum_of_the_terms_by_value(stereo_batch):
    vis, nir, disp_l, disp_r = stereo_batch
    rng = np.random.default_rng(6)
    gt = quarter_steps(rng, disp_l.shape, 3.0)
    valid = (rng.random(disp_l.shape) < 0.7).astype(np.float32)
    pyramid = [quarter_steps(rng, (2, 2, 3, 2), 3.0), quarter_steps(rng, (2, 4, 6, 2), 3.0),
               np.concatenate([disp_l, disp_r], -1)]
    weights = {"smoothness_weight": 0.3, "consistency_weight": 0.7, "supervised_weight": 2.0}
    out = cvm_matching_loss_per_example(
        {"disp_l": disp_l, "disp_r": disp_r, "pyramid": pyramid}, vis, nir,
        disparity=gt, disparity_valid=valid, **weights,
    )
    expected = {
        "photometric": np_photometric(vis, nir, disp_l, disp_r),
        # disp_l is smoothed along the left VIS image's edges, disp_r along the right NIR's.
        "smoothness": np_smoothness(disp_l, vis) + np_smoothness(disp_r, nir),
        "consistency": np_consistency(disp_l, disp_r),
        "supervised": np_supervised(disp_l, pyramid, gt, valid),
    }
    expected["total"] = (
        expected["photometric"] + 0.3 * expected["smoothness"] + 0.7 * expected["consistency"]
        + 2.0 * expected["supervised"]
    )
    for name, want in expected.items():
        np.testing.assert_allclose(out[name].numpy(), want, rtol=2e-5, err_msg=name)
    # Every term is non-zero here, so a lost or mis-weighted term changes the total.
    for name in ("photometric", "smoothness", "consistency", "supervised"):
        assert np.all(expected[name] > 0.05), name


def test_loss_is_finite_on_a_frame_one_pixel_high():
    disp = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 1, 4, 1)
    vis, nir = np.zeros((1, 1, 4, 3), np.float32), np.zeros((1, 1, 4, 1), np.float32)
    out = cvm_matching_loss_per_example({"disp_l": disp, "disp_r": disp}, vis, nir)
    for name, value in out.items():
        assert np.isfinite(value.numpy()).all(), name
    # Horizontal differences only: 3 of |1| / (2.5 + 1e-3), averaged, for each view.
    assert float(out["smoothness"][0]) == pytest.approx(2 / 2.501, rel=1e-5)
