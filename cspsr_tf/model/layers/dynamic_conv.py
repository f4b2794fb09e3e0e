"""Per-pixel (dynamic) convolution of the NIR features, predicted from both modalities."""

import keras
import tensorflow as tf

from cspsr_tf.model.configs import KERNEL_NORMALIZATIONS
from cspsr_tf.model.layers.replicas import several_replicas

_IMPLEMENTATIONS = ("shift", "patches", "fused")
_NORMALIZATIONS = KERNEL_NORMALIZATIONS


def apply_per_pixel_kernels(features, kernels, kernel_size, implementation="shift"):
    """Filters `features` with one k x k kernel per pixel, shared by all channels.

    out(i, j, c) = sum_{u, v} kernels(i, j, u * k + v) * features(i + u - k//2, j + v - k//2, c)
    with zero padding outside the frame.

    Args:
        features: [B, H, W, C].
        kernels: [B, H, W, k * k], taps in row-major (u, v) order.
        kernel_size: odd int k.
        implementation: `patches` (reference: tf.image.extract_patches, materialises
            [B, H, W, k*k*C]) or `shift` (sums the k*k shifted copies of the zero-padded input;
            same numbers, no k*k-times larger intermediate).
    """
    k = kernel_size
    if implementation == "patches":
        shape = tf.shape(features)
        patches = tf.image.extract_patches(
            features,
            sizes=[1, k, k, 1],
            strides=[1, 1, 1, 1],
            rates=[1, 1, 1, 1],
            padding="SAME",
        )  # [B, H, W, k*k*C], ordered (u, v, c)
        patches = tf.reshape(patches, [shape[0], shape[1], shape[2], k * k, shape[3]])
        return tf.reduce_sum(patches * kernels[..., tf.newaxis], axis=3)
    if implementation == "shift":
        return _shift_and_accumulate(features, kernels, k)
    if implementation == "fused":
        return _fused_dynamic_conv(features, kernels, k, "none")
    raise ValueError(
        f"implementation must be one of {_IMPLEMENTATIONS}. Received: {implementation!r}"
    )


def _shifted_sum(x, weights, k, offset):
    """sum_t crop(pad(x), offset(t)) * weights_t, with `weights` cropped the same way or not.

    `offset(u, v)` gives the window of tap (u, v) in the zero-padded x; for the forward pass it
    is (u, v) and the weights are per output pixel; for the gradient it is the opposite shift
    (2r - u, 2r - v) and the weights are shifted along with x.
    """
    r = k // 2
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    pad = [[0, 0], [r, r], [r, r], [0, 0]]
    padded_x = tf.pad(x, pad)
    padded_w = None if offset is None else tf.pad(weights, pad)
    out = None
    for u in range(k):
        for v in range(k):
            tap = u * k + v
            du, dv = (u, v) if offset is None else offset(u, v)
            # Each tap waits for the running sum, so a graph executor does not hold all k*k
            # shifted products in memory at once.
            with tf.control_dependencies([] if out is None else [out]):
                window = padded_x[:, du : du + height, dv : dv + width, :]
                if padded_w is None:
                    w = weights[..., tap : tap + 1]
                else:
                    w = padded_w[:, du : du + height, dv : dv + width, tap : tap + 1]
                term = window * w
            out = term if out is None else out + term
    return out


def _shift_and_accumulate(features, kernels, k):
    """The `shift` path with a hand-written gradient of the same shift-and-sum form.

    Automatic differentiation of the strided slices builds a gradient about twice as slow as
    that of extract_patches; the explicit one below is a shift-and-sum again (see
    benchmarks/dynamic_conv.py for the measurements).
    """

    @tf.custom_gradient
    def forward(features, kernels):
        out = _shifted_sum(features, kernels, k, None)

        def grad(upstream):
            r = k // 2
            height, width = tf.shape(features)[1], tf.shape(features)[2]
            # d features(p) = sum_t upstream(p - d_t) * kernels_t(p - d_t).
            d_features = _shifted_sum(upstream, kernels, k, lambda u, v: (2 * r - u, 2 * r - v))
            # d kernels_t(p) = sum_c upstream(p, c) * features(p + d_t, c).
            padded = tf.pad(features, [[0, 0], [r, r], [r, r], [0, 0]])
            d_kernels = tf.stack(
                [
                    tf.reduce_sum(upstream * padded[:, u : u + height, v : v + width, :], -1)
                    for u in range(k)
                    for v in range(k)
                ],
                axis=-1,
            )
            return d_features, d_kernels

        return out, grad

    return forward(features, kernels)


def _normalized_shift_sum(features, kernels, k, normalization):
    """Kernel normalisation + shift-and-accumulate, computed in float32 whatever the inputs'
    dtype (bfloat16 element-wise arithmetic is no faster on CPU, and the softmax wants
    float32); the result comes back in the dtype of `features`."""
    dtype = features.dtype
    kernels = tf.cast(kernels, tf.float32)
    if normalization == "softmax":
        kernels = tf.nn.softmax(kernels, axis=-1)
    out = _shift_and_accumulate(tf.cast(features, tf.float32), kernels, k)
    return tf.cast(out, dtype)


# XLA compiles the k*k shifted multiply-adds (and the softmax before them) into one loop
# that reads the features and the kernels once; outside XLA each tap is a separate pass
# over memory. Only this element-wise part is compiled: TensorFlow's own (oneDNN)
# convolutions around it stay faster than XLA's on CPU (benchmarks/latency_breakdown.py).
_fused_dynamic_conv = tf.function(_normalized_shift_sum, jit_compile=True, autograph=False)


@keras.saving.register_keras_serializable(package="cspsr_tf")
class DynamicConv(keras.layers.Layer):
    """Dynamic convolution of the DMF module (paper Sec. 4.3).

    A 3x3 convolution over concat(F_vis, F_nir) predicts a k x k kernel per pixel
    (K in R^{H x W x k^2}, shared by all channels at that pixel); F'_nir is F_nir filtered
    position by position with K. Kernels are normalised with a softmax over the k^2 taps by
    default, as in the dynamic upsampling filters the paper cites, so each output is a convex
    combination of its neighbourhood.

    Args:
        kernel_size: int, default 3; the size k of the per-pixel kernels (odd).
        normalization: `softmax` (default) or `none` (raw predicted taps).
        implementation: `shift` (default, faster, shift-and-accumulate) or `patches`
            (reference, tf.image.extract_patches). Both give the same numbers.

    Call arguments:
        inputs: a pair `(f_vis, f_nir)`, each [B, H, W, C].

    Returns:
        F'_nir, [B, H, W, C].

    References:
        Wei et al., CSPSR, Sec. 4.3; Jo et al., "Deep Video Super-Resolution Network Using
        Dynamic Upsampling Filters", CVPR 2018.
    """

    def __init__(self, kernel_size=3, normalization="softmax", implementation="shift", **kwargs):
        super().__init__(**kwargs)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int. Received: {kernel_size}")
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {_NORMALIZATIONS}. Received: {normalization!r}"
            )
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {_IMPLEMENTATIONS}. Received: {implementation!r}"
            )
        self.kernel_size = kernel_size
        self.normalization = normalization
        self.implementation = implementation
        self.kernel_predictor = keras.layers.Conv2D(
            kernel_size * kernel_size, 3, padding="same", name="kernel_predictor", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        vis_shape, nir_shape = input_shape
        self.kernel_predictor.build(tuple(vis_shape[:-1]) + (vis_shape[-1] + nir_shape[-1],))

    def call(self, inputs):
        f_vis, f_nir = inputs
        kernels = self.kernel_predictor(tf.concat([f_vis, f_nir], axis=-1))
        if self.implementation == "fused":
            fused = _normalized_shift_sum if several_replicas() else _fused_dynamic_conv
            return fused(f_nir, kernels, self.kernel_size, self.normalization)
        if self.normalization == "softmax":
            kernels = tf.nn.softmax(kernels, axis=-1)
        return apply_per_pixel_kernels(f_nir, kernels, self.kernel_size, self.implementation)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "normalization": self.normalization,
                "implementation": self.implementation,
            }
        )
        return config
