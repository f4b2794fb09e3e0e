import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from cspsr_tf.model.layers.csft import CSFT
from tests.layer_test_utils import run_layer_checks


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def conv_same(x, kernel, bias):
    """3x3 (or 1x1) 'same' convolution in numpy (cross-correlation, zero padding)."""
    kh, kw, cin, cout = kernel.shape
    b, h, w, _ = x.shape
    padded = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    out = np.zeros((b, h, w, cout))
    for u in range(kh):
        for v in range(kw):
            out += padded[:, u : u + h, v : v + w, :] @ kernel[u, v]
    return out + bias


def batch_norm(x, gamma, beta, mean, var, eps):
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


@pytest.mark.parametrize("implementation", ["plain", "fused"])
def test_equals_numpy_evaluation_of_eq2(implementation):
    rng = np.random.default_rng(0)
    c = 6
    f_vis = rng.standard_normal((2, 5, 7, c)).astype(np.float32)
    f_nir = rng.standard_normal((2, 5, 7, c)).astype(np.float32)
    layer = CSFT(implementation=implementation)
    layer((f_vis, f_nir))
    # Non-trivial batch-norm statistics and affine parameters, so the BN path is tested.
    for norm in (layer.norm_nir, layer.norm_vis):
        norm.gamma.assign(rng.uniform(0.5, 1.5, c))
        norm.beta.assign(rng.uniform(-0.5, 0.5, c))
        norm.moving_mean.assign(rng.uniform(-0.3, 0.3, c))
        norm.moving_variance.assign(rng.uniform(0.5, 2.0, c))
    got = layer((f_vis, f_nir), training=False).numpy()

    eps = layer.epsilon
    w_s1 = sigmoid(conv_same(f_vis, *[w.numpy() for w in layer.spatial_vis.weights]))
    n_nir = batch_norm(f_nir, *[w.numpy() for w in layer.norm_nir.weights], eps)
    n_vis = batch_norm(f_vis, *[w.numpy() for w in layer.norm_vis.weights], eps)
    normed = np.concatenate([n_nir, n_vis], axis=-1)
    pooled = normed.mean(axis=(1, 2), keepdims=True)
    kernel, bias = (w.numpy() for w in layer.channel_conv.weights)
    w_c = sigmoid(pooled @ kernel[0, 0] + bias)
    w_c1, w_c2 = w_c[..., :c], w_c[..., c:]
    w_s2 = sigmoid(conv_same(normed, *[w.numpy() for w in layer.spatial_fused.weights]))
    expected = f_nir * w_s1 * w_c2 + f_vis * w_s1 * w_s2 * w_c1
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_numpy_conv_helper_agrees_with_scipy():
    # Guards the reference itself: a single-channel 3x3 conv equals scipy's correlate.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 6, 5, 1))
    k = rng.standard_normal((3, 3, 1, 1))
    ref = ndimage.correlate(x[0, :, :, 0], k[:, :, 0, 0], mode="constant")
    np.testing.assert_allclose(conv_same(x, k, 0.0)[0, :, :, 0], ref, atol=1e-12)


def test_layer_checks():
    f = np.random.rand(2, 4, 5, 8).astype(np.float32)
    run_layer_checks(CSFT, {"momentum": 0.9, "epsilon": 1e-3}, (f, f), expected_output_shapes=(2, 4, 5, 8))
    run_layer_checks(CSFT, {"implementation": "fused"}, (f, f), expected_output_shapes=(2, 4, 5, 8))


def test_fused_gradients_equal_the_plain_ones_in_training_mode():
    rng = np.random.default_rng(2)
    f_vis = tf.Variable(rng.standard_normal((2, 5, 6, 4)).astype(np.float32))
    f_nir = tf.Variable(rng.standard_normal((2, 5, 6, 4)).astype(np.float32))
    upstream = rng.standard_normal((2, 5, 6, 4)).astype(np.float32)
    plain, fused = CSFT(implementation="plain"), CSFT(implementation="fused")
    for layer in (plain, fused):
        layer.build((f_vis.shape, f_nir.shape))
    fused.set_weights(plain.get_weights())
    results = []
    for layer in (plain, fused):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer((f_vis, f_nir), training=True) * upstream)
        grads = tape.gradient(loss, [f_vis, f_nir] + layer.trainable_variables)
        results.append([g.numpy() for g in grads])
    for reference, got in zip(*results, strict=True):
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="implementation"):
        CSFT(implementation="magic")


@pytest.mark.parametrize("implementation", ["plain", "fused"])
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 0.03)])
def test_folded_inference_equals_the_batch_norms_at_every_pixel(dtype, tolerance, implementation):
    # Inference folds the batch norms into the convolutions (the normalised 2C features are
    # never made; `fused` also turns the small convolutions into per-tap products summed over
    # the window); the unfolded graph with moving statistics is the reference, borders included.
    rng = np.random.default_rng(3)
    c = 8
    f_vis = rng.standard_normal((2, 6, 9, c)).astype(np.float32)
    f_nir = rng.standard_normal((2, 6, 9, c)).astype(np.float32)
    layer = CSFT(implementation=implementation, dtype=f"mixed_{dtype}" if dtype != "float32" else dtype)
    layer((f_vis, f_nir))
    for norm in (layer.norm_nir, layer.norm_vis):
        norm.gamma.assign(rng.uniform(0.5, 1.5, c))
        norm.beta.assign(rng.uniform(-1.0, 1.0, c))  # a large shift: the border term matters
        norm.moving_mean.assign(rng.uniform(-0.5, 0.5, c))
        norm.moving_variance.assign(rng.uniform(0.5, 2.0, c))
    inputs = [tf.cast(x, layer.compute_dtype) for x in (f_vis, f_nir)]
    folded = tf.cast(layer(inputs, training=False), tf.float32).numpy()
    reference = tf.cast(layer._normalized_call(*inputs, training=False), tf.float32).numpy()
    np.testing.assert_allclose(folded, reference, atol=tolerance, rtol=tolerance)
    # Without the border term the first and last rows and columns would differ.
    assert np.abs(reference).max() > 0.1


@pytest.mark.parametrize("implementation", ["plain", "fused"])
@pytest.mark.parametrize("training", [False, True])
def test_relu_output_is_the_relu_of_the_output(implementation, training):
    # The DMF asks CSFT for ReLU(F'_vis) in its own pass; it must be exactly that.
    rng = np.random.default_rng(5)
    f_vis, f_nir = (rng.standard_normal((2, 5, 6, 4)).astype(np.float32) for _ in range(2))
    layer = CSFT(implementation=implementation)
    plain = layer((f_vis, f_nir), training=training).numpy()
    active = layer((f_vis, f_nir), training=training, relu_output=True).numpy()
    assert (plain < 0).any() and (plain > 0).any()
    np.testing.assert_allclose(active, np.maximum(plain, 0.0), rtol=1e-6, atol=1e-7)
