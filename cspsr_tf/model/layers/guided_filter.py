"""A guided filter of the LR VIS image, guided by the aligned LR NIR (He et al., TPAMI 2013),
with a learned regularisation per colour channel.

Why it is in the model: `benchmarks/nir_guided_filter.py` measured this filter, with fixed
parameters, above the trained dual-branch model in the dark (27.07 against 26.95 dB), while
the DMF fusion, which has to discover a local linear model of VIS on NIR from convolutions and
sigmoid gates, got less out of the NIR. The filter hands that model to the network directly.
"""

import math

import keras
import tensorflow as tf


def box_mean(x, radius):
    """The mean over the (2r+1)^2 window around each pixel, over the pixels inside the frame
    only (TensorFlow's SAME average pooling leaves the padding out of the count)."""
    size = 2 * radius + 1
    return tf.nn.avg_pool2d(x, ksize=size, strides=1, padding="SAME")


def guided_filter(source, guide, radius, eps):
    """He et al.'s guided filter: each window fits source ~= a * guide + b (least squares,
    `eps` regularising a), and each pixel averages the fits of the windows that hold it.

    Args:
        source: [B, H, W, C] float32, the image filtered (each channel on its own).
        guide: [B, H, W, 1] float32, the guide.
        radius: int, the window radius r.
        eps: [C] or a scalar, > 0.

    Returns:
        [B, H, W, C]: box(a) * guide + box(b).
    """
    mean_g = box_mean(guide, radius)
    mean_s = box_mean(source, radius)
    var_g = box_mean(guide * guide, radius) - mean_g * mean_g
    cov = box_mean(guide * source, radius) - mean_g * mean_s
    a = cov / (var_g + eps)
    b = mean_s - a * mean_g
    return box_mean(a, radius) * guide + box_mean(b, radius)


@keras.saving.register_keras_serializable(package="cspsr_tf")
class NIRGuidedFilter(keras.layers.Layer):
    """The VIS image filtered by a guided filter whose guide is the NIR image.

    The model builds it with the float32 policy whatever the precision (a float32 island: the
    window variances are differences of close moments, E[g^2] - E[g]^2, which bfloat16 would
    cancel), and `call` computes in float32 under any policy. The
    regularisation eps of each colour channel is learned, as exp(log_eps), starting at
    `initial_eps`: the measured best fixed value (1e-4 at radius 2 in the dark, 1e-5 on clean
    inputs, `benchmarks/results/nir_guided_filter.json`) depends on the noise, which the
    training data sets. (Measured: in 2,000 steps of the `small` recipe it stayed within 15% of
    1e-4, so in practice the filter acts as a fixed one.)

    Args:
        radius: int >= 1, the window radius r (windows of (2r+1)^2 pixels).
        initial_eps: float > 0, eps at initialisation.

    Call arguments:
        inputs: a pair `(vis, nir)`: [B, H, W, C] and [B, H, W, 1].

    Returns:
        [B, H, W, C], in the layer's compute dtype.

    References:
        He, Sun, Tang, "Guided Image Filtering", TPAMI 2013.
    """

    def __init__(self, radius=2, initial_eps=1e-4, **kwargs):
        super().__init__(**kwargs)
        if int(radius) < 1:
            raise ValueError(f"radius must be >= 1. Received: radius={radius}")
        if not initial_eps > 0:
            raise ValueError(f"initial_eps must be > 0. Received: initial_eps={initial_eps}")
        self.radius = int(radius)
        self.initial_eps = float(initial_eps)
        self.log_eps = None

    def build(self, input_shape):
        vis_shape, nir_shape = input_shape
        if nir_shape[-1] != 1:
            raise ValueError(f"The guide must have 1 channel. Received: nir shape {nir_shape}")
        self.log_eps = self.add_weight(
            name="log_eps",
            shape=(vis_shape[-1],),
            initializer=keras.initializers.Constant(math.log(self.initial_eps)),
            dtype="float32",
        )

    def call(self, inputs):
        vis, nir = (tf.cast(t, tf.float32) for t in inputs)
        eps = tf.exp(tf.cast(self.log_eps, tf.float32))
        return tf.cast(guided_filter(vis, nir, self.radius, eps), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update({"radius": self.radius, "initial_eps": self.initial_eps})
        return config
