"""Residual block of the shallow feature extractor (conv-ReLU-conv + skip)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cspsr_tf")
class ResidualBlock(keras.layers.Layer):
    """x + conv3x3(relu(conv3x3(x))), the block of each SR branch's shallow extractor.

    Args:
        channels: int, the number of feature channels C (input and output).
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        policy = self.dtype_policy
        self.conv1 = keras.layers.Conv2D(channels, 3, padding="same", name="conv1", dtype=policy)
        self.conv2 = keras.layers.Conv2D(channels, 3, padding="same", name="conv2", dtype=policy)

    def build(self, input_shape):
        self.conv1.build(input_shape)
        self.conv2.build(tuple(input_shape[:-1]) + (self.channels,))

    def call(self, inputs):
        return inputs + self.conv2(tf.nn.relu(self.conv1(inputs)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels})
        return config
