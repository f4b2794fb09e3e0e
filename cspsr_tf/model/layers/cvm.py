"""Cross-view matching (CVM): disparity network + warp of the right NIR into the left view."""

import math

import keras
import tensorflow as tf

from cspsr_tf.model.configs import CVM_NORMALIZATIONS
from cspsr_tf.model.layers.replicas import several_replicas
from cspsr_tf.ops.cross_spectral_similarity import (
    gaussian_blur_each,
    luminance,
    ncc_squared_volume,
    shifted_column_indices,
)
from cspsr_tf.ops.warp import warp_by_disparity

GEOMETRIES = ("stereo", "aligned")
# After each encoder/decoder convolution: `batch` norm, `group` norm (per example: the same in
# training and inference) or `none` (biased convolutions); the config validates the same names.
NORMALIZATIONS = CVM_NORMALIZATIONS
GROUPS = 8
# Candidates (LR pixels) either side of the best one that the soft-argmin averages over.
SOFT_ARGMIN_RADIUS = 2.0
# Spread (LR pixels) of the Gaussian that aggregates the NCC^2 cost volume over neighbours.
COST_AGGREGATION_SIGMA = 2.0
# Spread (LR pixels) of the confidence-weighted fill of the base estimate.
FILL_SIGMA = 3.0


def _correlation_volume(reference, other, offsets):
    """[B, H, W, len(offsets)]: channel k is sum_c reference(i, j, c) * other(i, j + offsets[k], c),
    border columns of `other` replicated beyond the frame. One gather for all offsets (a small
    graph: the CVM's tracing time grew with one gather per candidate)."""
    indices = shifted_column_indices(tf.shape(other)[2], offsets)
    moved = tf.gather(other, indices, axis=2)  # [B, H, K, W, C]
    return tf.transpose(tf.reduce_sum(reference[:, :, tf.newaxis] * moved, axis=-1), [0, 1, 3, 2])


def _replicate_pad_to_multiple(x, multiple):
    """Pads [B, H, W, C] at the bottom and right by edge replication to a multiple."""
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    padded_h = (height + multiple - 1) // multiple * multiple
    padded_w = (width + multiple - 1) // multiple * multiple
    # Gathering with clamped indices replicates the last row / column any number of times,
    # which tf.pad's REFLECT/SYMMETRIC modes cannot do for frames smaller than the pad.
    x = tf.gather(x, tf.minimum(tf.range(padded_h), height - 1), axis=1)
    return tf.gather(x, tf.minimum(tf.range(padded_w), width - 1), axis=2)


def _upsample_nearest_x2(x):
    """Nearest-neighbour x2 upsampling. As depth_to_space of 4 copies, not tf.repeat: the LiteRT
    converter keeps the channel count through it, so a dynamic-size model converts."""
    return tf.nn.depth_to_space(tf.tile(x, [1, 1, 1, 4]), 2)


@keras.saving.register_keras_serializable(package="cspsr_tf")
class CrossViewMatching(keras.layers.Layer):
    """Predicts left/right disparities of an LR VIS-left / NIR-right pair and aligns the NIR.

    A U-shaped encoder-decoder over concat(vis_lr, nir_lr), after the cross-spectral
    disparity network the paper builds on (Zhi et al. 2018, itself in the DispNet / Monodepth
    family), with the correlation layer of DispNetC (Mayer et al. 2016): `depth` stride-2
    stages of two 3x3 conv (+ group norm with `normalization="group"`) + ELU, a decoder that
    upsamples, concatenates the encoder skip and the coarser disparity, and a disparity head at
    every decoder scale.

    Matching. A network that sees only the concatenated images must discover correspondence
    on its own, which takes far longer than a CPU training budget (measured: no progress in
    900 steps of supervised training). So the layer builds cost volumes, for each view:
    (a) the local NCC^2 of the two luminances (`cross_spectral_similarity`: invariant to the
    gain, offset and contrast reversal that change between VIS and NIR) at every candidate
    disparity 0, 1, ..., max_disparity, and (b) the correlation of learned, L2-normalised
    features (one small extractor per view: the spectra differ) at the half-resolution
    candidates 0, 2, 4, ... Both enter the encoder after its first stage; the soft-argmin of
    (a) (a softmax over the candidates with a learned temperature) is the base estimate
    every head corrects: d = max_disparity * sigmoid(logit(base / max_disparity) + head(.)).
    The heads start at zero correction, so even an untrained CVM follows the best local
    match, and training learns where to trust it (occlusions, flat regions) and refines it.

    Disparities are in LR pixels, non-negative and bounded by max_disparity. A registered pair
    (beam splitter, single-sensor RGB-NIR camera, EPFL / RANUS) must not be shifted at all,
    which the sigmoid cannot output: `geometry="aligned"` makes the layer return zero
    disparities and the NIR unchanged (its weights are kept, so one trained model serves both
    rigs), and a per-example flag (third input, 1 = stereo, 0 = registered) does the same for
    single examples of a mixed batch. Any input size works: the input is padded by edge
    replication to a multiple of 2**depth and the outputs are cropped back. The right NIR is
    moved into the left view with Eq. (1), NIR_l(i, j) = NIR_r(i, j - disp_l(i, j)).

    Args:
        base_channels: int, default 16; width of the first stage (doubles per stage) and of
            the matching features.
        depth: int, default 3; number of stride-2 stages.
        max_disparity: float, default 24.0; upper bound of the disparity in LR pixels.
        geometry: `stereo` (default; predict the disparity) or `aligned` (zero disparity).
        normalization: after each encoder/decoder convolution, `group` norm (default; 8
            groups, per example: the same in training and inference) or `none`. Batch norm
            was retired: its statistics of training patches biased the disparity on whole
            frames by +0.7 LR px (docs in the README, `benchmarks/cvm_matching.py`).

    Call arguments:
        inputs: a pair `(vis_lr, nir_lr)`, [B, h, w, 3] and [B, h, w, 1], or a triple
            `(vis_lr, nir_lr, stereo)` with `stereo` [B, 1]: the disparities of the examples
            whose flag is 0 are multiplied by 0.
        training: bool (no layer of the CVM behaves differently in training).

    Returns:
        A dict with `nir_l` [B, h, w, 1] (the warped NIR), `valid_l` [B, h, w, 1] (1 where the
        warp sampled inside the frame), `disp_l`, `disp_r` [B, h, w, 1], and with
        `return_pyramid` also `pyramid`: a list of [B, h / 2^l, w / 2^l, 2] (left, right)
        disparities from coarse to fine, in LR pixels, padded size.

    References:
        Wei et al., CSPSR, Sec. 4.2 and Eq. (1); Zhi et al., "Deep Material-aware
        Cross-spectral Stereo Matching", CVPR 2018; Mayer et al., "A Large Dataset to Train
        Convolutional Networks for Disparity, Optical Flow, and Scene Flow Estimation"
        (DispNetC), CVPR 2016.
    """

    def __init__(
        self,
        base_channels=16,
        depth=3,
        max_disparity=24.0,
        return_pyramid=False,
        geometry="stereo",
        normalization="group",
        **kwargs,
    ):
        # The images enter in float32 whatever the policy: the cost volumes (NCC from local
        # moments) and the warp need it; the convolutions cast their own inputs.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}. Received: geometry={geometry!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}. Received: normalization={normalization!r}"
            )
        self.normalization = normalization
        if depth < 1:
            raise ValueError(f"depth must be >= 1. Received: depth={depth}")
        if not max_disparity >= 2.0:
            raise ValueError(f"max_disparity must be >= 2. Received: max_disparity={max_disparity}")
        self.base_channels = base_channels
        self.depth = depth
        self.max_disparity = float(max_disparity)
        # Candidate disparities of the cost volume, in half-resolution pixels.
        self.num_candidates = int(math.ceil(self.max_disparity / 2.0)) + 1
        self.return_pyramid = return_pyramid
        self.geometry = geometry
        policy = self.dtype_policy

        def conv_bn_elu(filters, strides, name):
            conv = keras.layers.Conv2D(
                filters, 3, strides=strides, padding="same", use_bias=normalization == "none",
                name=f"{name}_conv", dtype=policy,
            )
            elu = keras.layers.Activation("elu", name=f"{name}_elu", dtype=policy)
            if normalization == "none":
                return [conv, elu]
            norm = keras.layers.GroupNormalization(
                groups=math.gcd(GROUPS, filters), name=f"{name}_gn", dtype=policy
            )
            return [conv, norm, elu]

        self.stem = conv_bn_elu(base_channels, 1, "stem")
        self.encoder = []
        for level in range(1, depth + 1):
            filters = base_channels * 2**level
            self.encoder.append(
                conv_bn_elu(filters, 2, f"enc{level}a") + conv_bn_elu(filters, 1, f"enc{level}b")
            )
        self.matching = {
            view: [
                keras.layers.Conv2D(base_channels, 3, padding="same", activation="elu",
                                    name=f"match_{view}1", dtype=policy),
                keras.layers.Conv2D(base_channels, 3, strides=2, padding="same", activation="elu",
                                    name=f"match_{view}2", dtype=policy),
                keras.layers.Conv2D(base_channels, 3, padding="same", name=f"match_{view}3", dtype=policy),
            ]
            for view in ("vis", "nir")
        }
        self.decoder = []
        self.heads = []
        for level in range(depth - 1, -1, -1):
            self.decoder.append(conv_bn_elu(base_channels * 2**level, 1, f"dec{level}"))
            self.heads.append(
                keras.layers.Conv2D(
                    2, 3, padding="same", bias_initializer="zeros",
                    kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3),
                    # The disparity is float32 under any policy: bfloat16 has 8 mantissa bits,
                    # too few for sub-pixel positions.
                    name=f"disp{level}", dtype="float32",
                )
            )

    @property
    def is_local(self):
        """Whether an output pixel depends on a bounded neighbourhood of the input only: never.

        Group norm normalises by statistics of the whole input, and the NCC^2 cost volume's
        variance floor is relative to the whole image's texture, so a crop of the input changes
        every output (tiled inference runs the CVM once on the whole frame)."""
        return False

    def build(self, input_shape):
        vis_shape, nir_shape = input_shape[0], input_shape[1]

        def build_stack(stack, channels_in):
            for layer in stack:
                if isinstance(layer, keras.layers.Conv2D):
                    layer.build((None, None, None, channels_in))
                    channels_in = layer.filters
                elif isinstance(layer, keras.layers.GroupNormalization):
                    layer.build((None, None, None, channels_in))
            return channels_in

        build_stack(self.matching["vis"], vis_shape[-1])
        build_stack(self.matching["nir"], nir_shape[-1])
        # Softmax temperature of the soft-argmin over the cost volume (log-parameterised).
        self.log_temperature = self.add_weight(
            name="log_temperature", shape=(), initializer=keras.initializers.Constant(math.log(50.0))
        )
        skip_channels = [build_stack(self.stem, vis_shape[-1] + nir_shape[-1])]
        for index, stage in enumerate(self.encoder):
            skip_channels.append(build_stack(stage, skip_channels[-1]))
            if index == 0:
                skip_channels[-1] += 4 * self.num_candidates  # the cost volumes
        incoming = skip_channels[-1]
        for step, (block, head) in enumerate(zip(self.decoder, self.heads, strict=True)):
            level = self.depth - 1 - step
            incoming = build_stack(block, incoming + skip_channels[level] + (2 if step else 0))
            head.build((None, None, None, incoming))

    def _cost_volumes(self, vis, nir):
        """Matching evidence at every candidate disparity, for both views.

        Returns (volumes, base): `volumes` [B, H/2, W/2, 4 N] for the encoder (learned-feature
        correlation and local NCC^2 of the luminances, left and right view, at the N
        half-resolution candidates 0, 2, 4, ... LR px) and `base` [B, H, W, 2], the soft-argmin
        (left, right) of the full-resolution NCC^2 volumes (candidates 0, 1, ..., max), in LR
        pixels.
        """
        def features(view, image):
            return tf.math.l2_normalize(self._run(self.matching[view], image, None), axis=-1)

        f_vis, f_nir = features("vis", vis), features("nir", nir)
        n = self.num_candidates
        left = [-d for d in range(n)]  # f_nir(j - d), the left view's candidates
        right = list(range(n))  # f_vis(j + d), the right view's candidates
        learned_l = _correlation_volume(f_vis, f_nir, left)
        learned_r = _correlation_volume(f_nir, f_vis, right)
        lum_vis, lum_nir = luminance(vis), tf.cast(nir, tf.float32)
        candidates = list(range(2 * (n - 1) + 1))  # 0 .. max_disparity (rounded up to even)
        # Aggregated over a neighbourhood, as local stereo methods do: one window's NCC is noisy.
        ncc_l, ncc_r = gaussian_blur_each(
            [ncc_squared_volume(lum_vis, lum_nir, [-d for d in candidates]),
             ncc_squared_volume(lum_nir, lum_vis, candidates)],
            COST_AGGREGATION_SIGMA,
        )
        temperature = tf.exp(tf.cast(self.log_temperature, tf.float32))
        values = tf.constant(candidates, tf.float32)

        def soft_argmin(volume):
            # Around the best candidate only: an average over all candidates would land
            # between the modes of an ambiguous (repetitive or flat) pixel.
            best = tf.expand_dims(tf.cast(tf.argmax(volume, axis=-1), tf.float32), -1)
            near = tf.abs(values - best) <= SOFT_ARGMIN_RADIUS
            logits = tf.where(near, temperature * volume, tf.fill(tf.shape(volume), -1e9))
            weights = tf.nn.softmax(logits, axis=-1)
            return tf.reduce_sum(weights * values, axis=-1, keepdims=True)

        # Where no candidate matches well (flat or occluded areas) the best one is noise: a
        # normalised convolution weighted by the peak NCC^2 fills those pixels from the
        # confident ones around them (left and right view in one blur).
        confidence = tf.square(tf.concat(
            [tf.reduce_max(volume, axis=-1, keepdims=True) for volume in (ncc_l, ncc_r)], axis=-1
        ))
        estimate = tf.concat([soft_argmin(ncc_l), soft_argmin(ncc_r)], axis=-1)
        weighted, total = gaussian_blur_each([confidence * estimate, confidence], FILL_SIGMA)
        base = tf.clip_by_value(tf.math.divide_no_nan(weighted, total), 0.0, self.max_disparity)

        def half(volume):  # every second candidate, averaged over 2x2 pixels
            return tf.nn.avg_pool2d(volume[..., : 2 * n - 1 : 2], 2, 2, "VALID")

        dtype = f_vis.dtype
        volumes = tf.concat(
            [learned_l, learned_r, tf.cast(half(ncc_l), dtype), tf.cast(half(ncc_r), dtype)], axis=-1
        )
        return volumes, base

    @staticmethod
    def _base_at_level(base, level):
        """The full-resolution base estimate at decoder level `level` (resolution / 2^level)."""
        if level == 0:
            return base
        return tf.nn.avg_pool2d(base, 2**level, 2**level, "VALID")

    @staticmethod
    def _run(stack, x, training):
        for layer in stack:
            x = layer(x)
        return x

    def call(self, inputs, training=None):
        vis_lr, nir_lr = inputs[0], inputs[1]
        stereo = inputs[2] if len(inputs) > 2 else None
        if self.geometry == "aligned":
            return self._registered_outputs(vis_lr, nir_lr)
        if stereo is not None and not self.return_pyramid and not several_replicas():
            # A batch of registered pairs only (common with registered datasets) skips the
            # whole matching network: its output would be multiplied by zero anyway.
            outputs = tf.cond(
                tf.reduce_any(tf.cast(stereo, tf.float32) > 0.5),
                lambda: self._matched_outputs(vis_lr, nir_lr, stereo, training),
                lambda: self._registered_outputs(vis_lr, nir_lr),
            )
        else:
            outputs = self._matched_outputs(vis_lr, nir_lr, stereo, training)
        if not self.trainable:
            # A frozen CVM (the SR stage) reads only the input images, so no gradient has
            # anywhere to go through it; without the stop, the gradient of its tf.cond is
            # still built (most of the training step's tracing: 13.6 -> 5.5 s, tiny preset).
            outputs = tf.nest.map_structure(tf.stop_gradient, outputs)
        return outputs

    def _matched_outputs(self, vis_lr, nir_lr, stereo, training):
        height, width = tf.shape(vis_lr)[1], tf.shape(vis_lr)[2]
        x = _replicate_pad_to_multiple(tf.concat([vis_lr, nir_lr], axis=-1), 2**self.depth)
        volumes, base = self._cost_volumes(x[..., :3], x[..., 3:])
        skips = [self._run(self.stem, x, training)]
        for index, stage in enumerate(self.encoder):
            skips.append(self._run(stage, skips[-1], training))
            if index == 0:
                skips[-1] = tf.concat([skips[-1], tf.cast(volumes, skips[-1].dtype)], -1)
        y = skips[-1]
        disparity = None
        pyramid = []
        for step, (block, head) in enumerate(zip(self.decoder, self.heads, strict=True)):
            level = self.depth - 1 - step
            y = _upsample_nearest_x2(y)
            parts = [y, skips[level]]
            if disparity is not None:
                # Coarser estimate, upsampled, as an extra input (values stay in LR pixels).
                parts.append(tf.cast(_upsample_nearest_x2(disparity), y.dtype))
            y = self._run(block, tf.concat(parts, axis=-1), training)
            # Bounded, and centred on the cost volume's estimate at this level.
            p = tf.clip_by_value(self._base_at_level(base, level) / self.max_disparity, 1e-3, 1.0 - 1e-3)
            logits = tf.math.log(p / (1.0 - p)) + head(y)
            disparity = self.max_disparity * tf.sigmoid(logits)
            if stereo is not None:
                disparity = disparity * tf.reshape(tf.cast(stereo, tf.float32), [-1, 1, 1, 1])
            pyramid.append(disparity)
        disparity = disparity[:, :height, :width, :]
        disp_l, disp_r = disparity[..., :1], disparity[..., 1:]
        nir_l, valid_l = warp_by_disparity(nir_lr, disp_l, "right_to_left")
        outputs = {"nir_l": nir_l, "valid_l": valid_l, "disp_l": disp_l, "disp_r": disp_r}
        if self.return_pyramid:
            outputs["pyramid"] = pyramid
        return outputs

    def _registered_outputs(self, vis_lr, nir_lr):
        zeros = tf.zeros_like(vis_lr[..., :1])
        outputs = {"nir_l": tf.identity(nir_lr), "valid_l": tf.ones_like(zeros), "disp_l": zeros,
                   "disp_r": tf.zeros_like(zeros)}
        if self.return_pyramid:
            outputs["pyramid"] = []
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "geometry": self.geometry,
                "base_channels": self.base_channels,
                "depth": self.depth,
                "max_disparity": self.max_disparity,
                "return_pyramid": self.return_pyramid,
                "normalization": self.normalization,
            }
        )
        return config
