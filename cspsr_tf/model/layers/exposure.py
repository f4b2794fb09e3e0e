"""Exposure conditioning: whole-frame statistics steer a model trained on patches.

Why: a model for frames of unknown condition (clean, dark, over-exposed; the `blind`
degradation) must know how far to brighten or darken, and a network that sees a few dozen
LR pixels around each output cannot tell a dark scene from a darkened one, nor a bright
clean frame from an over-exposed one (docs/nir_benefit.md, "One model for every condition").
The frame as a whole can: its mean brightness, its share of clipped pixels, its noise against
its texture and, with the NIR, its brightness against the NIR's.

So a model with `exposure_conditioning` reads a few statistics of the WHOLE LR frame
(`ops/frame_statistics.py`) and turns them, through a small MLP (`ExposureConditioning`), into
- a gain per colour applied to the LR VIS before the VIS branch and its bicubic skip
  (`ExposureGain`; the network then restores a frame of normal exposure), and
- a scale and shift per channel of the VIS branch's shallow features (`FeatureModulation`,
  FiLM), so the restoration (denoising, filling clipped areas) can depend on the condition.
Both heads start at zero: the untrained model is the unconditioned one.

Training sees patches, not frames, so the data pipeline computes the statistics of each
example's whole degraded LR frame with this same function and feeds them to the training
twin (`build.build_cspsr_with_training_twin`); the served model computes them from its input.
A tiled run therefore must pass the whole frame's statistics to every tile (`infer/tiling.py`
does).

Measured (docs/nir_benefit.md, "Exposure conditioning"): blind models with it lift clean frames
from 24.35 to 27.68 dB and low light from 24.41 to 27.05 dB (over-exposure 21.91 -> 21.63), but
stay below bicubic on clean frames (29.66), so no shipped preset uses it.
"""

import keras
import tensorflow as tf

from cspsr_tf.ops.frame_statistics import frame_statistics, statistics_size


@keras.saving.register_keras_serializable(package="cspsr_tf")
class FrameStatistics(keras.layers.Layer):
    """`frame_statistics` of the layer's input frames (float32 whatever the policy).

    Args:
        use_nir: whether the input is `(vis, nir)` (True) or `vis` alone.
    """

    def __init__(self, use_nir=True, **kwargs):
        super().__init__(**kwargs)
        self.use_nir = bool(use_nir)

    def call(self, inputs):
        if self.use_nir:
            vis, nir = inputs
            return frame_statistics(vis, nir)
        return frame_statistics(inputs)

    def compute_output_shape(self, input_shape):
        vis_shape = input_shape[0] if self.use_nir else input_shape
        return (vis_shape[0], statistics_size(self.use_nir))

    def get_config(self):
        return {**super().get_config(), "use_nir": self.use_nir}


@keras.saving.register_keras_serializable(package="cspsr_tf")
class ExposureConditioning(keras.layers.Layer):
    """MLP from frame statistics to a log gain per colour and FiLM parameters per channel.

    `log_gain = max_log_gain * tanh(rate * u / max_log_gain)` with `u` a zero-initialised
    linear head: the gain starts at 1, stays within exp(+-max_log_gain), and `rate` lets Adam
    (whose steps are about one learning rate) reach a gain of 4 in a few hundred steps, as
    `SkipGain` does. The FiLM head (`scale`, `shift`, zero-initialised) starts as identity.

    Args:
        channels: C, the channels the FiLM parameters modulate.
        hidden: width of the MLP's hidden layer.
        rate: float > 0, the gain head's step multiplier.
        max_log_gain: float > 0, the bound of |log gain|.

    Returns:
        (log_gain [B, 3], film [B, 2C]) float32.
    """

    def __init__(self, channels, hidden=32, rate=10.0, max_log_gain=3.0, **kwargs):
        super().__init__(**kwargs)
        if not rate > 0 or not max_log_gain > 0:
            raise ValueError(f"rate and max_log_gain must be > 0. Received: {rate}, {max_log_gain}")
        self.channels, self.hidden = int(channels), int(hidden)
        self.rate, self.max_log_gain = float(rate), float(max_log_gain)
        self.hidden_dense = keras.layers.Dense(self.hidden, activation="relu", name="hidden", dtype="float32")
        self.gain_head = keras.layers.Dense(3, kernel_initializer="zeros", name="gain", dtype="float32")
        self.film_head = keras.layers.Dense(2 * self.channels, kernel_initializer="zeros", name="film",
                                            dtype="float32")

    def build(self, input_shape):
        self.hidden_dense.build(input_shape)
        self.gain_head.build((input_shape[0], self.hidden))
        self.film_head.build((input_shape[0], self.hidden))

    def call(self, stats):
        h = self.hidden_dense(tf.cast(stats, tf.float32))
        u = self.gain_head(h)
        log_gain = self.max_log_gain * tf.tanh(self.rate * u / self.max_log_gain)
        return log_gain, self.film_head(h)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 3), (input_shape[0], 2 * self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "hidden": self.hidden,
                "rate": self.rate, "max_log_gain": self.max_log_gain}


@keras.saving.register_keras_serializable(package="cspsr_tf")
class ExposureGain(keras.layers.Layer):
    """`image * exp(log_gain)` per example and colour, not clipped (the network and the skip
    see the corrected exposure). float32 whatever the policy: it scales the image."""

    def call(self, inputs):
        image, log_gain = inputs
        gain = tf.exp(tf.cast(log_gain, tf.float32))[:, None, None, :]
        return tf.cast(tf.cast(image, tf.float32) * gain, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])


@keras.saving.register_keras_serializable(package="cspsr_tf")
class FeatureModulation(keras.layers.Layer):
    """FiLM: `features * (1 + scale) + shift`, with (scale, shift) = the halves of `film`."""

    def call(self, inputs):
        features, film = inputs
        film = tf.cast(film, self.compute_dtype)[:, None, None, :]
        scale, shift = tf.split(film, 2, axis=-1)
        return features * (1.0 + scale) + shift

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])
