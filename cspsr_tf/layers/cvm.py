"""Cross-view matching (CVM): disparity network + warp of the right NIR into the left view."""

import math

import keras
import tensorflow as tf

from cspsr_tf.layers.disparity_warp import warp_by_disparity


def _replicate_pad_to_multiple(x, multiple):
    """Pads [B, H, W, C] at the bottom and right by edge replication to a multiple."""
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    padded_h = (height + multiple - 1) // multiple * multiple
    padded_w = (width + multiple - 1) // multiple * multiple
    # Gathering with clamped indices replicates the last row / column any number of times,
    # which tf.pad's REFLECT/SYMMETRIC modes cannot do for frames smaller than the pad.
    x = tf.gather(x, tf.minimum(tf.range(padded_h), height - 1), axis=1)
    return tf.gather(x, tf.minimum(tf.range(padded_w), width - 1), axis=2)


@keras.saving.register_keras_serializable(package="cspsr_tf")
class CrossViewMatching(keras.layers.Layer):
    """Predicts left/right disparities of an LR VIS-left / NIR-right pair and aligns the NIR.

    A U-shaped encoder-decoder over concat(vis_lr, nir_lr), after the cross-spectral
    disparity network the paper builds on (Zhi et al. 2018, itself in the DispNet / Monodepth
    family): `depth` stride-2 stages of two 3x3 conv + batch norm + ELU, a decoder that
    upsamples, concatenates the encoder skip and the coarser disparity, and a disparity head
    at every decoder scale. The finest head (input resolution) gives `disp_l` and `disp_r`;
    the coarser ones are returned with `return_pyramid=True` for multi-scale losses.

    Disparities are in LR pixels, non-negative and bounded by a scaled sigmoid:
    d = max_disparity * sigmoid(z), initialised near `initial_disparity`. Any input size
    works: the input is padded by edge replication to a multiple of 2**depth and the outputs
    are cropped back. The right NIR is moved into the left view with Eq. (1),
    NIR_l(i, j) = NIR_r(i, j - disp_l(i, j)).

    Args:
        base_channels: int, default 16; width of the first stage (doubles per stage).
        depth: int, default 3; number of stride-2 stages.
        max_disparity: float, default 24.0; upper bound of the disparity in LR pixels.
        initial_disparity: float, default 1.0; disparity the untrained heads output.

    Call arguments:
        inputs: a pair `(vis_lr, nir_lr)`, [B, h, w, 3] and [B, h, w, 1].
        training: bool, for the batch norms.

    Returns:
        A dict with `nir_l` [B, h, w, 1] (the warped NIR), `valid_l` [B, h, w, 1] (1 where the
        warp sampled inside the frame), `disp_l`, `disp_r` [B, h, w, 1], and with
        `return_pyramid` also `pyramid`: a list of [B, h / 2^l, w / 2^l, 2] (left, right)
        disparities from coarse to fine, in LR pixels, padded size.

    References:
        Wei et al., CSPSR, Sec. 4.2 and Eq. (1); Zhi et al., "Deep Material-aware
        Cross-spectral Stereo Matching", CVPR 2018.
    """

    def __init__(
        self,
        base_channels=16,
        depth=3,
        max_disparity=24.0,
        initial_disparity=1.0,
        return_pyramid=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if depth < 1:
            raise ValueError(f"depth must be >= 1. Received: depth={depth}")
        if not 0.0 < initial_disparity < max_disparity:
            raise ValueError(
                "initial_disparity must lie in (0, max_disparity). Received: "
                f"initial_disparity={initial_disparity}, max_disparity={max_disparity}"
            )
        self.base_channels = base_channels
        self.depth = depth
        self.max_disparity = float(max_disparity)
        self.initial_disparity = float(initial_disparity)
        self.return_pyramid = return_pyramid
        policy = self.dtype_policy

        def conv_bn_elu(filters, strides, name):
            return [
                keras.layers.Conv2D(
                    filters, 3, strides=strides, padding="same", use_bias=False,
                    name=f"{name}_conv", dtype=policy,
                ),
                keras.layers.BatchNormalization(synchronized=True, name=f"{name}_bn", dtype=policy),
                keras.layers.Activation("elu", name=f"{name}_elu", dtype=policy),
            ]

        self.stem = conv_bn_elu(base_channels, 1, "stem")
        self.encoder = []
        for level in range(1, depth + 1):
            filters = base_channels * 2**level
            self.encoder.append(
                conv_bn_elu(filters, 2, f"enc{level}a") + conv_bn_elu(filters, 1, f"enc{level}b")
            )
        p = initial_disparity / max_disparity
        head_bias = keras.initializers.Constant(math.log(p / (1.0 - p)))
        self.decoder = []
        self.heads = []
        for level in range(depth - 1, -1, -1):
            self.decoder.append(conv_bn_elu(base_channels * 2**level, 1, f"dec{level}"))
            self.heads.append(
                keras.layers.Conv2D(
                    2, 3, padding="same", bias_initializer=head_bias,
                    kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3),
                    name=f"disp{level}", dtype=policy,
                )
            )

    def build(self, input_shape):
        vis_shape, nir_shape = input_shape

        def build_stack(stack, channels_in):
            for layer in stack:
                if isinstance(layer, keras.layers.Conv2D):
                    layer.build((None, None, None, channels_in))
                    channels_in = layer.filters
                elif isinstance(layer, keras.layers.BatchNormalization):
                    layer.build((None, None, None, channels_in))
            return channels_in

        skip_channels = [build_stack(self.stem, vis_shape[-1] + nir_shape[-1])]
        for stage in self.encoder:
            skip_channels.append(build_stack(stage, skip_channels[-1]))
        incoming = skip_channels[-1]
        for step, (block, head) in enumerate(zip(self.decoder, self.heads, strict=True)):
            level = self.depth - 1 - step
            incoming = build_stack(block, incoming + skip_channels[level] + (2 if step else 0))
            head.build((None, None, None, incoming))

    @staticmethod
    def _run(stack, x, training):
        for layer in stack:
            x = layer(x, training=training) if isinstance(
                layer, keras.layers.BatchNormalization
            ) else layer(x)
        return x

    def call(self, inputs, training=None):
        vis_lr, nir_lr = inputs
        height, width = tf.shape(vis_lr)[1], tf.shape(vis_lr)[2]
        x = _replicate_pad_to_multiple(tf.concat([vis_lr, nir_lr], axis=-1), 2**self.depth)
        skips = [self._run(self.stem, x, training)]
        for stage in self.encoder:
            skips.append(self._run(stage, skips[-1], training))
        y = skips[-1]
        disparity = None
        pyramid = []
        for step, (block, head) in enumerate(zip(self.decoder, self.heads, strict=True)):
            level = self.depth - 1 - step
            y = tf.repeat(tf.repeat(y, 2, axis=1), 2, axis=2)  # nearest x2 upsampling
            parts = [y, skips[level]]
            if disparity is not None:
                # Coarser estimate, upsampled, as an extra input (values stay in LR pixels).
                parts.append(tf.repeat(tf.repeat(disparity, 2, axis=1), 2, axis=2))
            y = self._run(block, tf.concat(parts, axis=-1), training)
            disparity = self.max_disparity * tf.sigmoid(head(y))
            pyramid.append(disparity)
        disparity = disparity[:, :height, :width, :]
        disp_l, disp_r = disparity[..., :1], disparity[..., 1:]
        nir_l, valid_l = warp_by_disparity(nir_lr, disp_l, "right_to_left")
        outputs = {"nir_l": nir_l, "valid_l": valid_l, "disp_l": disp_l, "disp_r": disp_r}
        if self.return_pyramid:
            outputs["pyramid"] = pyramid
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "base_channels": self.base_channels,
                "depth": self.depth,
                "max_disparity": self.max_disparity,
                "initial_disparity": self.initial_disparity,
                "return_pyramid": self.return_pyramid,
            }
        )
        return config
