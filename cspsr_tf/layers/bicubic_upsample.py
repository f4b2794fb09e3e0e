"""Bicubic upsampling as a serialisable layer (the model's optional global skip)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cspsr_tf")
class BicubicUpsample(keras.layers.Layer):
    """Resizes [B, h, w, C] to [B, h * s, w * s, C] with bicubic interpolation.

    Args:
        scale: int, the upsampling factor s.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = int(scale)

    def call(self, inputs):
        size = tf.shape(inputs)[1:3] * self.scale
        out = tf.image.resize(inputs, size, method="bicubic")
        return tf.cast(out, inputs.dtype)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.scale
        return (b, None if h is None else h * s, None if w is None else w * s, c)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale})
        return config
