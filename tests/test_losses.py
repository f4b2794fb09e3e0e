import numpy as np
import pytest

from cspsr_tf.ops.warp import warp_by_disparity
from cspsr_tf.train.losses import (
    cspsr_loss,
    cssc_loss_per_example,
    masked_mse_per_example,
    upsample_disparity,
)


def test_zero_for_perfect_prediction_with_zero_disparity():
    rng = np.random.default_rng(0)
    vis = rng.random((2, 8, 10, 3), dtype=np.float32)
    nir = rng.random((2, 8, 10, 1), dtype=np.float32)
    zero = np.zeros((2, 4, 5, 1), np.float32)
    outputs = {"vis_sr": vis, "nir_sr": nir, "disp_l": zero, "disp_r": zero}
    loss = cspsr_loss(outputs, {"vis_hr": vis, "nir_hr": nir}, scale=2)
    for name in ("total", "vis_mse", "cssc"):
        assert float(loss[name]) == 0.0


def test_total_is_mse_plus_lambda_times_cssc_by_hand():
    vis_sr = np.full((1, 2, 2, 3), 0.5, np.float32)
    vis_hr = np.full((1, 2, 2, 3), 0.3, np.float32)  # MSE = 0.04
    nir_sr = np.full((1, 2, 2, 1), 0.2, np.float32)
    nir_hr = np.zeros((1, 2, 2, 1), np.float32)  # each NIR term 0.04, L_CSSC = 0.08
    zero = np.zeros((1, 1, 1, 1), np.float32)
    loss = cspsr_loss(
        {"vis_sr": vis_sr, "nir_sr": nir_sr, "disp_l": zero, "disp_r": zero},
        {"vis_hr": vis_hr, "nir_hr": nir_hr},
        scale=2,
        lambda_cssc=0.1,
    )
    assert float(loss["vis_mse"]) == pytest.approx(0.04, rel=1e-5)
    assert float(loss["cssc"]) == pytest.approx(0.08, rel=1e-5)
    assert float(loss["total"]) == pytest.approx(0.04 + 0.1 * 0.08, rel=1e-5)
    # Without a NIR branch (single-branch models) the term vanishes.
    single = cspsr_loss({"vis_sr": vis_sr}, {"vis_hr": vis_hr, "nir_hr": nir_hr}, scale=2)
    assert float(single["cssc"]) == 0.0


def test_upsampled_disparity_is_in_hr_pixels():
    disp = np.full((1, 3, 4, 1), 1.5, np.float32)
    hr = upsample_disparity(disp, (12, 16), scale=4).numpy()
    assert hr.shape == (1, 12, 16, 1)
    np.testing.assert_allclose(hr, 6.0, rtol=1e-6)


def test_masked_mse_ignores_invalid_pixels():
    a = np.array([1.0, 2.0, 3.0, 100.0], np.float32).reshape(1, 1, 4, 1)
    b = np.zeros_like(a)
    mask = np.array([1, 1, 1, 0], np.float32).reshape(1, 1, 4, 1)
    assert float(masked_mse_per_example(a, b, mask)[0]) == pytest.approx((1 + 4 + 9) / 3)
    assert float(masked_mse_per_example(a, b, np.zeros_like(mask))[0]) == 0.0


def test_cssc_is_zero_for_a_correctly_shifted_right_view():
    # Right view = left view moved by a known integer disparity D (HR pixels): with the LR
    # disparity D / scale, both warps align the pair exactly inside the valid area.
    rng = np.random.default_rng(1)
    scale, shift = 2, 4
    left = rng.random((1, 6, 24, 1)).astype(np.float32)
    right = np.zeros_like(left)
    right[:, :, : 24 - shift] = left[:, :, shift:]  # right(x) = left(x + D)
    right[:, :, 24 - shift :] = rng.random((1, 6, shift, 1))  # content outside the left frame
    disp = np.full((1, 3, 12, 1), shift / scale, np.float32)
    loss = cssc_loss_per_example(left, right, disp, disp, scale)
    assert float(loss[0]) == pytest.approx(0.0, abs=1e-10)
    wrong = cssc_loss_per_example(left, right, disp * 0, disp * 0, scale)
    assert float(wrong[0]) > 0.01


def test_cssc_cannot_align_every_consistent_shift_gives_zero():
    # Why the CVM needs its own matching loss (cspsr_tf/train/matching_losses.py): in the model the
    # NIR output follows the CVM's warp, and L_CSSC compares it with the NIR target through the
    # SAME disparities. So whatever the true shift of the pair (here 2 LR px), every integer
    # disparity, right or wrong, gives L_CSSC = 0 for the NIR output it produces.
    rng = np.random.default_rng(4)
    scale = 2
    nir_hr_r = rng.random((1, 8, 40, 1)).astype(np.float32)
    for lr_disp in (0.0, 1.0, 2.0, 3.0):
        disp = np.full((1, 4, 20, 1), lr_disp, np.float32)
        hr_disp = np.full((1, 8, 40, 1), lr_disp * scale, np.float32)
        nir_sr_l, _ = warp_by_disparity(nir_hr_r, hr_disp, "right_to_left")
        loss = cssc_loss_per_example(nir_sr_l, nir_hr_r, disp, disp, scale)
        assert float(loss[0]) == pytest.approx(0.0, abs=1e-12), lr_disp
