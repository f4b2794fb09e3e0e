import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from cspsr_tf.layers.cvm import CrossViewMatching
from cspsr_tf.losses import (
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


def smooth_texture(rng, shape, sigma):
    noise = rng.standard_normal(shape)
    img = ndimage.gaussian_filter(noise, sigma)
    return (img - img.min()) / (img.max() - img.min())


def test_cssc_moves_the_cvm_disparity_towards_a_known_shift():
    # NIR = VIS luminance seen from a camera to the right: nir_r(x) = lum(x + D).
    rng = np.random.default_rng(3)
    scale, true_lr_disp = 2, 3.0
    height, width = 32, 80
    shift_hr = int(true_lr_disp * scale)
    lum = smooth_texture(rng, (height, width + shift_hr), sigma=3.0)
    vis_hr = np.stack([lum[:, :width]] * 3, axis=-1)[None].astype(np.float32)
    nir_hr_r = lum[:, shift_hr:][None, ..., None].astype(np.float32)
    nir_hr_l = lum[:, :width][None, ..., None].astype(np.float32)  # the ideal SR output
    vis_lr = tf.image.resize(vis_hr, (height // scale, width // scale), antialias=True)
    nir_lr = tf.image.resize(nir_hr_r, (height // scale, width // scale), antialias=True)

    keras.utils.set_random_seed(0)
    cvm = CrossViewMatching(base_channels=8, depth=2, max_disparity=8.0, initial_disparity=1.0)
    optimizer = keras.optimizers.Adam(3e-3)
    interior = (slice(None), slice(2, -2), slice(6, -2))  # away from the occluded left border

    def disparity_error():
        # Batch statistics, as in the training steps (the moving averages lag behind).
        out = cvm((vis_lr, nir_lr), training=True)
        return float(tf.reduce_mean(tf.abs(out["disp_l"][interior] - true_lr_disp)))

    cvm((vis_lr, nir_lr))
    before = disparity_error()

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = cvm((vis_lr, nir_lr), training=True)
            loss = tf.reduce_mean(
                cssc_loss_per_example(nir_hr_l, nir_hr_r, out["disp_l"], out["disp_r"], scale)
            )
        grads = tape.gradient(loss, cvm.trainable_variables)
        optimizer.apply_gradients(zip(grads, cvm.trainable_variables, strict=True))
        return loss

    for _ in range(60):
        step()
    after = disparity_error()
    assert before == pytest.approx(2.0, abs=0.2)  # initial disparity 1 px vs true 3 px
    assert after < 0.5 * before, (before, after)
