import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.model.layers.disparity_warp import DisparityWarp, warp_by_disparity
from tests.layer_test_utils import run_layer_checks


def numpy_warp(image, disparity, sign):
    """Independent reference: out(i,j) = linear interp of image row i at x = j + sign * d."""
    b, h, w, c = image.shape
    out = np.zeros_like(image)
    valid = np.zeros((b, h, w, 1), image.dtype)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                x = j + sign * disparity[n, i, j, 0]
                valid[n, i, j, 0] = 0.0 <= x <= w - 1
                x = min(max(x, 0.0), w - 1)
                x0 = int(np.floor(x))
                x1 = min(x0 + 1, w - 1)
                t = x - x0
                out[n, i, j] = (1 - t) * image[n, i, x0] + t * image[n, i, x1]
    return out, valid


def test_integer_shift_is_a_roll_inside_the_frame():
    rng = np.random.default_rng(0)
    image = rng.random((2, 5, 11, 3)).astype(np.float32)
    shift = 3
    disparity = np.full((2, 5, 11, 1), shift, np.float32)
    warped, valid = warp_by_disparity(image, disparity, "right_to_left")
    rolled = np.roll(image, shift, axis=2)
    np.testing.assert_array_equal(warped.numpy()[:, :, shift:], rolled[:, :, shift:])
    # Columns whose sample lies left of the frame are invalid and clamped to column 0.
    np.testing.assert_array_equal(valid.numpy()[..., 0], (np.arange(11) >= shift)[None, None, :].repeat(5, 1).repeat(2, 0))
    np.testing.assert_array_equal(warped.numpy()[:, :, :shift], np.repeat(image[:, :, :1], shift, axis=2))


@pytest.mark.parametrize("direction,sign", [("right_to_left", -1.0), ("left_to_right", 1.0)])
def test_fractional_shift_matches_numpy_linear_interpolation(direction, sign):
    rng = np.random.default_rng(1)
    image = rng.random((2, 4, 9, 2)).astype(np.float32)
    disparity = rng.uniform(-1.0, 4.5, (2, 4, 9, 1)).astype(np.float32)
    warped, valid = warp_by_disparity(image, disparity, direction)
    expected, expected_valid = numpy_warp(image, disparity, sign)
    np.testing.assert_allclose(warped.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(valid.numpy(), expected_valid)


def test_gradient_wrt_disparity_matches_finite_differences():
    rng = np.random.default_rng(2)
    image = tf.constant(rng.random((1, 3, 12, 2)), tf.float64)
    # Non-integer disparities whose samples stay inside the frame, away from the kinks.
    disparity = tf.constant(rng.uniform(1.2, 3.8, (1, 3, 12, 1)) + 0.0, tf.float64)
    disparity = tf.where(tf.abs(disparity - tf.round(disparity)) < 0.1, disparity + 0.25, disparity)
    weights = tf.constant(rng.random((1, 3, 12, 2)), tf.float64)

    def objective(d):
        warped, _ = warp_by_disparity(image, d, "right_to_left")
        return tf.reduce_sum(warped * weights)

    with tf.GradientTape() as tape:
        tape.watch(disparity)
        value = objective(disparity)
    grad = tape.gradient(value, disparity).numpy()
    eps = 1e-5
    numeric = np.zeros_like(grad)
    d = disparity.numpy()
    for idx in np.ndindex(d.shape):
        plus, minus = d.copy(), d.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (objective(tf.constant(plus)) - objective(tf.constant(minus))).numpy() / (2 * eps)
    inside = np.arange(12)[None, None, :, None] - d >= 0.0
    np.testing.assert_allclose(grad[inside], numeric[inside], rtol=1e-6, atol=1e-8)
    assert np.abs(grad[inside]).max() > 0


def test_gradient_wrt_image_flows():
    image = tf.Variable(np.ones((1, 2, 6, 1), np.float32))
    with tf.GradientTape() as tape:
        warped, _ = warp_by_disparity(image, tf.fill((1, 2, 6, 1), 0.5), "right_to_left")
        loss = tf.reduce_sum(warped)
    assert tape.gradient(loss, image).numpy().sum() == pytest.approx(12.0)


def test_validity_mask_at_both_borders():
    image = np.zeros((1, 1, 6, 1), np.float32)
    disparity = np.array([[0.5, 1.0, 1.5, 2.5, 1.5, 0.0]], np.float32).reshape(1, 1, 6, 1)
    _, valid_rl = warp_by_disparity(image, disparity, "right_to_left")  # x = j - d
    np.testing.assert_array_equal(valid_rl.numpy().ravel(), [0, 1, 1, 1, 1, 1])
    _, valid_lr = warp_by_disparity(image, disparity, "left_to_right")  # x = j + d
    np.testing.assert_array_equal(valid_lr.numpy().ravel(), [1, 1, 1, 0, 0, 1])


def test_left_then_right_round_trip_inside_valid_area():
    rng = np.random.default_rng(3)
    image = rng.random((1, 4, 20, 1)).astype(np.float32)
    shift = 2.0
    disparity = np.full((1, 4, 20, 1), shift, np.float32)
    to_left, valid_l = warp_by_disparity(image, disparity, "right_to_left")
    back, valid_r = warp_by_disparity(to_left, disparity, "left_to_right")
    # Valid where both warps sampled inside the frame: columns [0, W - 1 - shift] of `back`
    # read columns [shift, W - 1] of `to_left`, which are valid there.
    region = slice(0, 20 - int(shift))
    np.testing.assert_allclose(back.numpy()[:, :, region], image[:, :, region], atol=1e-6)
    assert valid_r.numpy()[:, :, region].all()


def test_any_batch_height_width_channels():
    for shape in [(1, 1, 1, 1), (3, 7, 5, 4), (2, 9, 13, 64)]:
        image = np.random.rand(*shape).astype(np.float32)
        warped, valid = warp_by_disparity(image, np.random.rand(*shape[:3], 1) * 3, "right_to_left")
        assert warped.shape == shape and valid.shape == shape[:3] + (1,)


def test_layer_checks_and_bad_direction():
    image = np.random.rand(2, 5, 7, 3).astype(np.float32)
    disp = np.random.rand(2, 5, 7, 1).astype(np.float32)
    run_layer_checks(
        DisparityWarp,
        {"direction": "left_to_right", "return_mask": True},
        (image, disp),
        expected_output_shapes=((2, 5, 7, 3), (2, 5, 7, 1)),
    )
    with pytest.raises(ValueError, match="direction"):
        DisparityWarp(direction="up")


def test_warp_converts_to_litert_with_any_size_and_matches_numpy():
    # The LiteRT export (cspsr_tf/export/litert_export.py) needs the warp in builtin ops for inputs
    # of unknown height and width; the numbers must stay those of the numpy reference.
    from ai_edge_litert.interpreter import Interpreter

    @tf.function(input_signature=[
        tf.TensorSpec([1, None, None, 2], tf.float32, name="image"),
        tf.TensorSpec([1, None, None, 1], tf.float32, name="disparity"),
    ])
    def warp(image, disparity):
        warped, valid = warp_by_disparity(image, disparity, "right_to_left")
        return {"warped": warped, "valid": valid}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [warp.get_concrete_function()], tf.Module()
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = Interpreter(model_content=converter.convert()).get_signature_runner()
    rng = np.random.default_rng(4)
    for height, width in [(3, 9), (5, 16)]:
        image = rng.random((1, height, width, 2)).astype(np.float32)
        disparity = rng.uniform(-1.0, 6.5, (1, height, width, 1)).astype(np.float32)
        result = runner(image=image, disparity=disparity)
        expected, expected_valid = numpy_warp(image, disparity, -1.0)
        np.testing.assert_allclose(result["warped"], expected, atol=1e-6)
        np.testing.assert_array_equal(result["valid"], expected_valid)
