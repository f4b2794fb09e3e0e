"""Sub-pixel upsampling (pixel shuffle) as a serialisable layer."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cspsr_tf")
class PixelShuffle(keras.layers.Layer):
    """Rearranges [B, h, w, C * s^2] into [B, h * s, w * s, C] (tf.nn.depth_to_space).

    Args:
        scale: int, the upsampling factor s.

    References:
        Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient
        Sub-Pixel Convolutional Neural Network", CVPR 2016.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        if int(scale) < 1:
            raise ValueError(f"scale must be a positive int. Received: scale={scale}")
        self.scale = int(scale)

    def call(self, inputs):
        return tf.nn.depth_to_space(inputs, self.scale)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.scale
        if c is not None and c % (s * s):
            raise ValueError(f"channels must be a multiple of scale^2={s * s}. Received: {c}")
        return (
            b,
            None if h is None else h * s,
            None if w is None else w * s,
            None if c is None else c // (s * s),
        )

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale})
        return config
