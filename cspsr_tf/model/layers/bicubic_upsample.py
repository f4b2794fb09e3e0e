"""Bicubic upsampling by an integer factor as a serialisable, XLA-compatible layer."""

import math

import keras
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


def _upsample_axis(x, scale, axis):
    """Bicubic x`scale` along `axis` (1 = height, 2 = width) of [B, H, W, C]."""
    length = tf.shape(x)[axis]
    pad = [[0, 0]] * 4
    pad[axis] = [2, 2]
    padded = tf.pad(x, pad)  # zeros: taps outside the frame get no weight ...
    ones = tf.pad(tf.ones([length], x.dtype), [[2, 2]])

    def window(tensor, offset, axis_):
        begin = 2 + offset
        if axis_ is None:
            return tensor[begin : begin + length]
        return tensor[:, begin : begin + length] if axis_ == 1 else tensor[:, :, begin : begin + length]

    outputs = []
    for taps in _phase_taps(scale):
        value = None
        norm = None
        for offset, weight in taps:
            w = tf.constant(weight, x.dtype)
            term = window(padded, offset, axis) * w
            n = window(ones, offset, None) * w
            value = term if value is None else value + term
            norm = n if norm is None else norm + n
        # ... and the remaining weights are renormalised to sum to 1, as TF's resize does.
        shape = [1, -1, 1, 1] if axis == 1 else [1, 1, -1, 1]
        outputs.append(value / tf.reshape(norm, shape))
    # Interleave the phases: [..., L, s, ...] -> [..., L * s, ...].
    stacked = tf.stack(outputs, axis=axis + 1)
    shape = tf.shape(x)
    new_shape = [shape[0], shape[1], shape[2], shape[3]]
    new_shape[axis] = length * scale
    return tf.reshape(stacked, new_shape)


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


