"""Tests of cspsr_tf.data.stereo_synthesis against independent numpy references.

The module claims (docstring): the left view pixel (i, j) matches the right view pixel
(i, j - d_l(i, j)), d >= 0; the right image is the backward warp
`nir_r(i, x) = nir(i, x + d_r(i, x))` of the registered (left-view) NIR; `d_l` solves
`d_l(j) = d_r(j - d_l(j))`, and where there are several solutions (a near object copied by the
backward warp into the band beside it) it is the largest, the nearest surface, as a z-buffered
forward splat gives; left pixels where no solution holds, or whose match lies outside the right
frame (or is sampled from outside the registered image), are invalid.

Every reference below is plain numpy (`np.interp` per row, loops over integer pixels); the
module is only called to produce the results under test and, for random fields, the
right-view disparity `d_r` that is the *input* of the references.
"""

import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.data import stereo_synthesis

H, W = 16, 32
# Square in front of a background (right-view disparities, integer so the splat is exact).
BACKGROUND, NEAR = 1.0, 5.0
SQUARE_ROWS, SQUARE_COLS = slice(4, 12), slice(10, 20)


# ----------------------------------------------------------------------------------------
# numpy references
# ----------------------------------------------------------------------------------------


def _interp_rows(image, x):
    """image [H, W] sampled at float columns x [H, W] per row, linear, clamped at the border."""
    cols = np.arange(image.shape[1], dtype=np.float64)
    return np.stack([np.interp(x[i], cols, image[i]) for i in range(image.shape[0])])


def _np_right_view(left, d_r):
    """right(i, x) = left(i, x + d_r(i, x)) for left [H, W, C], d_r [H, W]."""
    x = np.arange(left.shape[1])[np.newaxis, :] + d_r
    return np.stack([_interp_rows(left[..., c], x) for c in range(left.shape[2])], axis=-1)


def _np_sample(image, d_l):
    """image(i, j - d_l(i, j)): the right view brought to the left view, [H, W, C]."""
    x = np.arange(image.shape[1])[np.newaxis, :] - d_l
    return np.stack([_interp_rows(image[..., c], x) for c in range(image.shape[2])], axis=-1)


def _np_fixed_point(d_r, iterations):
    """d <- d_r(j - d) from d = d_r; returns (d, |d_r(j - d) - d|)."""
    j = np.arange(d_r.shape[1], dtype=np.float64)[np.newaxis, :]
    d = d_r.astype(np.float64)
    for _ in range(iterations):
        d = _interp_rows(d_r, j - d)
    return d, np.abs(_interp_rows(d_r, j - d) - d)


def _np_exact_roots(d_row):
    """All exact in-frame solutions d of d = d_r(j - d), d_r linear between pixels, per j."""
    width = len(d_row)
    roots = [[] for _ in range(width)]
    for k in range(width - 1):
        g0, g1 = k + d_row[k], k + 1 + d_row[k + 1]  # left column seen at right x = k, k + 1
        for j in range(width):
            if g0 == g1:
                if j == g0:
                    roots[j].append(d_row[k])
            else:
                t = (j - g0) / (g1 - g0)
                if 0.0 <= t <= 1.0:
                    roots[j].append(d_row[k] + t * (d_row[k + 1] - d_row[k]))
    return roots


def _np_nearest_surface(d_r, iterations):
    """Z-buffered forward splat of d_r [H, W] (float64), with the fixed point as fallback.

    For each left pixel, the largest exact solution of d = d_r(j - d) on the segments between
    right pixels whose disparity changes by less than one pixel (the surfaces; a steeper rise
    is the depth step hiding the pixels behind it, a steeper fall the fold the backward warp
    fills with a copy). Pixels with none keep the fixed-point iterate from d_r. Returns
    (d, |d_r(j - d) - d|, found).
    """
    height, width = d_r.shape
    d, _ = _np_fixed_point(d_r, iterations)
    found = np.zeros((height, width), bool)
    for i in range(height):
        best = np.full(width, -np.inf)
        for k in range(width - 1):
            a, b = d_r[i, k], d_r[i, k + 1]
            if abs(b - a) >= 1.0:
                continue
            for j in range(width):
                t = (j - k - a) / (1.0 + b - a)
                if 0.0 <= t <= 1.0:
                    best[j] = max(best[j], a + t * (b - a))
        found[i] = np.isfinite(best)
        d[i, found[i]] = best[found[i]]
    j = np.arange(width, dtype=np.float64)[np.newaxis, :]
    return d, np.abs(_interp_rows(d_r, j - d) - d), found


def _np_integer_splat(d_r):
    """Forward splat of an integer field: for each left pixel, the disparities of the right
    pixels x with x + d_r(x) == j (left pixels with none are occluded or out of the frame)."""
    height, width = d_r.shape
    candidates = [[[] for _ in range(width)] for _ in range(height)]
    for i in range(height):
        for x in range(width):
            j = x + int(d_r[i, x])
            if 0 <= j < width:
                candidates[i][j].append(float(d_r[i, x]))
    return candidates


def _np_valid(d_r, d_l, residual):
    """Validity from the docstring's definition, plus a mask of threshold-borderline pixels.

    Valid: the match x = j - d_l lies in the right frame, every right pixel interpolated at x
    was itself sampled from inside the registered image (x' + d_r(x') in [0, W - 1]), and
    the fixed point holds to CONSISTENCY_TOLERANCE.
    """
    width = d_r.shape[1]
    x = np.arange(width)[np.newaxis, :] - d_l
    lo = np.floor(np.clip(x, 0, width - 1)).astype(int)
    hi = np.minimum(lo + 1, width - 1)
    frac = np.clip(x, 0, width - 1) - lo
    rows = np.arange(d_r.shape[0])[:, np.newaxis]
    source = np.arange(width)[np.newaxis, :] + d_r
    tap_ok = (source >= 0) & (source <= width - 1)
    seen = tap_ok[rows, lo] & ((frac == 0) | tap_ok[rows, hi])
    tolerance = stereo_synthesis.CONSISTENCY_TOLERANCE
    valid = (x >= 0) & seen & (residual < tolerance)
    borderline = ((frac > 0) & ((frac < 1e-3) | (frac > 1 - 1e-3))) | (
        np.abs(residual - tolerance) < 1e-3
    )
    return valid, borderline


def _step_field():
    field = np.full((H, W), BACKGROUND)
    field[SQUARE_ROWS, SQUARE_COLS] = NEAR
    return field


def _synthesize_with_field(monkeypatch, nir, field, max_disparity=8.0):
    """synthesize_stereo with its random right-view field replaced by `field` [H, W]."""
    calls = []

    def fixed_field(seed, height, width, max_d):
        calls.append((int(height), int(width)))
        return tf.constant(field[..., np.newaxis], tf.float32)

    monkeypatch.setattr(stereo_synthesis, "random_disparity_field", fixed_field)
    out = stereo_synthesis.synthesize_stereo(nir, tf.constant([1, 2], tf.int64), max_disparity)
    assert calls == [(nir.shape[0], nir.shape[1])]
    return {key: value.numpy() for key, value in out.items()}


def _ramp_texture(rng, height, width):
    """Channel 0: a_i * j + b_i (linear interpolation reproduces it exactly); 1: noise."""
    slope = rng.uniform(0.5, 1.5, (height, 1))
    ramp = slope * np.arange(width)[np.newaxis, :] + rng.uniform(-3, 3, (height, 1))
    noise = rng.random((height, width))
    return np.stack([ramp, noise], axis=-1).astype(np.float32), slope


# ----------------------------------------------------------------------------------------
# Sign convention and synthesis on hand-made fields
# ----------------------------------------------------------------------------------------


def test_constant_integer_disparity_left_j_is_right_j_minus_d(monkeypatch):
    d = 3
    nir = np.random.default_rng(0).random((H, W, 2)).astype(np.float32)
    out = _synthesize_with_field(monkeypatch, nir, np.full((H, W), float(d)))
    right = out["nir"]
    # Eq. 1 / module docstring: left(i, j) == right(i, j - d) (NIR camera to the right).
    np.testing.assert_allclose(right[:, : W - d], nir[:, d:], atol=1e-6)
    # The columns whose source x + d is past the frame are clamped to the last column.
    np.testing.assert_allclose(right[:, W - d :], np.repeat(nir[:, -1:], d, axis=1), atol=1e-6)
    # The left disparity is +d (not -d) and a left pixel j < d has no match in the right view.
    np.testing.assert_allclose(out["disparity"], np.full((H, W, 1), d), atol=1e-6)
    expected_valid = np.broadcast_to(np.arange(W) >= d, (H, W))
    np.testing.assert_array_equal(out["disparity_valid"][..., 0], expected_valid)


def test_constant_fractional_disparity_against_numpy_interpolation(monkeypatch):
    d = 2.5
    rng = np.random.default_rng(1)
    nir, _ = _ramp_texture(rng, H, W)
    out = _synthesize_with_field(monkeypatch, nir, np.full((H, W), d))
    right = out["nir"]
    np.testing.assert_allclose(right, _np_right_view(nir, np.full((H, W), d)), atol=1e-5)
    np.testing.assert_allclose(out["disparity"][..., 0], np.full((H, W), d), atol=1e-6)
    # Back to the left view with d_l: exact for the ramp (linear interpolation is exact).
    back = _np_sample(right, out["disparity"][..., 0])
    valid = out["disparity_valid"][..., 0] > 0
    # j - 2.5 must be >= 0, and for j = W - 1 the match 28.5 interpolates right column 29,
    # which was clamped (29 + 2.5 > W - 1): that pixel is invalid too.
    expected_valid = np.broadcast_to((np.arange(W) >= 3) & (np.arange(W) <= W - 2), (H, W))
    np.testing.assert_array_equal(valid, expected_valid)
    constant = np.full((H, W), d)
    np.testing.assert_array_equal(valid, _np_valid(constant, constant, np.zeros((H, W)))[0])
    np.testing.assert_allclose(back[..., 0][valid], nir[..., 0][valid], atol=1e-4)


def test_slanted_plane_left_disparity_is_the_closed_form_fixed_point(monkeypatch):
    # d_r(i, x) = c_i + s * x, so d_l = c_i + s * (j - d_l), i.e. d_l = (c_i + s j) / (1 + s).
    s = 0.1
    c = 1.5 + 0.05 * np.arange(H)[:, np.newaxis]
    j = np.arange(W)[np.newaxis, :]
    field = c + s * j
    rng = np.random.default_rng(2)
    nir, _ = _ramp_texture(rng, H, W)
    out = _synthesize_with_field(monkeypatch, nir, field)
    np.testing.assert_allclose(out["nir"], _np_right_view(nir, field), atol=1e-5)
    expected = (c + s * j) / (1 + s)
    in_frame = j - expected >= 0
    d_l = out["disparity"][..., 0]
    np.testing.assert_allclose(d_l[in_frame], expected[in_frame], atol=1e-4)
    # Left of the frame the clamped iteration settles on d_r(0) = c_i; those pixels are invalid.
    np.testing.assert_allclose(d_l[~in_frame], np.broadcast_to(c, (H, W))[~in_frame], atol=1e-4)
    valid = out["disparity_valid"][..., 0] > 0
    expected_valid, _ = _np_valid(field, expected, np.zeros((H, W)))
    np.testing.assert_array_equal(valid, expected_valid)
    assert valid.sum() > H * W // 2
    back = _np_sample(out["nir"], d_l)
    np.testing.assert_allclose(back[..., 0][valid], nir[..., 0][valid], atol=1e-4)
    # The opposite sign, right(j + d_l) = left(~ j + 2 d_l), is off by a_i * 2 d_l >= 1.3 px
    # (away from the right border, where the samples are clamped).
    wrong = _np_sample(out["nir"], -d_l)
    away = valid & (j < W // 2)
    assert np.all(np.abs(wrong[..., 0] - nir[..., 0])[away] > 1.0)


# ----------------------------------------------------------------------------------------
# Occlusions: a near square in front of a far background
# ----------------------------------------------------------------------------------------


def test_step_field_validity_matches_numpy_forward_splat(monkeypatch):
    field = _step_field()
    nir = np.random.default_rng(3).random((H, W, 1)).astype(np.float32)
    out = _synthesize_with_field(monkeypatch, nir, field)
    d_l, valid = out["disparity"][..., 0], out["disparity_valid"][..., 0] > 0
    candidates = _np_integer_splat(field)
    seen = np.array([[bool(candidates[i][j]) for j in range(W)] for i in range(H)])
    np.testing.assert_array_equal(valid, seen)
    # By hand: in the square's rows the left columns 11..14 are hidden by the square in the
    # right view (its left edge moves from column 15 to 10), column 0 everywhere leaves the frame.
    assert not valid[SQUARE_ROWS, 11:15].any() and valid[SQUARE_ROWS, 15:25].all()
    assert not valid[:, 0].any() and valid[:4, 1:].all()
    for i, j in zip(*np.nonzero(valid), strict=True):
        assert d_l[i, j] in candidates[i][j], (i, j, d_l[i, j], candidates[i][j])
        if len(candidates[i][j]) == 1:
            assert d_l[i, j] == candidates[i][j][0]
    # Valid pixels are photometrically consistent: left(i, j) == right(i, j - d_l).
    rows, cols = np.nonzero(valid)
    matches = cols - d_l[rows, cols].astype(int)
    np.testing.assert_array_equal(out["nir"][rows, matches], nir[rows, cols])


def test_step_field_left_disparity_is_the_nearest_surface(monkeypatch):
    field = _step_field()
    nir = np.random.default_rng(4).random((H, W, 1)).astype(np.float32)
    out = _synthesize_with_field(monkeypatch, nir, field)
    d_l, valid = out["disparity"][..., 0], out["disparity_valid"][..., 0] > 0
    candidates = _np_integer_splat(field)
    nearest = np.array([[max(c, default=np.nan) for c in row] for row in candidates])
    # In the left view the square covers columns 15..24 of its rows: disparity NEAR there.
    np.testing.assert_array_equal(nearest[SQUARE_ROWS, 15:25], NEAR)
    np.testing.assert_array_equal(d_l[valid], nearest[valid])
    # Columns 21..24 are seen twice in the right view (the square and its copy in the band
    # right of it, 20..23); the left pixel shows the square, and matches it photometrically.
    assert valid[SQUARE_ROWS, 21:25].all()
    np.testing.assert_array_equal(d_l[SQUARE_ROWS, 15:25], NEAR)
    rows, cols = np.nonzero(valid)
    matches = cols - d_l[rows, cols].astype(int)
    np.testing.assert_array_equal(out["nir"][rows, matches], nir[rows, cols])


# ----------------------------------------------------------------------------------------
# left_disparity_from_right
# ----------------------------------------------------------------------------------------


def test_left_disparity_from_right_against_numpy_roots_and_iteration():
    j = np.arange(W)[np.newaxis, :]
    i = np.arange(H)[:, np.newaxis]
    # A smooth field with |d'| <= 0.2 (one root per pixel; 8 iterations of a contraction by
    # 0.2 leave < 1e-5 px) and the step field.
    smooth = 3.0 + np.sin(2 * np.pi * j / W + 0.3 * i)
    step = _step_field()
    d_r = np.stack([smooth, step])[..., np.newaxis].astype(np.float32)
    d_l, residual = stereo_synthesis.left_disparity_from_right(tf.constant(d_r))
    d_l, residual = d_l.numpy()[..., 0], residual.numpy()[..., 0]

    # Exact roots of the smooth field (linear pieces between pixels), in the frame.
    for row in range(H):
        roots = _np_exact_roots(smooth[row].astype(np.float64))
        for col in range(W):
            if roots[col]:
                assert len(roots[col]) <= 2 and np.ptp(roots[col]) < 1e-9  # a root on a knot
                assert abs(d_l[0, row, col] - roots[col][0]) < 1e-4, (row, col)
                assert residual[0, row, col] < 1e-4
            else:  # the match is left of the frame: the clamped iteration gives d_r(0)
                assert col < smooth[row, 0] and abs(d_l[0, row, col] - smooth[row, 0]) < 1e-4

    # The step field: hidden pixels have no fixed point (large residual), seen ones are exact.
    candidates = _np_integer_splat(step)
    for row in range(H):
        for col in range(1, W):
            if candidates[row][col]:
                assert residual[1, row, col] == 0 and d_l[1, row, col] == max(candidates[row][col])
            else:
                assert residual[1, row, col] >= NEAR - BACKGROUND - 1e-6, (row, col)

    # The smooth field has one solution per pixel: the plain fixed-point iteration with
    # np.interp (float64) finds it, as does the numpy forward splat; the step field has two
    # in the band right of the square, where only the splat gives the nearest (the square).
    expected, expected_residual = _np_fixed_point(
        d_r[0, ..., 0].astype(np.float64), stereo_synthesis.FIXED_POINT_ITERATIONS
    )
    np.testing.assert_allclose(d_l[0], expected, atol=1e-4)
    np.testing.assert_allclose(residual[0], expected_residual, atol=1e-4)
    for n in range(2):
        expected, expected_residual, _ = _np_nearest_surface(
            d_r[n, ..., 0].astype(np.float64), stereo_synthesis.FIXED_POINT_ITERATIONS
        )
        np.testing.assert_allclose(d_l[n], expected, atol=1e-4)
        np.testing.assert_allclose(residual[n], expected_residual, atol=1e-4)
    ghost, _ = _np_fixed_point(step, stereo_synthesis.FIXED_POINT_ITERATIONS)
    np.testing.assert_array_equal(ghost[SQUARE_ROWS, 21:25], BACKGROUND)
    np.testing.assert_array_equal(d_l[1][SQUARE_ROWS, 21:25], NEAR)


# ----------------------------------------------------------------------------------------
# Random fields end to end
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, max_disparity", [(0, 4.0), (3, 10.0), (5, 10.0), (9, 12.0)])
def test_random_pair_against_numpy_warp_and_fixed_point(seed, max_disparity):
    height, width = 24, 48
    rng = np.random.default_rng(seed)
    nir, slope = _ramp_texture(rng, height, width)
    tf_seed = tf.constant([seed, 3], tf.int64)
    out = stereo_synthesis.synthesize_stereo(nir, tf_seed, max_disparity)
    right, d_l = out["nir"].numpy(), out["disparity"].numpy()[..., 0]
    valid = out["disparity_valid"].numpy()[..., 0] > 0
    d_r = stereo_synthesis.random_disparity_field(tf_seed, height, width, max_disparity)
    d_r = d_r.numpy()[..., 0].astype(np.float64)

    # The right view is the backward warp of the registered NIR by d_r (noise channel too).
    np.testing.assert_allclose(right, _np_right_view(nir, d_r), atol=1e-5)

    # d_l and the mask equal an independent numpy forward splat (nearest surface) / validity.
    expected, residual, found = _np_nearest_surface(d_r, stereo_synthesis.FIXED_POINT_ITERATIONS)
    expected_valid, borderline = _np_valid(d_r, expected, residual)
    np.testing.assert_array_equal(valid[~borderline], expected_valid[~borderline])
    np.testing.assert_allclose(d_l[valid], expected[valid], atol=1e-4)
    # Where the left pixel has a solution, d_l is exact, and never below a solution that the
    # plain fixed-point iteration from d_r converged to (it may settle on a copied one).
    assert np.all(residual[found] < 1e-4)
    plain, plain_residual = _np_fixed_point(d_r, stereo_synthesis.FIXED_POINT_ITERATIONS)
    settled = valid & found & (plain_residual < 1e-5)
    assert np.all(d_l[settled] >= plain[settled] - 1e-4)
    assert 0.5 * valid.size < valid.sum() < valid.size

    # Round trip on the ramp channel: right(j - d_l) - left(j) = a_i * (d_r(j - d_l) - d_l),
    # i.e. exact wherever the fixed point holds, and within the tolerance on every valid pixel.
    j = np.arange(width)[np.newaxis, :]
    signed_residual = _interp_rows(d_r, j - d_l) - d_l
    assert np.all(np.abs(signed_residual[valid]) < 0.5)  # half an HR pixel, as documented
    back = _np_sample(right, d_l)[..., 0]
    np.testing.assert_allclose(
        (back - nir[..., 0])[valid], (slope * signed_residual)[valid], atol=1e-4
    )
    converged = valid & (np.abs(signed_residual) < 1e-5)
    assert converged.sum() > 0.8 * valid.sum()
    np.testing.assert_allclose(back[converged], nir[..., 0][converged], atol=1e-4)
    # Every valid match lies in the right frame and d_l is a disparity of the field's range.
    assert np.all(j - d_l >= 0, where=valid)
    assert d_l.min() >= 0 and d_l.max() <= max_disparity + 1e-5


# ----------------------------------------------------------------------------------------
# random_disparity_field and determinism
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_disparity", [1.0, 8.0, 24.0])
def test_random_disparity_field_range_smoothness_and_seeds(max_disparity):
    fields = []
    for seed in range(10):
        field = stereo_synthesis.random_disparity_field(
            tf.constant([seed, 11], tf.int64), H, W, max_disparity
        ).numpy()
        assert field.shape == (H, W, 1) and field.dtype == np.float32
        assert field.min() >= 0.0 and field.max() <= max_disparity * (1 + 1e-6)
        # Every field has a foreground object, drawn in [max_d / 2, max_d].
        assert field.max() >= 0.5 * max_disparity * (1 - 1e-6)
        # The 3x3 mean: no neighbour difference exceeds a third of the range.
        assert np.abs(np.diff(field, axis=1)).max() <= max_disparity / 3 * (1 + 1e-5)
        assert np.abs(np.diff(field, axis=0)).max() <= max_disparity / 3 * (1 + 1e-5)
        fields.append(field)
    # Seeds give different fields, and the full range is used across them.
    assert all(np.abs(a - b).max() > 1e-3 for k, a in enumerate(fields) for b in fields[k + 1 :])
    assert max(f.max() for f in fields) > 0.8 * max_disparity
    assert min(f.min() for f in fields) < 0.2 * max_disparity
    # Same seed: same field, with python ints or tensor sizes, eagerly or in a tf.function.
    seed = tf.constant([4, 11], tf.int64)
    again = stereo_synthesis.random_disparity_field(seed, H, W, max_disparity).numpy()
    np.testing.assert_array_equal(again, fields[4])
    traced = tf.function(
        lambda s, h, w: stereo_synthesis.random_disparity_field(s, h, w, max_disparity)
    )(seed, tf.constant(H), tf.constant(W)).numpy()
    np.testing.assert_allclose(traced, fields[4], rtol=1e-5, atol=1e-6)


def test_synthesize_stereo_is_deterministic_eagerly_in_tf_function_and_dataset_map():
    nir = np.random.default_rng(7).random((H, W, 2)).astype(np.float32)
    seed = tf.constant([8, 9], tf.int64)
    eager = stereo_synthesis.synthesize_stereo(nir, seed, 6.0)
    traced = tf.function(lambda s: stereo_synthesis.synthesize_stereo(nir, s, 6.0))(seed)
    mapped = next(iter(
        tf.data.Dataset.from_tensors(seed).map(
            lambda s: stereo_synthesis.synthesize_stereo(nir, s, 6.0)
        )
    ))
    other = stereo_synthesis.synthesize_stereo(nir, tf.constant([8, 10], tf.int64), 6.0)
    # Graph rewrites may change the last float bit, nothing more.
    for key in ("nir", "disparity", "disparity_valid"):
        np.testing.assert_allclose(traced[key].numpy(), eager[key].numpy(), atol=1e-5)
        np.testing.assert_allclose(mapped[key].numpy(), eager[key].numpy(), atol=1e-5)
    assert np.abs(other["disparity"].numpy() - eager["disparity"].numpy()).max() > 1e-2
    # Shapes and the mask's values.
    assert eager["nir"].shape == (H, W, 2) and eager["disparity"].shape == (H, W, 1)
    assert set(np.unique(eager["disparity_valid"].numpy())) <= {0.0, 1.0}
