"""Cross-spectral feature transfer (CSFT) unit, paper Eq. (2)."""

import keras
import tensorflow as tf

from cspsr_tf.model.layers.replicas import several_replicas

_IMPLEMENTATIONS = ("plain", "fused")


def _weighted_sum(f_vis, f_nir, s1_logit, s2_logit, c_logit, relu=False):
    """F'_nir * w_s1 * w_c2 + F_vis * w_s1 * w_s2 * w_c1 from the gates' logits, in float32
    (with `relu`, its ReLU: the DMF reads F'_vis only through one)."""
    dtype = f_vis.dtype
    f_vis, f_nir, s1_logit, s2_logit, c_logit = (
        tf.cast(t, tf.float32) for t in (f_vis, f_nir, s1_logit, s2_logit, c_logit)
    )
    channels = f_vis.shape[-1]
    w_s1, w_s2, w_c = tf.sigmoid(s1_logit), tf.sigmoid(s2_logit), tf.sigmoid(c_logit)
    w_c1, w_c2 = w_c[..., :channels], w_c[..., channels:]
    out = w_s1 * (f_nir * w_c2 + f_vis * w_s2 * w_c1)
    return tf.cast(tf.nn.relu(out) if relu else out, dtype)


# XLA turns the sigmoids and the products into one pass over F_vis and F'_nir (plain
# TensorFlow makes a full-size temporary per product). The convolutions stay outside.
_fused_weighted_sum = tf.function(_weighted_sum, jit_compile=True, autograph=False)


def _pointwise(x, kernel):
    """[B, H, W, C] x [C, n] -> [B, H, W, n]: a 1x1 convolution as one matrix product (oneDNN
    runs a product with few output columns far better than a convolution with few outputs)."""
    shape = tf.shape(x)
    out = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), tf.cast(kernel, x.dtype))
    return tf.reshape(out, [shape[0], shape[1], shape[2], kernel.shape[-1]])


def _tap_sum(taps):
    """sum_{u, v} taps(i + u - 1, j + v - 1, 3u + v), zero outside the frame: a 3x3 'same'
    convolution with one output, from its nine per-tap products `taps` [B, H, W, 9]."""
    height, width = tf.shape(taps)[1], tf.shape(taps)[2]
    padded = tf.pad(taps, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return tf.add_n([padded[:, u : u + height, v : v + width, 3 * u + v : 3 * u + v + 1]
                     for u in range(3) for v in range(3)])


def _tap_weighted_sum(f_vis, f_nir, vis_taps, nir_taps, border_taps, s1_bias, s2_bias, c_logit,
                      relu=False):
    """`_weighted_sum` with the two spatial gates' logits made from per-tap products (see
    `CSFT._inference_call`), in float32: vis_taps [B, H, W, 18] (tap-major, w_s1 then the VIS
    half of w_s2), nir_taps [B, H, W, 9], border_taps [9] (the batch norms' shifts)."""
    vis_taps, nir_taps = tf.cast(vis_taps, tf.float32), tf.cast(nir_taps, tf.float32)
    s1_logit = _tap_sum(vis_taps[..., 0::2]) + s1_bias
    s2_logit = _tap_sum(vis_taps[..., 1::2] + nir_taps + border_taps) + s2_bias
    return _weighted_sum(f_vis, f_nir, s1_logit, s2_logit, c_logit, relu)


def _tap_columns(kernel):
    """[3, 3, C, n] -> [C, 9 n]: the kernel as the columns of `_pointwise`, tap-major
    (column (3u + v) * n + output)."""
    channels, outputs = kernel.shape[2], kernel.shape[3]
    return tf.reshape(tf.transpose(kernel, [2, 0, 1, 3]), [channels, 9 * outputs])


# The tap sums, the sigmoids and the weighted sum in one XLA pass.
_fused_tap_weighted_sum = tf.function(_tap_weighted_sum, jit_compile=True, autograph=False)


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
        relu_output: bool, default False; return ReLU(F'_vis), computed in the same pass
            (the DMF reads F'_vis only through a ReLU).

    Returns:
        F'_vis (or its ReLU), [B, H, W, C].

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

    def call(self, inputs, training=None, relu_output=False):
        if not training:  # the batch norms are affine maps: folded (`_inference_call`)
            return self._inference_call(*inputs, relu_output=relu_output)
        return self._normalized_call(*inputs, training=training, relu_output=relu_output)

    def _normalized_call(self, f_vis, f_nir, training=None, relu_output=False):
        """Eq. (2) as written, with the batch norms (in training: batch statistics)."""
        normed = tf.concat(
            [self.norm_nir(f_nir, training=training), self.norm_vis(f_vis, training=training)],
            axis=-1,
        )
        # Averaged in float32: a float16 mean over a whole frame loses ~3 digits on CPU.
        pooled = tf.cast(
            tf.reduce_mean(tf.cast(normed, tf.float32), axis=[1, 2], keepdims=True), normed.dtype
        )
        return self._gated_sum(f_vis, f_nir, self.spatial_vis(f_vis), self.spatial_fused(normed),
                               self.channel_conv(pooled), relu_output)

    def _gated_sum(self, f_vis, f_nir, s1_logit, s2_logit, c_logit, relu_output=False):
        """Eq. (2)'s weighted sum from the gates' logits (fused by XLA, or plain ops)."""
        if self.implementation == "fused":
            weighted_sum = _weighted_sum if several_replicas() else _fused_weighted_sum
            return weighted_sum(f_vis, f_nir, s1_logit, s2_logit, c_logit, relu_output)
        channels = f_vis.shape[-1]
        w_s1, w_s2, w_c = tf.sigmoid(s1_logit), tf.sigmoid(s2_logit), tf.sigmoid(c_logit)
        w_c1, w_c2 = w_c[..., :channels], w_c[..., channels:]
        out = f_nir * w_s1 * w_c2 + f_vis * w_s1 * w_s2 * w_c1
        return tf.nn.relu(out) if relu_output else out

    def _inference_call(self, f_vis, f_nir, relu_output=False):
        """`call` with the batch norms folded into the convolutions that read them.

        In inference each batch norm is a per-channel affine map a * x + b (moving
        statistics), so the normalised, concatenated 2C-channel features need not be made:
        - w_s2's convolution of [a_n f_nir + b_n, a_v f_vis + b_v] is its kernel scaled by a
          on each input channel, applied to f_nir and f_vis, plus the convolution of the
          constant b (zero in the padding, as the normalised features were): a one-channel
          convolution of a map of ones, which keeps the frame's border exact;
        - the VIS half of that kernel and w_s1's kernel read the same f_vis: one convolution
          with two outputs;
        - the global average pool of the normalised features is a * pool(x) + b.
        Same numbers as the training-mode graph with moving statistics (to float round-off).

        With the `fused` implementation the three one- and two-output 3x3 convolutions, which
        oneDNN runs at a few percent of its speed on wide ones, become products with the nine
        taps (one matrix product per input, 18 and 9 columns) summed over the 3x3 window
        inside the XLA pass of the weighted sum; the constant term rides on the NIR taps.
        """
        channels = f_vis.shape[-1]
        dtype = f_vis.dtype
        a_nir, b_nir = self._affine(self.norm_nir)
        a_vis, b_vis = self._affine(self.norm_vis)
        w_s2 = tf.cast(self.spatial_fused.kernel, tf.float32)  # [3, 3, 2C, 1]: NIR first
        w_s1 = tf.cast(self.spatial_vis.kernel, tf.float32)  # [3, 3, C, 1]
        vis_kernel = tf.concat([w_s1, w_s2[:, :, channels:] * a_vis[:, None]], axis=-1)
        nir_kernel = w_s2[:, :, :channels] * a_nir[:, None]
        border_kernel = tf.reduce_sum(w_s2 * tf.concat([b_nir, b_vis], 0)[:, None], axis=2,
                                      keepdims=True)  # [3, 3, 1, 1]
        # Averaged in float32 (see `_normalized_call`), then the batch norms' affine maps.
        pooled = tf.concat([
            a_nir * tf.reduce_mean(tf.cast(f_nir, tf.float32), axis=[1, 2], keepdims=True) + b_nir,
            a_vis * tf.reduce_mean(tf.cast(f_vis, tf.float32), axis=[1, 2], keepdims=True) + b_vis,
        ], axis=-1)
        c_logit = self.channel_conv(tf.cast(pooled, dtype))
        if self.implementation == "fused":
            vis_taps = _pointwise(f_vis, _tap_columns(vis_kernel))
            nir_taps = _pointwise(f_nir, _tap_columns(nir_kernel))
            tap_sum = _tap_weighted_sum if several_replicas() else _fused_tap_weighted_sum
            return tap_sum(f_vis, f_nir, vis_taps, nir_taps, tf.reshape(border_kernel, [9]),
                           tf.cast(self.spatial_vis.bias, tf.float32),
                           tf.cast(self.spatial_fused.bias, tf.float32), c_logit, relu_output)
        vis_logits = tf.nn.conv2d(f_vis, tf.cast(vis_kernel, dtype), 1, "SAME")
        nir_logit = tf.nn.conv2d(f_nir, tf.cast(nir_kernel, dtype), 1, "SAME")
        ones = tf.ones_like(f_vis[..., :1], dtype=tf.float32)
        constant_logit = tf.nn.conv2d(ones, border_kernel, 1, "SAME")
        s1_logit = vis_logits[..., :1] + tf.cast(self.spatial_vis.bias, dtype)
        s2_logit = (vis_logits[..., 1:] + nir_logit + tf.cast(constant_logit, dtype)
                    + tf.cast(self.spatial_fused.bias, dtype))
        return self._gated_sum(f_vis, f_nir, s1_logit, s2_logit, c_logit, relu_output)

    @staticmethod
    def _affine(norm):
        """(a, b), float32 [C]: the inference-mode batch norm `norm` is x -> a * x + b."""
        scale = tf.math.rsqrt(tf.cast(norm.moving_variance, tf.float32) + norm.epsilon)
        if norm.scale:
            scale = scale * tf.cast(norm.gamma, tf.float32)
        shift = -tf.cast(norm.moving_mean, tf.float32) * scale
        if norm.center:
            shift = shift + tf.cast(norm.beta, tf.float32)
        return scale, shift

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            {"momentum": self.momentum, "epsilon": self.epsilon, "implementation": self.implementation}
        )
        return config
