"""The local NCC^2 behind the CVM's cost volume and matching loss, checked against numpy.

Every reference here is computed with numpy (a separable Gaussian over an edge-replicated
border, then means, variances and covariance), never by calling the module under test.
"""

import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.ops.cross_spectral_similarity import (
    NCC_RELATIVE_FLOOR,
    NCC_WINDOW_SIGMA,
    gaussian_blur,
    gaussian_kernel,
    local_ncc_squared,
    ncc_squared_volume,
    shift_columns,
)


def np_kernel(sigma):
    radius = int(3 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum(), radius


def np_blur(image, sigma=NCC_WINDOW_SIGMA):
    """Separable Gaussian of [B, H, W, C] in float64, border replicated with np.pad."""
    kernel, radius = np_kernel(sigma)
    image = np.asarray(image, np.float64)
    _, height, width, _ = image.shape
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(kernel[i] * padded[:, i : i + height] for i in range(2 * radius + 1))
    return sum(kernel[i] * rows[:, :, i : i + width] for i in range(2 * radius + 1))


def np_ncc_squared(a, b, sigma=NCC_WINDOW_SIGMA, relative_floor=NCC_RELATIVE_FLOOR):
    mean_a, mean_b = np_blur(a, sigma), np_blur(b, sigma)
    var_a = np_blur(a * a, sigma) - mean_a**2
    var_b = np_blur(b * b, sigma) - mean_b**2
    cov = np_blur(a * b, sigma) - mean_a * mean_b

    def floor(var):
        return relative_floor * np.maximum(var, 0.0).mean(axis=(1, 2), keepdims=True) + 1e-12

    return cov**2 / ((np.maximum(var_a, 0.0) + floor(var_a)) * (np.maximum(var_b, 0.0) + floor(var_b)))


def np_variance(image, sigma=NCC_WINDOW_SIGMA):
    mean = np_blur(image, sigma)
    return np_blur(image * image, sigma) - mean**2


def smooth_noise(rng, shape, sigma=1.0):
    """Textured test image in [0, 1]: white noise through the numpy Gaussian."""
    img = np_blur(rng.standard_normal(shape), sigma)
    return (img - img.min()) / (img.max() - img.min())


def ncc(a, b):
    return local_ncc_squared(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy()


# --- gaussian_kernel, gaussian_blur --------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.7, 1.5, 2.0])
def test_gaussian_kernel_is_normalised_with_the_expected_radius(sigma):
    kernel, radius = gaussian_kernel(sigma)
    expected, expected_radius = np_kernel(sigma)
    assert radius == expected_radius
    np.testing.assert_allclose(float(tf.reduce_sum(kernel)), 1.0, atol=1e-6)
    np.testing.assert_allclose(kernel, expected, atol=1e-6)


@pytest.mark.parametrize(
    "shape, sigma",
    [((2, 12, 17, 2), 1.5), ((1, 9, 11, 1), 0.7), ((1, 3, 7, 1), 1.5)],  # last: frame < radius
)
def test_gaussian_blur_matches_numpy_with_replicated_border(shape, sigma):
    rng = np.random.default_rng(0)
    image = rng.uniform(size=shape).astype(np.float32)
    got = gaussian_blur(tf.constant(image), sigma).numpy()
    assert got.shape == shape
    np.testing.assert_allclose(got, np_blur(image, sigma), atol=1e-5)


def test_gaussian_blur_with_zero_sigma_is_the_identity():
    image = np.random.default_rng(1).uniform(size=(1, 5, 6, 1)).astype(np.float32)
    np.testing.assert_array_equal(gaussian_blur(tf.constant(image), 0.0).numpy(), image)


# --- shift_columns --------------------------------------------------------------------------


def test_shift_columns_matches_numpy_indexing_with_clipped_columns():
    rng = np.random.default_rng(2)
    image = rng.uniform(size=(2, 4, 9, 1)).astype(np.float32)
    offsets = [-11, -3, -1, 0, 2, 5, 12]  # beyond the frame on both sides, too
    got = shift_columns(tf.constant(image), offsets).numpy()
    assert got.shape == (2, 4, 9, len(offsets))
    width = image.shape[2]
    for k, offset in enumerate(offsets):
        columns = np.clip(np.arange(width) + offset, 0, width - 1)
        np.testing.assert_array_equal(got[..., k], image[:, :, columns, 0], err_msg=f"offset {offset}")


# --- invariances ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def textured():
    """A 32x48 smoothed-noise image (batch of 2) and the mask of its textured windows."""
    image = smooth_noise(np.random.default_rng(3), (2, 32, 48, 1)).astype(np.float32)
    variance = np_variance(image)
    mask = variance > 0.5 * variance.mean(axis=(1, 2), keepdims=True)
    assert mask.mean() > 0.3  # the test image really is textured
    return image, mask


def test_an_image_compared_with_itself_scores_close_to_one(textured):
    image, mask = textured
    self_ncc = ncc(image, image)
    assert self_ncc[mask].mean() > 0.9, self_ncc[mask].mean()
    assert self_ncc.mean() > 0.8, self_ncc.mean()
    assert self_ncc.max() <= 1.0 + 1e-5


def assert_same_map(got, expected):
    """Equal maps: the mean within 1e-4 relative; each window within 1e-4 relative plus 2e-4
    absolute (float32 round-off of E[x^2] - E[x]^2 in the few low-variance corner windows)."""
    np.testing.assert_allclose(got.mean(), expected.mean(), rtol=1e-4)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("gain", [0.1, 10.0])
def test_a_global_gain_of_either_image_changes_nothing(textured, gain):
    image, _ = textured
    reference = ncc(image, image)
    assert_same_map(ncc(image, gain * image), reference)
    assert_same_map(ncc(gain * image, image), reference)


@pytest.mark.parametrize("gain", [0.1, 10.0])
def test_a_gain_changes_nothing_for_a_pair_of_different_images(textured, gain):
    image, _ = textured
    other = smooth_noise(np.random.default_rng(4), image.shape).astype(np.float32)
    other = 0.7 * image + 0.3 * other
    reference = ncc(image, other)
    assert 0.2 < reference.mean() < 0.95  # a partial correlation, not a trivial one
    assert_same_map(ncc(image, gain * other), reference)


def test_an_offset_and_a_reversed_contrast_change_nothing(textured):
    image, _ = textured
    reference = ncc(image, image)
    assert_same_map(ncc(image, image + 0.5), reference)
    assert_same_map(ncc(image, 1.0 - image), reference)


def test_a_flat_region_scores_close_to_zero(textured):
    image, mask = textured
    image = image.copy()
    image[:, 8:24, 16:32] = 0.5  # a flat 16x16 block; its inner 6x6 windows see no texture
    self_ncc = ncc(image, image)
    radius = np_kernel(NCC_WINDOW_SIGMA)[1]
    inner = self_ncc[:, 8 + radius : 24 - radius, 16 + radius : 32 - radius]
    assert inner.size > 0
    assert inner.max() < 1e-3, inner.max()
    # ...while the textured windows away from the block still score high.
    outside = np.ones_like(mask)
    outside[:, 8 - 2 * radius : 24 + 2 * radius, 16 - 2 * radius : 32 + 2 * radius] = False
    assert self_ncc[mask & outside].mean() > 0.9


# --- a known correlation -------------------------------------------------------------------


def test_a_noisy_copy_scores_its_theoretical_squared_correlation():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 64, 64, 1))  # white: local variances estimate the global one
    noise = rng.standard_normal(a.shape)
    means = []
    for ratio in [0.0, 0.25, 1.0, 4.0]:
        scaled = np.sqrt(ratio) * noise
        theory = a.var() / (a.var() + scaled.var())
        mean = float(ncc(a.astype(np.float32), (a + scaled).astype(np.float32)).mean())
        assert abs(mean - theory) < 0.05, (ratio, mean, theory)
        means.append(mean)
    assert all(np.diff(means) < 0), means


# --- the cost volume ------------------------------------------------------------------------


def test_cost_volume_channels_equal_the_local_measure_of_shifted_images():
    rng = np.random.default_rng(6)
    height, width, offsets = 16, 48, [-4, -3, -1, 0, 2, 6]
    reference = smooth_noise(rng, (2, height, width + 8, 1))
    # other(j) = reference(j + 3), so reference(j) = other(j - 3): the match is offset -3.
    other = 0.5 - 0.8 * (reference[:, :, 3 : 3 + width] - 0.5)  # reversed contrast, too
    other = other + 0.3 * smooth_noise(rng, other.shape)
    reference = reference[:, :, :width]
    ref_t, other_t = tf.constant(reference, tf.float32), tf.constant(other, tf.float32)

    margin = max(abs(o) for o in offsets) + np_kernel(NCC_WINDOW_SIGMA)[1]
    interior = np.s_[:, :, margin:-margin]
    # Without the floor, the two agree to round-off away from the borders.
    volume = ncc_squared_volume(ref_t, other_t, offsets, relative_floor=0.0).numpy()
    for k, offset in enumerate(offsets):
        shifted = shift_columns(other_t, [offset])
        local = local_ncc_squared(ref_t, shifted, relative_floor=0.0).numpy()[..., 0]
        np.testing.assert_allclose(
            volume[..., k][interior], local[interior], atol=1e-5, err_msg=f"offset {offset}"
        )
    # With it, the volume takes the floor from the unshifted image, the local measure from the
    # shifted one (its replicated columns lower the mean variance by up to 8% here): close.
    volume = ncc_squared_volume(ref_t, other_t, offsets).numpy()
    assert volume.shape == (2, height, width, len(offsets))
    for k, offset in enumerate(offsets):
        local = local_ncc_squared(ref_t, shift_columns(other_t, [offset])).numpy()[..., 0]
        got, expected = volume[..., k][interior], local[interior]
        difference = np.abs(got - expected)
        assert difference.max() < 2e-3, (offset, difference.max())
        assert difference.mean() < 0.005 * expected.mean(), (offset, difference.mean())
    # The channels differ, and the true offset (-3) is the best one on average.
    means = volume[interior].mean(axis=(0, 1, 2))
    assert offsets[int(np.argmax(means))] == -3, means


# --- the full formula -----------------------------------------------------------------------


def test_local_ncc_squared_matches_a_numpy_reference():
    rng = np.random.default_rng(7)
    a = smooth_noise(rng, (2, 10, 14, 1)).astype(np.float32)
    b = (0.6 * a + 0.4 * rng.uniform(size=a.shape)).astype(np.float32)
    b[1] *= 0.05  # the second example dark: its own floor, not the first one's
    got = ncc(a, b)
    expected = np_ncc_squared(a, b)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert expected.std() > 0.05  # a varied map, not a constant one


def test_the_relative_floor_argument_follows_the_formula():
    rng = np.random.default_rng(8)
    a = smooth_noise(rng, (1, 12, 12, 1)).astype(np.float32)
    for relative_floor in [0.0, 0.01, 1.0]:
        got = local_ncc_squared(
            tf.constant(a), tf.constant(a), relative_floor=relative_floor
        ).numpy()
        expected = np_ncc_squared(a, a, relative_floor=relative_floor)
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"floor {relative_floor}")
        if relative_floor == 1.0:
            # The floor equal to the mean variance: an average window scores about (1/2)^2.
            assert 0.1 < got.mean() < 0.4, got.mean()


# --- whole examples flat to float32 round-off -----------------------------------------------
# var = blur(x^2) - blur(x)^2 and cov = blur(ab) - blur(a) blur(b) cancel in float32 to about
# 6e-8 * mean^2. Before the module centred each example, a constant 0.37 frame scored 8.9e8
# against itself, and mid-grey with a texture of amplitude 0.001 up to 1.4e5.


def test_an_image_flat_everywhere_scores_zero():
    for value in (0.37, 0.5, 3.3):
        flat = np.full((1, 16, 20, 1), value, np.float32)
        got = ncc(flat, flat)
        assert np.all(np.isfinite(got))
        assert got.max() < 1e-3, (value, got.max())


def test_a_low_contrast_frame_at_mid_grey_scores_as_its_high_contrast_twin():
    texture = smooth_noise(np.random.default_rng(9), (1, 32, 48, 1))
    reference = ncc(texture.astype(np.float32), texture.astype(np.float32))
    for amplitude in [0.003, 0.001]:
        image = (0.5 + amplitude * texture).astype(np.float32)
        got = ncc(image, image)
        assert got.min() >= 0.0 and got.max() <= 1.0, (amplitude, got.max())
        # Gain and offset invariance survive float32: the same scores as the texture alone.
        np.testing.assert_allclose(got, reference, atol=5e-3, err_msg=str(amplitude))
