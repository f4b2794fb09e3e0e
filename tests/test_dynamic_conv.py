import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.model.layers.dynamic_conv import DynamicConv, apply_per_pixel_kernels
from tests.layer_test_utils import run_layer_checks


def naive_per_pixel_filter(features, kernels, k):
    """Double loop over pixels: out(i,j,c) = sum_uv K(i,j,u*k+v) * F(i+u-r, j+v-r, c)."""
    b, h, w, c = features.shape
    r = k // 2
    out = np.zeros_like(features, dtype=np.float64)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                acc = np.zeros(c)
                for u in range(k):
                    for v in range(k):
                        y, x = i + u - r, j + v - r
                        if 0 <= y < h and 0 <= x < w:
                            acc += kernels[n, i, j, u * k + v] * features[n, y, x]
                out[n, i, j] = acc
    return out


@pytest.mark.parametrize("implementation", ["patches", "shift", "fused"])
@pytest.mark.parametrize("k", [3, 5])
def test_matches_naive_double_loop(implementation, k):
    rng = np.random.default_rng(k)
    features = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)
    kernels = rng.standard_normal((2, 6, 7, k * k)).astype(np.float32)
    got = apply_per_pixel_kernels(features, kernels, k, implementation).numpy()
    np.testing.assert_allclose(got, naive_per_pixel_filter(features, kernels, k), atol=1e-5)


def test_fast_path_equals_reference_inside_the_layer():
    rng = np.random.default_rng(0)
    f_vis = rng.standard_normal((2, 9, 11, 8)).astype(np.float32)
    f_nir = rng.standard_normal((2, 9, 11, 8)).astype(np.float32)
    reference = DynamicConv(3, implementation="patches")
    fast = DynamicConv(3, implementation="shift")
    reference.build((f_vis.shape, f_nir.shape))
    fast.build((f_vis.shape, f_nir.shape))
    fast.set_weights(reference.get_weights())
    np.testing.assert_allclose(
        fast((f_vis, f_nir)).numpy(), reference((f_vis, f_nir)).numpy(), atol=1e-5
    )
    # Gradients agree too (the training path).
    x = tf.Variable(f_nir)
    grads = []
    for layer in (reference, fast):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer((f_vis, x))))
        grads.append(tape.gradient(loss, x).numpy())
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-4)


def test_softmax_kernels_make_a_convex_combination():
    # A constant feature map stays constant away from the zero-padded border.
    layer = DynamicConv(3)
    f_vis = np.random.rand(1, 6, 6, 4).astype(np.float32)
    f_nir = np.full((1, 6, 6, 4), 2.5, np.float32)
    out = layer((f_vis, f_nir)).numpy()
    np.testing.assert_allclose(out[:, 1:-1, 1:-1], 2.5, rtol=1e-5)


def test_layer_checks_and_argument_errors():
    f = np.random.rand(2, 5, 6, 4).astype(np.float32)
    run_layer_checks(
        DynamicConv,
        {"kernel_size": 3, "normalization": "softmax", "implementation": "patches"},
        (f, f),
        expected_output_shapes=(2, 5, 6, 4),
    )
    with pytest.raises(ValueError, match="odd"):
        DynamicConv(4)
    with pytest.raises(ValueError, match="implementation"):
        DynamicConv(3, implementation="magic")


@pytest.mark.parametrize("k", [1, 3, 5])
def test_hand_written_gradient_of_the_shift_path_equals_the_reference(k):
    rng = np.random.default_rng(10 + k)
    features = tf.constant(rng.standard_normal((2, 5, 6, 3)), tf.float64)
    kernels = tf.constant(rng.standard_normal((2, 5, 6, k * k)), tf.float64)
    upstream = tf.constant(rng.standard_normal((2, 5, 6, 3)), tf.float64)
    grads = {}
    for implementation in ("patches", "shift"):
        with tf.GradientTape() as tape:
            tape.watch([features, kernels])
            out = apply_per_pixel_kernels(features, kernels, k, implementation)
            loss = tf.reduce_sum(out * upstream)
        grads[implementation] = [g.numpy() for g in tape.gradient(loss, [features, kernels])]
    for reference, fast in zip(grads["patches"], grads["shift"], strict=True):
        np.testing.assert_allclose(fast, reference, atol=1e-10)


@pytest.mark.parametrize("normalization", ["softmax", "none"])
def test_fused_layer_equals_the_reference_values_and_gradients(normalization):
    # The XLA-compiled path (softmax and multiply-adds in one kernel) against `patches`,
    # forward and backward, inside the layer (its own normalisation code path).
    rng = np.random.default_rng(3)
    f_vis = rng.standard_normal((2, 7, 9, 4)).astype(np.float32)
    f_nir = tf.Variable(rng.standard_normal((2, 7, 9, 4)).astype(np.float32))
    layers = {
        impl: DynamicConv(3, normalization=normalization, implementation=impl)
        for impl in ("patches", "fused")
    }
    for layer in layers.values():
        layer.build((f_vis.shape, f_nir.shape))
    layers["fused"].set_weights(layers["patches"].get_weights())
    upstream = rng.standard_normal((2, 7, 9, 4)).astype(np.float32)
    results = {}
    for impl, layer in layers.items():
        with tf.GradientTape() as tape:
            out = layer((f_vis, f_nir))
            loss = tf.reduce_sum(out * upstream)
        grads = tape.gradient(loss, [f_nir] + layer.trainable_variables)
        results[impl] = [out.numpy()] + [g.numpy() for g in grads]
    for reference, fused in zip(results["patches"], results["fused"], strict=True):
        np.testing.assert_allclose(fused, reference, rtol=1e-4, atol=1e-4)


def test_fused_path_computes_in_float32_and_returns_the_input_dtype():
    # bfloat16 features (mixed precision): the sum is formed in float32, so the result is
    # the float32 result rounded once to bfloat16, not a sum of nine rounded products.
    rng = np.random.default_rng(4)
    features = tf.cast(rng.standard_normal((1, 6, 6, 5)), tf.bfloat16)
    kernels = tf.cast(rng.standard_normal((1, 6, 6, 9)), tf.bfloat16)
    got = apply_per_pixel_kernels(features, kernels, 3, "fused")
    assert got.dtype == tf.bfloat16
    expected = naive_per_pixel_filter(
        tf.cast(features, tf.float32).numpy(), tf.cast(kernels, tf.float32).numpy(), 3
    )
    rounded = tf.cast(tf.cast(expected, tf.float32), tf.bfloat16).numpy().astype(np.float64)
    np.testing.assert_allclose(got.numpy().astype(np.float64), rounded, rtol=1e-6, atol=1e-6)
