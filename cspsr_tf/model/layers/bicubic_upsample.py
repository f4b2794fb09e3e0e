"""Bicubic upsampling by an integer factor as a serialisable, XLA-compatible layer."""

import math

import keras
import numpy as np
import tensorflow as tf


def _keys_cubic(distance, a=-0.5):
    d = abs(distance)
    if d <= 1.0:
        return (a + 2.0) * d**3 - (a + 3.0) * d**2 + 1.0
    if d < 2.0:
        return a * d**3 - 5.0 * a * d**2 + 8.0 * a * d - 4.0 * a
    return 0.0


def _phase_taps(scale):
    """For each output phase p: [(input offset relative to j, weight)] of its 4 taps.

    Output pixel s*j + p sits at input coordinate j + (p + 0.5) / s - 0.5 (half-pixel centres).
    """
    phases = []
    for p in range(scale):
        f = (p + 0.5) / scale - 0.5
        base = math.floor(f)
        phases.append([(base - 1 + i, _keys_cubic(f - (base - 1 + i))) for i in range(4)])
    return phases


def _phase_kernel(scale):
    """[5, scale]: column p holds phase p's tap weights at input offsets -2 .. 2."""
    kernel = np.zeros((5, scale), np.float64)
    for p, taps in enumerate(_phase_taps(scale)):
        for offset, weight in taps:
            kernel[offset + 2, p] = weight
    return kernel


def _upsample_axis(x, scale, axis):
    """Bicubic x`scale` along `axis` (1 = height, 2 = width) of [B, H, W, C].

    All phases in one depthwise convolution (channel multiplier `scale`), then interleaved: a
    graph of a few ops, where one slice per tap and phase made it the model's largest part.
    """
    length = tf.shape(x)[axis]
    channels = x.shape[-1]
    kernel = _phase_kernel(scale)
    along = [5, 1] if axis == 1 else [1, 5]
    pad = [[0, 0]] * 4
    pad[axis] = [2, 2]
    # Zero padding: taps outside the frame get no weight ...
    filters = np.tile(kernel.reshape(*along, 1, scale), [1, 1, channels, 1])
    value = tf.nn.depthwise_conv2d(tf.pad(x, pad), tf.constant(filters, x.dtype), [1] * 4, "VALID")
    ones_shape = [1, 1, 1, 1]
    ones_shape[axis] = length
    norm = tf.nn.depthwise_conv2d(
        tf.pad(tf.ones(ones_shape, x.dtype), pad), tf.constant(kernel.reshape(*along, 1, scale), x.dtype),
        [1] * 4, "VALID",
    )
    # ... and the remaining weights are renormalised to sum to 1, as TF's resize does.
    shape = tf.shape(x)
    value = tf.reshape(value, [shape[0], shape[1], shape[2], channels, scale]) / norm[..., tf.newaxis, :]
    # Interleave the phases: [..., L, s, ...] -> [..., L * s, ...].
    if axis == 1:
        value = tf.transpose(value, [0, 1, 4, 2, 3])
        return tf.reshape(value, [shape[0], length * scale, shape[2], channels])
    value = tf.transpose(value, [0, 1, 2, 4, 3])
    return tf.reshape(value, [shape[0], shape[1], length * scale, channels])


def bicubic_upsample(images, scale):
    """tf.image.resize(images, [H*s, W*s], "bicubic") for integer s, without the ResizeBicubic
    op, which XLA cannot compile: a fixed 4-tap polyphase filter per axis (Keys a = -0.5,
    half-pixel centres, out-of-frame taps dropped and the rest renormalised).

    Equal to float32 rounding for s = 2, 4, 8. For s = 3 TF's op looks the kernel up in a
    table at 1/1024-pixel steps while this evaluates it exactly (differences below 1e-3).
    """
    if scale == 1:
        return images
    return _upsample_axis(_upsample_axis(images, scale, 1), scale, 2)


@keras.saving.register_keras_serializable(package="cspsr_tf")
class BicubicUpsample(keras.layers.Layer):
    """Resizes [B, h, w, C] to [B, h * s, w * s, C] with bicubic interpolation.

    The numbers equal `tf.image.resize(..., method="bicubic")`; the implementation avoids
    the ResizeBicubic op so that the model compiles with XLA (`jit_compile`).

    Args:
        scale: int, the upsampling factor s.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = int(scale)

    def call(self, inputs):
        return bicubic_upsample(inputs, self.scale)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.scale
        return (b, None if h is None else h * s, None if w is None else w * s, c)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale})
        return config


