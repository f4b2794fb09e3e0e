"""Cross-spectral feature transfer (CSFT) unit, paper Eq. (2)."""

import keras
import tensorflow as tf


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

    Call arguments:
        inputs: a pair `(f_vis, f_nir_dyn)` of [B, H, W, C] tensors.
        training: bool, batch statistics (True) or moving statistics (False).

    Returns:
        F'_vis, [B, H, W, C].

    References:
        Wei et al., CSPSR, Sec. 4.3 and Eq. (2).
    """

    def __init__(self, momentum=0.99, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
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
        w_s1 = tf.sigmoid(self.spatial_vis(f_vis))
        normed = tf.concat(
            [self.norm_nir(f_nir, training=training), self.norm_vis(f_vis, training=training)],
            axis=-1,
        )
        pooled = tf.reduce_mean(normed, axis=[1, 2], keepdims=True)
        w_c = tf.sigmoid(self.channel_conv(pooled))
        w_c1, w_c2 = w_c[..., :channels], w_c[..., channels:]
        w_s2 = tf.sigmoid(self.spatial_fused(normed))
        return f_nir * w_s1 * w_c2 + f_vis * w_s1 * w_s2 * w_c1

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "epsilon": self.epsilon})
        return config
