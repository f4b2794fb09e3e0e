"""A learned correction of the NIR guide of the guided filter (after the learned guidance map
of Wu et al.'s deep guided filter, CVPR 2018).

Why: `benchmarks/results/nir_benefit_oracle_guide.json` measured the `full_gf` model at +1.72 dB
over the VIS-only baseline in low light when its guide is the clean VIS luminance, against
+0.11 dB with the real NIR: the filter's gain is limited by how far the guide is from the
VIS luminance. The NIR band differs from the visible one (vegetation, dyes and skin change
contrast between them, not by one gain and offset a window's linear fit can absorb); a small
network that sees both images can move the guide towards the VIS luminance where they differ.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cspsr_tf")
class LearnedGuide(keras.layers.Layer):
    """`nir + f(vis, nir)`: the NIR plus a correction by a small convolutional network.

    f is `hidden_layers` 3x3 ReLU convolutions of `channels` channels over the concatenated
    VIS and NIR, then a 3x3 convolution to one channel whose weights start at zero, so the
    untrained layer returns the NIR itself (the `full_gf` guide) and training moves away from
    it only where the loss asks. The model builds it in float32: the guided filter takes
    differences of close moments of the guide (`precision.py`).

    Args:
        channels: int >= 1, the width of the hidden convolutions.
        hidden_layers: int >= 1, their number.

    Call arguments:
        inputs: a pair `(vis, nir)`: [B, H, W, C] and [B, H, W, 1].

    Returns:
        [B, H, W, 1], the guide, in the layer's compute dtype.

    References:
        Wu, Zheng, Zhang, Huang, "Fast End-to-End Trainable Guided Filter", CVPR 2018.
    """

    def __init__(self, channels=16, hidden_layers=2, **kwargs):
        super().__init__(**kwargs)
        if int(channels) < 1 or int(hidden_layers) < 1:
            raise ValueError(
                f"channels and hidden_layers must be >= 1. Received: channels={channels}, "
                f"hidden_layers={hidden_layers}"
            )
        self.channels = int(channels)
        self.hidden_layers = int(hidden_layers)
        self.hidden = [
            keras.layers.Conv2D(self.channels, 3, padding="same", activation="relu",
                                name=f"hidden{i + 1}", dtype=self.dtype_policy)
            for i in range(self.hidden_layers)
        ]
        self.correction = keras.layers.Conv2D(
            1, 3, padding="same", kernel_initializer="zeros", name="correction",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        vis_shape, nir_shape = input_shape
        if nir_shape[-1] != 1:
            raise ValueError(f"The NIR guide must have 1 channel. Received: nir shape {nir_shape}")
        shape = tuple(vis_shape[:-1]) + (vis_shape[-1] + 1,)
        for conv in self.hidden:
            conv.build(shape)
            shape = shape[:-1] + (self.channels,)
        self.correction.build(shape)

    def call(self, inputs):
        vis, nir = (tf.cast(t, self.compute_dtype) for t in inputs)
        x = tf.concat([vis, nir], axis=-1)
        for conv in self.hidden:
            x = conv(x)
        return nir + self.correction(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "hidden_layers": self.hidden_layers})
        return config
