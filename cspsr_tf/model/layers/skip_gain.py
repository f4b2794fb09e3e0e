"""A learned gain per colour channel on the bicubic skip of the VIS output.

Why: under the `low_light` degradation the LR VIS is 4x (or 10x, 20x) darker than the HR
target, so a skip of gain 1 adds a dark image and the residual branch has to rebuild the
whole image instead of a correction. With the gain learned, the skip can carry the brightened
input (or its NIR-guided filtering, `CSPSRConfig.skip_source`) and the branch learns the rest.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cspsr_tf")
class SkipGain(keras.layers.Layer):
    """`x * exp(rate * v)`, one learned v per channel, starting at 0 (gain 1: the plain skip).

    The factor `rate` makes the gain move fast enough under Adam, whose steps in v are about
    one learning rate whatever the gradient's size: reaching a gain of 10 takes log(10) / rate
    in v, about 230 steps at 5e-4 with rate 20 instead of 4,600 with rate 1. The model builds
    it in float32 (it scales the image, not a small residual; `precision.py`).

    Args:
        rate: float > 0, the scale of v in the exponent.

    Call arguments:
        inputs: [B, H, W, C].

    Returns:
        [B, H, W, C], in the layer's compute dtype.
    """

    def __init__(self, rate=20.0, **kwargs):
        super().__init__(**kwargs)
        if not rate > 0:
            raise ValueError(f"rate must be > 0. Received: rate={rate}")
        self.rate = float(rate)
        self.log_gain = None

    def build(self, input_shape):
        self.log_gain = self.add_weight(
            name="log_gain", shape=(input_shape[-1],), initializer="zeros", dtype="float32"
        )

    @property
    def gain(self):
        """The current gain per channel, a float32 tensor [C]."""
        return tf.exp(self.rate * tf.cast(self.log_gain, tf.float32))

    def call(self, inputs):
        return tf.cast(tf.cast(inputs, tf.float32) * self.gain, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate})
        return config
