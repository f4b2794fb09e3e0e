"""Tests of cspsr_tf.data.registration against pairs whose shift is known by construction."""

import cv2
import numpy as np
import pytest
from skimage import data

from cspsr_tf.data import registration


def _fake_nir(rgb):
    """A different 'spectrum': weights unlike the luma, one edge contrast reversed, a gamma."""
    rgb = rgb.astype(np.float32) / 255
    value = 0.9 * rgb[..., 0] + 0.5 * (1 - rgb[..., 2]) - 0.2 * rgb[..., 1]
    value = (value - value.min()) / (value.max() - value.min())
    return np.round(255 * value**0.7).astype(np.uint8)


@pytest.fixture(scope="module")
def scene():
    return data.astronaut()  # 512 x 512 RGB


def _pair(scene, dy, dx, top=40, left=40, size=400):
    """RGB crop, and a NIR crop such that NIR(y - dy, x - dx) shows what RGB(y, x) shows."""
    nir_full = _fake_nir(scene)
    rgb = scene[top : top + size, left : left + size]
    nir = nir_full[top + dy : top + dy + size, left + dx : left + dx + size]
    return rgb, nir, nir_full


@pytest.mark.parametrize("dy, dx", [(0, 0), (3, -7), (-12, 5), (0, 17)])
def test_whole_pixel_shifts_are_found(scene, dy, dx):
    # NIR(y - dy, x - dx) = nir_full(top + y, left + x): moving the NIR by (dy, dx) aligns it.
    rgb, nir, _ = _pair(scene, dy, dx)
    shift = registration.estimate_shift(rgb, nir)
    np.testing.assert_allclose(shift, (dy, dx), atol=0.1)


def test_half_pixel_shift_is_found(scene):
    # A 3 px shift at twice the resolution, box-downscaled: 1.5 px.
    big = cv2.resize(scene, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    rgb_big = big[80:880, 80:880]
    nir_big = _fake_nir(big)[80 + 3 : 880 + 3, 80:880]
    rgb = cv2.resize(rgb_big, (400, 400), interpolation=cv2.INTER_AREA)
    nir = cv2.resize(nir_big, (400, 400), interpolation=cv2.INTER_AREA)
    dy, dx = registration.estimate_shift(rgb, nir)
    assert abs(dy - 1.5) < 0.15 and abs(dx) < 0.15, (dy, dx)


def test_crop_registered_pairs_the_same_scene_points(scene):
    top, left, size = 40, 40, 400
    rgb, nir, nir_full = _pair(scene, 4, -6)
    rgb_crop, nir_crop = registration.crop_registered(rgb, nir, (4.2, -5.8))
    assert rgb_crop.shape[:2] == nir_crop.shape[:2] == (size - 4, size - 6)
    # Scene rows/columns that RGB(y, x) shows: top + y, left + x; the NIR crop must show the
    # same points, taken straight from the uncropped fake NIR.
    y0, x0 = top + 4, left
    np.testing.assert_array_equal(rgb_crop, scene[y0 : y0 + size - 4, x0 : x0 + size - 6])
    np.testing.assert_array_equal(nir_crop, nir_full[y0 : y0 + size - 4, x0 : x0 + size - 6])
    assert np.abs(registration.estimate_shift(rgb_crop, nir_crop)).max() < 0.1


def test_integer_shift_rounding():
    assert registration.integer_shift((0.5, -0.5)) == (0, 0)  # cropping would not help
    assert registration.integer_shift((0.51, -2.6)) == (1, -3)
    assert registration.integer_shift((3.5, 16.95)) == (3, 17)


def test_bad_inputs(scene):
    with pytest.raises(ValueError, match="same size"):
        registration.estimate_shift(scene, scene[:-1, :, 0])
    with pytest.raises(ValueError, match="differ in size"):
        registration.crop_registered(scene, scene[:-1], (1, 1))
    with pytest.raises(ValueError, match="no overlap"):
        registration.crop_registered(scene[:10, :10], scene[:10, :10, 0], (0, 12))


def test_local_spread_tells_a_translation_from_a_non_rigid_misalignment(scene):
    rgb, nir, nir_full = _pair(scene, 0, 0)
    assert registration.local_spread(rgb, nir) < 0.3  # registered: every quadrant agrees
    # The right half of the NIR moved 6 px more than the left half (parallax, moving objects).
    torn = nir.copy()
    torn[:, 200:] = nir_full[40:440, 240 + 6 : 440 + 6]
    assert registration.local_spread(rgb, torn) > 2.5
