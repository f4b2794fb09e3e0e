"""Cross-spectral feature transfer (CSFT) unit, paper Eq. (2)."""

import keras
import tensorflow as tf

from cspsr_tf.model.layers.replicas import several_replicas

_IMPLEMENTATIONS = ("plain", "fused")


def _weighted_sum(f_vis, f_nir, s1_logit, s2_logit, c_logit):
    """F'_nir * w_s1 * w_c2 + F_vis * w_s1 * w_s2 * w_c1 from the gates' logits, in float32."""
    dtype = f_vis.dtype
    f_vis, f_nir, s1_logit, s2_logit, c_logit = (
        tf.cast(t, tf.float32) for t in (f_vis, f_nir, s1_logit, s2_logit, c_logit)
    )
    channels = f_vis.shape[-1]
    w_s1, w_s2, w_c = tf.sigmoid(s1_logit), tf.sigmoid(s2_logit), tf.sigmoid(c_logit)
    w_c1, w_c2 = w_c[..., :channels], w_c[..., channels:]
    return tf.cast(w_s1 * (f_nir * w_c2 + f_vis * w_s2 * w_c1), dtype)


# XLA turns the sigmoids and the products into one pass over F_vis and F'_nir (plain
# TensorFlow makes a full-size temporary per product). The convolutions stay outside.
_fused_weighted_sum = tf.function(_weighted_sum, jit_compile=True, autograph=False)


@keras.saving.register_keras_serializable(package="cspsr_tf")
class CSFT(keras.layers.Layer):
    """Confidence-based transfer of NIR features into the VIS feature space (Eq. 2).

    With F_vis the VIS features and F'_nir the dynamically filtered NIR features:
        w_s1 = sigmoid(conv3x3(F_vis) -> 1 channel)
        N_nir = BN(F'_nir), N_vis = BN(F_vis)          (two separate batch norms)
        w_c = sigmoid(conv1x1(GAP(concat(N_nir, N_vis))) -> 2C);  w_c1, w_c2 = split(w_c)
        w_s2 = sigmoid(conv3x3(concat(N_nir, N_vis)) -> 1 channel)
        F'_vis = F'_nir * w_s1 * w_c2 + F_vis * w_s1 * w_s2 * w_c1
    The batch norms are synchronised across replicas under tf.distribute, so a run on several
    devices computes the same statistics as one device with the same global batch.
    The normalised features only drive the weights; the weighted sum uses F'_nir and F_vis
    as Eq. (2) writes them.

    Args:
        momentum, epsilon: batch-norm settings (Keras defaults 0.99, 1e-3).
        implementation: `plain` (TensorFlow ops) or `fused` (the gates' sigmoids and the
            weighted sum compiled by XLA into one pass, computed in float32); same numbers.

    Call arguments:
        inputs: a pair `(f_vis, f_nir_dyn)` of [B, H, W, C] tensors.
        training: bool, batch statistics (True) or moving statistics (False).

    Returns:
        F'_vis, [B, H, W, C].

    References:
        Wei et al., CSPSR, Sec. 4.3 and Eq. (2).
    """

    def __init__(self, momentum=0.99, epsilon=1e-3, implementation="plain", **kwargs):
        super().__init__(**kwargs)
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {_IMPLEMENTATIONS}. Received: {implementation!r}"
            )
        self.implementation = implementation
        self.momentum = momentum
        self.epsilon = epsilon
        policy = self.dtype_policy
        self.spatial_vis = keras.layers.Conv2D(1, 3, padding="same", name="w_s1", dtype=policy)
        self.norm_nir = keras.layers.BatchNormalization(
            momentum=momentum, epsilon=epsilon, synchronized=True, name="bn_nir", dtype=policy
        )
        self.norm_vis = keras.layers.BatchNormalization(
            momentum=momentum, epsilon=epsilon, synchronized=True, name="bn_vis", dtype=policy
        )
        self.spatial_fused = keras.layers.Conv2D(1, 3, padding="same", name="w_s2", dtype=policy)
        self.channel_conv = None  # needs C, made in build()

    def build(self, input_shape):
        vis_shape, nir_shape = input_shape
        channels = vis_shape[-1]
        if nir_shape[-1] != channels:
            raise ValueError(
                f"CSFT needs F_vis and F'_nir with the same channels. Received: {vis_shape} and {nir_shape}"
            )
        self.channel_conv = keras.layers.Conv2D(
            2 * channels, 1, name="w_c", dtype=self.dtype_policy
        )
        self.spatial_vis.build(vis_shape)
        self.norm_nir.build(nir_shape)
        self.norm_vis.build(vis_shape)
        concat_shape = tuple(vis_shape[:-1]) + (2 * channels,)
        self.spatial_fused.build(concat_shape)
        self.channel_conv.build((vis_shape[0], 1, 1, 2 * channels))

    def call(self, inputs, training=None):
        f_vis, f_nir = inputs
        channels = f_vis.shape[-1]
        normed = tf.concat(
            [self.norm_nir(f_nir, training=training), self.norm_vis(f_vis, training=training)],
            axis=-1,
        )
        # Averaged in float32: a float16 mean over a whole frame loses ~3 digits on CPU.
        pooled = tf.cast(
            tf.reduce_mean(tf.cast(normed, tf.float32), axis=[1, 2], keepdims=True), normed.dtype
        )
        if self.implementation == "fused":
            weighted_sum = _weighted_sum if several_replicas() else _fused_weighted_sum
            return weighted_sum(
                f_vis, f_nir, self.spatial_vis(f_vis), self.spatial_fused(normed),
                self.channel_conv(pooled),
            )
        w_s1 = tf.sigmoid(self.spatial_vis(f_vis))
        w_c = tf.sigmoid(self.channel_conv(pooled))
        w_c1, w_c2 = w_c[..., :channels], w_c[..., channels:]
        w_s2 = tf.sigmoid(self.spatial_fused(normed))
        return f_nir * w_s1 * w_c2 + f_vis * w_s1 * w_s2 * w_c1

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            {"momentum": self.momentum, "epsilon": self.epsilon, "implementation": self.implementation}
        )
        return config
