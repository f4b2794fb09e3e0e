"""Tests for cspsr_tf.ops.metrics against independent references (scikit-image, hand values)."""

import math

import cv2
import numpy as np
import pytest
import tensorflow as tf
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cspsr_tf.ops import metrics

# Agreement with scikit-image. Both sides are float64 with the same window and border, so
# the differences are round-off; the brief asks for 1e-3, we hold them much tighter.
SKIMAGE_TOL = 1e-8
# numpy (float64) vs TF (float32) on inputs that are exact multiples of 1/255, so the 8-bit
# quantisation of the numpy path loses nothing and only float32 round-off remains.
TF_PSNR_TOL_DB = 1e-3
TF_SSIM_TOL = 1e-4


def _skimage_ssim(x, y, **kwargs):
    return structural_similarity(
        x,
        y,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        **kwargs,
    )


def _reference_y(rgb_uint8):
    """BT.601 luma, 16-235, written out from the formula."""
    rgb = rgb_uint8.astype(np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


@pytest.fixture(scope="module")
def hr():
    # Non-square crop (48 x 64) of a natural image, so that H/W mix-ups show.
    return np.ascontiguousarray(skdata.astronaut()[80:128, 160:224])


def _bicubic(hr, scale=4):
    h, w = hr.shape[:2]
    lr = cv2.resize(hr, (w // scale, h // scale), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC)


def _noisy(hr):
    rng = np.random.default_rng(0)
    noisy = hr.astype(np.float64) + rng.normal(0.0, 8.0, hr.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


DEGRADATIONS = {"bicubic": _bicubic, "noise": _noisy}


@pytest.mark.parametrize("degradation", sorted(DEGRADATIONS))
def test_paper_protocol_matches_skimage_rgb(hr, degradation):
    sr = DEGRADATIONS[degradation](hr)
    assert sr.dtype == np.uint8 and sr.shape == hr.shape
    # One MSE over all RGB values; SSIM per channel, then averaged (channel_axis=-1).
    want_psnr = peak_signal_noise_ratio(hr, sr, data_range=255)
    want_ssim = _skimage_ssim(hr, sr, channel_axis=-1)
    assert metrics.psnr(sr, hr, protocol="paper", scale=4) == pytest.approx(
        want_psnr, abs=SKIMAGE_TOL
    )
    assert metrics.ssim(sr, hr, protocol="paper", scale=4) == pytest.approx(
        want_ssim, abs=SKIMAGE_TOL
    )


@pytest.mark.parametrize("degradation", sorted(DEGRADATIONS))
@pytest.mark.parametrize("scale", [2, 4])
def test_standard_protocol_matches_skimage_on_shaved_y(hr, degradation, scale):
    sr = _bicubic(hr, scale) if degradation == "bicubic" else _noisy(hr)
    y_sr = _reference_y(sr)[scale:-scale, scale:-scale]
    y_hr = _reference_y(hr)[scale:-scale, scale:-scale]
    want_psnr = peak_signal_noise_ratio(y_hr, y_sr, data_range=255)
    want_ssim = _skimage_ssim(y_hr, y_sr)
    assert metrics.psnr(sr, hr, protocol="standard", scale=scale) == pytest.approx(
        want_psnr, abs=SKIMAGE_TOL
    )
    assert metrics.ssim(sr, hr, protocol="standard", scale=scale) == pytest.approx(
        want_ssim, abs=SKIMAGE_TOL
    )


def test_protocols_give_different_numbers(hr):
    sr = _bicubic(hr)
    assert metrics.psnr(sr, hr, protocol="paper") != pytest.approx(
        metrics.psnr(sr, hr, protocol="standard")
    )


def test_ssim_window_is_the_11_tap_gaussian():
    taps = metrics.gaussian_window_1d()
    x = np.arange(-5, 6)
    want = np.exp(-(x**2) / (2 * 1.5**2))
    np.testing.assert_allclose(taps, want / want.sum(), rtol=1e-12)


def test_rgb_to_y_hand_values():
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]]], np.uint8)
    np.testing.assert_allclose(
        metrics.rgb_to_y(pixels), [[16.0, 235.0, 16.0 + 65.481, 16.0 + 24.966]], atol=1e-9
    )


def test_float_input_is_rounded_to_uint8_first(hr):
    rng = np.random.default_rng(1)
    sr_float = np.clip(hr / 255.0 + rng.normal(0.0, 0.02, hr.shape), -0.1, 1.1)
    sr_uint8 = np.round(np.clip(sr_float, 0.0, 1.0) * 255.0).astype(np.uint8)
    want = peak_signal_noise_ratio(hr, sr_uint8, data_range=255)
    assert metrics.psnr(sr_float, hr, protocol="paper") == pytest.approx(want, abs=SKIMAGE_TOL)
    assert metrics.psnr(sr_float, hr / 255.0, protocol="paper") == pytest.approx(
        want, abs=SKIMAGE_TOL
    )


def test_to_uint8_clips_and_rounds():
    values = np.array([-0.2, 0.0, 0.5 / 255, 1.5 / 255, 100.4 / 255, 1.0, 1.3])
    np.testing.assert_array_equal(metrics.to_uint8(values), [0, 0, 0, 2, 100, 255, 255])
    as_uint8 = np.array([3, 250], np.uint8)
    assert metrics.to_uint8(as_uint8) is as_uint8


@pytest.mark.parametrize("bad", [np.full((4, 4, 3), 200.0), np.full((4, 4, 3), np.nan)])
def test_to_uint8_rejects_float_images_that_are_not_unit_range(bad):
    with pytest.raises(ValueError):
        metrics.to_uint8(bad)


def test_to_uint8_rejects_other_integer_types():
    with pytest.raises(ValueError, match="uint8"):
        metrics.to_uint8(np.zeros((4, 4, 3), np.int64))


@pytest.mark.parametrize("protocol", sorted(metrics.PROTOCOLS))
def test_identical_images(hr, protocol):
    assert metrics.psnr(hr, hr.copy(), protocol=protocol) == math.inf
    assert metrics.ssim(hr, hr.copy(), protocol=protocol) == pytest.approx(1.0, abs=1e-12)


def test_shape_mismatch_names_both_shapes(hr):
    with pytest.raises(ValueError, match=r"\(48, 64, 3\).*\(48, 60, 3\)"):
        metrics.psnr(hr, hr[:, :60])
    with pytest.raises(ValueError, match=r"\(48, 64, 3\).*\(48, 60, 3\)"):
        metrics.ssim(hr, hr[:, :60], protocol="paper")


def test_unknown_protocol_lists_valid_names(hr):
    with pytest.raises(ValueError, match="paper.*standard"):
        metrics.psnr(hr, hr, protocol="matlab")


def test_shave_that_leaves_nothing_raises():
    tiny = np.zeros((8, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="leaves nothing"):
        metrics.psnr(tiny, tiny, protocol="standard", scale=4)
    # The paper protocol does not shave, so the same pair is fine there.
    assert metrics.psnr(tiny, tiny, protocol="paper", scale=4) == math.inf


def test_ssim_smaller_than_window_raises():
    small = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(small, small, protocol="standard", scale=4)


@pytest.mark.parametrize("scale", [0, -2, 2.0, True])
def test_scale_must_be_a_positive_integer(hr, scale):
    with pytest.raises(ValueError, match="scale"):
        metrics.psnr(hr, hr, scale=scale)


def test_non_rgb_input_raises():
    gray = np.zeros((32, 32), np.uint8)
    with pytest.raises(ValueError, match="H x W x 3"):
        metrics.psnr(gray, gray)


def test_evaluate_pair_reports_both_protocols(hr):
    sr = _bicubic(hr)
    got = metrics.evaluate_pair(sr, hr, scale=4)
    assert set(got) == {"paper", "standard"}
    y_sr, y_hr = _reference_y(sr)[4:-4, 4:-4], _reference_y(hr)[4:-4, 4:-4]
    want = {
        "paper": {
            "psnr": peak_signal_noise_ratio(hr, sr, data_range=255),
            "ssim": _skimage_ssim(hr, sr, channel_axis=-1),
        },
        "standard": {
            "psnr": peak_signal_noise_ratio(y_hr, y_sr, data_range=255),
            "ssim": _skimage_ssim(y_hr, y_sr),
        },
    }
    for name, values in want.items():
        assert set(got[name]) == {"psnr", "ssim"}
        for key, value in values.items():
            assert isinstance(got[name][key], float)
            assert got[name][key] == pytest.approx(value, abs=SKIMAGE_TOL), (name, key)


# --- TensorFlow monitors -----------------------------------------------------------------


@pytest.fixture(scope="module")
def float_batch(hr):
    """Two HR/SR pairs as float32 in [0, 1], exact multiples of 1/255."""
    hr_batch = np.stack([hr, hr[:, ::-1]])
    sr_batch = np.stack([_bicubic(hr), _noisy(hr[:, ::-1])])
    return hr_batch.astype(np.float32) / 255.0, sr_batch.astype(np.float32) / 255.0


@pytest.mark.parametrize("protocol", sorted(metrics.PROTOCOLS))
def test_tf_metrics_agree_with_numpy(float_batch, protocol):
    hr_batch, sr_batch = float_batch
    standard = protocol == "standard"
    options = {"crop_border": 4 if standard else 0, "y_channel": standard}
    got_psnr = metrics.psnr_tf(sr_batch, hr_batch, **options).numpy()
    got_ssim = metrics.ssim_tf(sr_batch, hr_batch, **options).numpy()
    assert got_psnr.shape == (2,) and got_ssim.shape == (2,)
    for i in range(2):
        want_psnr = metrics.psnr(sr_batch[i], hr_batch[i], protocol=protocol, scale=4)
        want_ssim = metrics.ssim(sr_batch[i], hr_batch[i], protocol=protocol, scale=4)
        assert got_psnr[i] == pytest.approx(want_psnr, abs=TF_PSNR_TOL_DB)
        assert got_ssim[i] == pytest.approx(want_ssim, abs=TF_SSIM_TOL)


def test_tf_rgb_to_y_matches_formula(hr):
    got = metrics.rgb_to_y_tf(hr[np.newaxis].astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(got[0, ..., 0] * 255.0, _reference_y(hr), atol=1e-3)


def test_psnr_tf_identical_images_are_finite_inside_tf_function(float_batch):
    hr_batch, _ = float_batch
    value = tf.function(metrics.psnr_tf)(hr_batch, hr_batch).numpy()
    # MSE clamped at 1e-10: 10 * log10(1 / 1e-10) = 100 dB.
    np.testing.assert_allclose(value, [100.0, 100.0], atol=1e-3)
    np.testing.assert_allclose(metrics.ssim_tf(hr_batch, hr_batch).numpy(), [1.0, 1.0], atol=1e-6)
