"""Tiled inference: super-resolves frames too large for one forward pass.

The LR pair is cut into overlapping 2-D tiles, every tile is run through the model with some
extra input around it (the *context*), the context is thrown away, and the tiles' outputs
are blended in their overlaps with linear (feathered) weights. Every model output is stitched
at its own resolution: `vis_sr` / `nir_sr` at HR, `disp_l` / `disp_r` / `nir_l` at LR.

Geometry of one tile (all sizes in LR pixels; the horizontal margin and the alignment only
where the CVM runs tile by tile):

* the *core* is a `tile` x `tile` window of the frame; neighbouring cores overlap by at least
  `overlap` pixels, and inside that band the two outputs are cross-faded linearly;
* the model sees the core widened by `context` pixels on every side, and horizontally by
  another `ceil(max_disparity)` pixels on both sides. The stereo warp of the CVM reads
  NIR_r(i, j - disp_l(i, j)) (paper Eq. 1): a left-view pixel needs NIR columns up to
  `max_disparity` to its left, and the right-view disparity `disp_r` looks the same distance
  to the right. With this horizontal margin no pixel of a core ever warps from a NIR column
  the tile lacks, so 2-D tiles are as safe for the stereo geometry as full-width strips;
* the widened window is clipped to the frame (at the frame border there is nothing more to
  see, exactly as in whole-frame inference), and its top-left corner is moved outwards to a
  multiple of the CVM's stride `2**cvm_depth`, so the encoder's stride-2 sampling grid and its
  bottom/right padding are the same as for the whole frame;
* every window of an axis has the same length (`TilePlan.window_size`): a window that the
  frame border clips is moved inwards instead, so it sees more of the frame on its inner side
  (more real context never hurts). Every forward pass of a frame then has one input shape
  (one for the whole-frame CVM pass too), so TensorFlow traces the XLA-compiled parts once,
  not once per edge-tile shape.

Context (`tile_context`): the receptive field of the network after the CVM
(`receptive_field`, counted from its kernel sizes: 50 LR px for the paper preset's 15 DMF
modules, 11 for `tiny`), plus, where the CVM runs tile by tile, the reach of its cost volume
(`MATCHING_CONTEXT`: NCC window, aggregation and fill, 20 LR px). With the CVM on the whole
frame (the default) and the context at least the receptive field, a core's pixels see exactly
what they see in the whole frame, except for the CSFT's global pooling (below).

Tile size: below `minimum_tile` (at least `MIN_TILE`, the context and twice the overlap) the
context dwarfs the core and tiled inference costs many times a whole-frame pass; `predict`
refuses such tiles (this module's functions take any size).

Cross-view matching on the whole frame (the default: the CVM is not local, its group norm and
its NCC^2 floor use statistics of the whole input, so a tile's differ from the frame's): the
CVM runs once on the whole LR pair, and the tiles go through the rest of the model
(`after_matching_model`, the same layers) with crops of its outputs (warped NIR, disparities).
The disparities are then exactly the whole-frame ones, and the tiles need neither the disparity
margin nor the stride alignment above, but memory grows with the frame (`frame_matching_bytes`:
about 1 KB per LR pixel). Frames above `FRAME_MATCHING_MAX_PIXELS` LR pixels run the CVM tile by
tile instead (memory bounded by the tile; each tile's disparities use that tile's statistics).

What tiling cannot reproduce exactly: (a) convolutions near a tile's cut see the cut, not
the image (the context keeps that out of the core: the derived context is the receptive
field, so with the CVM on the whole frame nothing of the cut reaches a core); (b) the CSFT
unit's channel weights come from a *global* average pool (paper Eq. 2), which a tile computes
over itself rather than over the frame; (c) where the CVM runs tile by tile (frames above
`FRAME_MATCHING_MAX_PIXELS`, an exported SavedModel, which cannot be split after its CVM),
its group norm and NCC floor use the tile's statistics. (b) is small for natural images
(`tests/test_tiling.py` checks < 0.001 dB PSNR difference against whole-frame inference at
the `tiny` and at the `paper` preset's depth, and that with CSFT's pool cut off the tiles
match the whole frame to float rounding), but tiled numbers are not bit-identical to
whole-frame numbers.

Memory: tiles are processed one row of tiles at a time (`iter_tiled_rows`); per output only
a band of one tile row is accumulated, the blending weights are normalised 1-D profiles (no
weight image), and integer inputs are converted to float one tile at a time. `predict`
streams those bands into the output file; `tiled_predict` stitches them into whole arrays of
just the outputs asked for.
"""

import math
import re

import numpy as np
import tensorflow as tf
from absl import logging

from cspsr_tf.model.run_options import check_nir_side
from cspsr_tf.ops.cross_spectral_similarity import gaussian_kernel

DEFAULT_TILE = 128
DEFAULT_OVERLAP = 8
# The fixed context of earlier versions, for callers that pass one explicitly; `context=None`
# (the default of the functions here) derives it from the model (`tile_context`).
DEFAULT_CONTEXT = 24
# Smallest tile `predict` accepts whatever the model (`minimum_tile`): below it the context
# and the per-call overhead dominate.
MIN_TILE = 32


def _matching_context():
    """The reach of the CVM's cost volume (LR px): its NCC window, its aggregation and its
    confidence-weighted fill are Gaussian blurs in sequence (5 + 6 + 9 = 20 px)."""
    from cspsr_tf.model.layers import cvm
    from cspsr_tf.ops import cross_spectral_similarity as css

    return sum(gaussian_kernel(sigma)[1] for sigma in (
        css.NCC_WINDOW_SIGMA, cvm.COST_AGGREGATION_SIGMA, cvm.FILL_SIGMA))


MATCHING_CONTEXT = _matching_context()


def receptive_field(config):
    """LR pixels on each side of an output pixel that the network after the CVM reads.

    Counted from the kernel sizes: a k x k convolution reads (k - 1) / 2 pixels on each side,
    layers in sequence add their reach, parallel paths take the larger one; the VIS and the
    NIR branch are followed apart (reach r_vis, r_nir from the LR inputs):

    * NIR-guided filter of radius r (optional, VIS branch input): box means, then box means
      of the fitted coefficients: 2r;
    * shallow features (per branch): conv3x3, conv3x3, residual block (two conv3x3): +4;
    * each DMF module (dual branch): the filtered NIR F'_nir reads, through the dynamic
      convolution, its per-pixel kernels (a conv3x3 over both branches: max(r_vis, r_nir) + 1)
      and the NIR features under its k x k taps (r_nir + k // 2); a plain conv3x3 "w/o DyConv":
      r_nir + 1. CSFT's gate w_s2 is a conv3x3 over F'_nir and F_vis: +1 (its 1x1 fusion "w/o
      CSFT": +0). Then each branch's conv3x3: +1 (the residual adds nothing wider). With
      `fusion="zero_conv"` the VIS path also runs a residual block beside the module: the
      wider of that (+2) and the module's VIS output (its 1x1 zero conv reads no neighbour);
    * each residual block of a single-branch body: +2;
    * the reconstruction conv3x3: +1 (the pixel shuffle reads no neighbour); the bicubic skip
      reads 2 LR pixels of its source (the LR image, or the guided filter's output).

    The paper preset (T = 15, k = 3): 4 + 15 * 3 + 1 = 50; `small` (T = 4): 17; `tiny`
    (T = 2): 11. `tests/test_tiling.py` measures the reach of built models (the gradient of
    one output column is non-zero exactly that far) and checks it against this. CSFT's
    global average pool reads the whole input and is not counted (see the module docstring),
    nor is the CVM (`tile_context`).

    Args:
        config: a `CSPSRConfig`, or any object with its fields `architecture`, `num_modules`,
            `kernel_size`, `use_dynamic_conv`, `use_csft`, `nir_guided_filter_radius`.

    Returns:
        int, the radius in LR pixels (the widest of the outputs; `vis_sr`'s in practice).
    """
    guided = 2 * int(getattr(config, "nir_guided_filter_radius", 0) or 0)
    modules = int(config.num_modules)
    if config.architecture == "single":
        return guided + 4 + 2 * modules + 1
    r_vis, r_nir = guided + 4, 4
    zero_conv = getattr(config, "fusion", "dmf") == "zero_conv"
    for _ in range(modules):
        if config.use_dynamic_conv:
            filtered = max(max(r_vis, r_nir) + 1, r_nir + int(config.kernel_size) // 2)
        else:
            filtered = r_nir + 1
        fused = max(filtered, r_vis) + (1 if config.use_csft else 0)
        # zero_conv: a VIS residual block (two 3x3 convs) beside the DMF; its 1x1 conv reads no neighbour.
        beside = r_vis + 2 if zero_conv else 0
        r_vis, r_nir = max(fused + 1, beside), filtered + 1
    return max(r_vis, r_nir) + 1


def _config_from_layers(model):
    """The fields `receptive_field` reads, from the layers of a Keras CSPSR model that came
    without its config (a `.keras` file without `.config.json`); None if not recognisable."""
    import types

    layers = {layer.name: layer for layer in getattr(model, "layers", [])}
    radius = max((int(getattr(layer, "radius", 0)) for name, layer in layers.items()
                  if name.startswith("nir_guided_filter")), default=0)
    dmf = [name for name in layers if re.fullmatch(r"dmf\d+", name)]
    if dmf:
        first = layers["dmf1"] if "dmf1" in layers else layers[dmf[0]]
        return types.SimpleNamespace(
            architecture="dual", num_modules=len(dmf), kernel_size=first.kernel_size,
            use_dynamic_conv=first.use_dynamic_conv, use_csft=first.use_csft,
            nir_guided_filter_radius=radius,
            fusion="zero_conv" if "nir_zero_conv1" in layers else "dmf",
        )
    blocks = [name for name in layers if re.fullmatch(r"vis_block\d+", name)]
    if blocks or "vis_recon_conv" in layers:
        return types.SimpleNamespace(
            architecture="single", num_modules=len(blocks), kernel_size=3,
            use_dynamic_conv=False, use_csft=False, nir_guided_filter_radius=radius,
        )
    return None


def tile_context(model, config=None, frame_matching=False):
    """The context (LR px on each side of a core) that tiles of `model` need.

    `receptive_field` of the config (read from the model's layers when `config` is None),
    plus `MATCHING_CONTEXT` where a stereo CVM runs tile by tile (`frame_matching` False).
    A model whose structure is unknown (no config, not a Keras CSPSR model) gets
    `DEFAULT_CONTEXT`, with a warning.
    """
    source = config if config is not None else _config_from_layers(model)
    if source is None:
        logging.warning("Cannot tell the receptive field of %s; tiles get a context of %d px.",
                        getattr(model, "name", "the model"), DEFAULT_CONTEXT)
        return DEFAULT_CONTEXT
    context = receptive_field(source)
    if config is not None:
        stereo = config.use_cvm and config.geometry != "aligned"
    else:
        stereo = stereo_cvm(model) is not None
    if stereo and not frame_matching:
        context += MATCHING_CONTEXT
    return context


def minimum_tile(context, overlap=0, align=1):
    """The smallest tile worth running: `MIN_TILE`, at least the context (a tile's input is
    then at most 9 times its core) and more than twice the overlap (plus the alignment)."""
    return max(MIN_TILE, int(context), 2 * int(overlap) + int(align))


def model_scale(model, config=None):
    """The SR factor of a CSPSR model: `config.scale`, else read from its pixel shuffle."""
    if config is not None:
        return int(config.scale)
    try:
        return int(model.get_layer("vis_pixel_shuffle").scale)
    except ValueError:
        raise ValueError(
            f"Cannot tell the scale of model {model.name!r}: pass its config."
        ) from None


def model_geometry(model):
    """(max_disparity, stride) of a model's CVM, or (0.0, 1) for a model without one."""
    try:
        cvm = model.get_layer("cvm")
    except ValueError:
        return 0.0, 1
    return float(cvm.max_disparity), 2 ** int(cvm.depth)


def _pair(value, name):
    if isinstance(value, int | np.integer):
        value = (int(value), int(value))
    try:
        first, second = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints. Received: {value!r}") from None
    return first, second


def _as_batch(image, channels, name):
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[np.newaxis]
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[-1] != channels:
        raise ValueError(
            f"{name} must be [h, w, {channels}] or [1, h, w, {channels}]. "
            f"Received: shape={image.shape}"
        )
    return image


def window_starts(length, tile, overlap):
    """Start offsets of windows of size `tile` covering [0, length) with >= `overlap` shared.

    The last window is aligned with the end of the axis, so it may share more than `overlap`
    pixels with the one before it. A `length` not above `tile` gives one window.
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def feather_weights(length, band, ramp_start, ramp_end):
    """1-D blending weights of a tile core: linear ramps over `band` pixels at cut sides.

    A side with a neighbouring tile rises from (0.5 / band) to 1 over `band` pixels; a side at
    the frame border keeps weight 1. Two tiles overlapping by exactly `band` pixels then have
    weights that add up to 1; any other overlap is normalised by the accumulated weight.
    """
    weights = np.ones(length, np.float32)
    band = min(int(band), length)
    if band <= 0:
        return weights
    ramp = (np.arange(band, dtype=np.float32) + 0.5) / band
    if ramp_start:
        weights[:band] = np.minimum(weights[:band], ramp)
    if ramp_end:
        weights[length - band :] = np.minimum(weights[length - band :], ramp[::-1])
    return weights


def _run_model(model, vis, nir, keys=None, frame_stats=None):
    if isinstance(nir, list) or frame_stats is not None:
        # A list input: after the CVM [vis_lr, nir_l, disp_l, disp_r], and with exposure
        # conditioning (`with_statistics_input`) the frame statistics last.
        images = [vis, *(nir if isinstance(nir, list) else [nir])]
        if frame_stats is not None:
            images.append(np.repeat(frame_stats, len(vis), axis=0))
        outputs = model([tf.constant(x) for x in images], training=False)
    else:
        outputs = model({"vis_lr": tf.constant(vis), "nir_lr": tf.constant(nir)}, training=False)
    return {
        key: np.asarray(value, dtype=np.float32)
        for key, value in outputs.items()
        if keys is None or key in keys
    }


def stereo_cvm(model):
    """The model's CVM layer if it matches a stereo pair, else None (no CVM, or `aligned`)."""
    try:
        cvm = model.get_layer("cvm")
    except ValueError:
        return None
    # An exported SavedModel's stand-in names only the margins; it is taken for stereo.
    return None if getattr(cvm, "geometry", "stereo") == "aligned" else cvm


def splittable(model):
    """Whether `model` is a Keras model, whose CVM can run apart from the rest (an exported
    SavedModel is one graph)."""
    import keras

    return isinstance(model, keras.Model)


# Above this many LR pixels (about 4 GiB for the whole-frame CVM pass), tiles match alone.
FRAME_MATCHING_MAX_PIXELS = 4_000_000


def default_frame_matching(model, height=None, width=None):
    """Whether tiled inference runs the model's CVM on the whole frame by default: for a
    stereo CVM that is not local, of a Keras model (`splittable`), on frames of at most
    `FRAME_MATCHING_MAX_PIXELS` LR pixels (any size when height or width is None)."""
    cvm = stereo_cvm(model)
    if cvm is None or getattr(cvm, "is_local", False) or not splittable(model):
        return False
    return height is None or width is None or height * width <= FRAME_MATCHING_MAX_PIXELS


# The CVM outputs the rest of the model reads, in the order `after_matching_model` takes them.
MATCHED_KEYS = ("nir_l", "disp_l", "disp_r")


def after_matching_model(model):
    """The part of `model` after its CVM, sharing its layers and weights.

    Inputs (a list): vis_lr [B, h, w, 3] and the CVM's outputs nir_l, disp_l, disp_r
    [B, h, w, 1]; outputs: the same dict as `model`. Built once per model (cached on it).
    """
    cached = getattr(model, "_cspsr_after_matching", None)
    if cached is not None:
        return cached
    import keras

    # The output layers named like the CVM outputs read exactly those tensors.
    matched = [model.get_layer(key).input for key in MATCHED_KEYS]
    runner = keras.Model([model.get_layer("vis_lr").output, *matched], model.output,
                         name=f"{model.name}_after_matching")
    model._cspsr_after_matching = runner
    return runner


def frame_statistics_layer(model):
    """The `frame_statistics` layer of a model with exposure conditioning, else None."""
    try:
        return model.get_layer("frame_statistics")
    except (AttributeError, ValueError):
        return None


def with_statistics_input(model, after_matching):
    """`model` (or with `after_matching` its part after the CVM) taking the exposure
    conditioning's frame statistics as a last input instead of computing them: tiles must be
    steered by the whole frame's statistics, not their own (`layers/exposure.py`).

    Inputs (a list): vis_lr, then nir_lr (or nir_l, disp_l, disp_r), then frame_stats [B, K].
    Cached on `model`.
    """
    cache = model.__dict__.setdefault("_cspsr_with_statistics", {})
    if after_matching not in cache:
        import keras

        if after_matching:  # the output layers named like the CVM outputs read them
            nir = [model.get_layer(key).input for key in MATCHED_KEYS]
        else:
            nir = [model.get_layer("nir_lr").output]
        inputs = [model.get_layer("vis_lr").output, *nir, model.get_layer("frame_statistics").output]
        cache[after_matching] = keras.Model(inputs, model.output, name=f"{model.name}_with_statistics")
    return cache[after_matching]


def _whole_frame(frame, flip=False):
    """A whole [h, w, C] frame as a float32 batch of one (vertically flipped with `flip`)."""
    return tf.constant(_tile_input(frame, slice(None), slice(None), flip)[np.newaxis])


def whole_frame_statistics(layer, vis, nir):
    """The statistics `layer` computes on the whole [h, w, C] frame, float32 [1, K]."""
    inputs = (_whole_frame(vis), _whole_frame(nir)) if layer.use_nir else _whole_frame(vis)
    return np.asarray(layer(inputs), np.float32)


def match_frame(cvm, vis, nir, flip=False):
    """The CVM on a whole [h, w, C] frame (vertically flipped with `flip`, the result flipped
    back): float32 [h, w, 3] of `MATCHED_KEYS`, in the frame's coordinates."""
    outputs = cvm((_whole_frame(vis, flip), _whole_frame(nir, flip)), training=False)
    matched = np.concatenate([np.asarray(outputs[key], np.float32)[0] for key in MATCHED_KEYS], -1)
    return matched[::-1] if flip else matched


def tile_geometry(model, frame_matching):
    """(max_disparity, align) the tiles of `model` need: none of either when its CVM runs on
    the whole frame, else its CVM's (`model_geometry`)."""
    return (0.0, 1) if frame_matching else model_geometry(model)


def frame_matching_bytes(model, height, width, self_ensemble=False):
    """Estimated peak bytes of the whole-frame CVM pass of `iter_tiled_rows` and its kept maps.

    The CVM's NCC cost volumes have max_disparity + 1 full-resolution candidates; measured
    peak resident growth of one pass: 975-1010 bytes per LR pixel for the `small` preset (13
    candidates, 256^2 and 512^2 frames), 1255 for `paper` (25). This fit lies a little above.
    The maps kept for the tiles are 3 float32 per pixel (per pass with self-ensemble).
    """
    cvm = stereo_cvm(model)
    if cvm is None:
        return 0
    candidates = 2 * int(math.ceil(cvm.max_disparity / 2.0)) + 1
    pixels = int(height) * int(width)
    return pixels * (750 + 25 * candidates) + pixels * 12 * (2 if self_ensemble else 1)


def predict_whole(model, vis_lr, nir_lr):
    """One untiled forward pass; returns the model's outputs as float32 numpy arrays."""
    vis = _as_batch(vis_lr, 3, "vis_lr")
    nir = _as_batch(nir_lr, 1, "nir_lr")
    if vis.shape[1:3] != nir.shape[1:3]:
        raise ValueError(
            f"vis_lr and nir_lr differ in size. Received: {vis.shape} and {nir.shape}"
        )
    return _run_model(model, vis, nir)


def _as_frame(image, channels, name):
    """[h, w, C] view of a frame (no copy): float in [0, 1], or uint8 / uint16."""
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] != channels:
        raise ValueError(
            f"{name} must be [h, w, {channels}] or [1, h, w, {channels}]. "
            f"Received: shape={image.shape}"
        )
    if image.dtype not in (np.uint8, np.uint16) and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{name} must be float, uint8 or uint16. Received: {image.dtype}")
    return image


def _tile_input(frame, rows, cols, flip):
    """A float32 [h, w, C] tile in [0, 1] of a float or integer frame."""
    tile = frame[rows, cols]
    if flip:
        tile = tile[::-1]
    tile = tile.astype(np.float32)
    if frame.dtype.kind == "u":
        tile /= np.iinfo(frame.dtype).max
    return tile


class TilePlan:
    """Where the tiles of a frame lie: core and input windows, one row of tiles at a time.

    Every input window of an axis has the same length (`window_size`), so every forward pass
    of a frame, the vertically flipped ones included, has the same input shape.

    Attributes:
        height, width: LR frame size.
        tile_h, tile_w: core size (clipped to the frame).
        overlap: LR pixels cross-faded between neighbouring cores.
        in_h, in_w: the input size of every tile.
        rows: [(y0, y1, cy0, cy1, fy0, fy1)]: core rows, input rows of the plain pass and
            input rows of the vertically flipped pass (self-ensemble), whose *bottom* is
            aligned so that it sees the grid the whole flipped frame would.
        cols: [(x0, x1, cx0, cx1)]: core and input columns (the same for every row).
    """

    def __init__(self, height, width, tile, overlap, context, max_disparity, align):
        tile_h, tile_w = _pair(tile, "tile")
        if min(tile_h, tile_w) < 1:
            raise ValueError(f"tile must be positive. Received: tile={tile!r}")
        if overlap < 0 or context < 0:
            raise ValueError(
                f"overlap and context must be >= 0. Received: overlap={overlap}, "
                f"context={context}"
            )
        self.height, self.width = int(height), int(width)
        self.tile_h, self.tile_w = min(tile_h, self.height), min(tile_w, self.width)
        for size, length, name in ((self.tile_h, height, "height"), (self.tile_w, width, "width")):
            if size < length and overlap >= size:
                raise ValueError(
                    f"overlap must be smaller than the tile. Received: overlap={overlap}, "
                    f"tile {name}={size}"
                )
        self.overlap = int(overlap)
        self.context_v = int(context)
        self.context_h = int(context) + int(math.ceil(max_disparity))
        self.align = int(align)
        self.in_h = self.window_size(self.height, self.tile_h, self.context_v, self.align)
        self.in_w = self.window_size(self.width, self.tile_w, self.context_h, self.align)
        self.rows = []
        for y0 in window_starts(self.height, self.tile_h, overlap):
            y1 = y0 + self.tile_h
            cy0 = self._window_start(y0, self.height, self.in_h, self.context_v)
            # The flipped pass: the same rule in flipped coordinates, mapped back.
            flipped = self._window_start(self.height - y1, self.height, self.in_h,
                                         self.context_v)
            fy1 = self.height - flipped
            self.rows.append((y0, y1, cy0, cy0 + self.in_h, fy1 - self.in_h, fy1))
        self.cols = []
        for x0 in window_starts(self.width, self.tile_w, overlap):
            cx0 = self._window_start(x0, self.width, self.in_w, self.context_h)
            self.cols.append((x0, x0 + self.tile_w, cx0, cx0 + self.in_w))

    @staticmethod
    def window_size(length, tile, context, align):
        """The input length of every window of an axis: the core, its context on both sides
        and up to `align - 1` for the alignment of its start, or the whole axis if shorter.

        `length - size` is a multiple of `align`, so a window moved inwards to end at the
        frame's end still starts on the alignment grid.
        """
        wanted = tile + 2 * context + align - 1
        if wanted >= length:
            return length
        return length - (length - wanted) // align * align

    def _window_start(self, start, length, size, context):
        """First input index of the window of the core at `start`: `context` before it,
        rounded down to the alignment grid, moved inwards where the window would pass the
        frame's end (it then ends there, as the whole frame does)."""
        return min(max(0, start - context) // self.align * self.align, length - size)

    @property
    def num_tiles(self):
        return len(self.rows) * len(self.cols)

    def input_shapes(self, self_ensemble=False):
        """[(input height, input width)] of every forward pass, in order."""
        shapes = []
        for _, _, cy0, cy1, fy0, fy1 in self.rows:
            for _, _, cx0, cx1 in self.cols:
                shapes.append((cy1 - cy0, cx1 - cx0))
                if self_ensemble:
                    shapes.append((fy1 - fy0, cx1 - cx0))
        return shapes

    def normalised_weights(self, factor):
        """Per-row and per-column feather weights at `factor`, divided by their sums.

        The 2-D weight of a tile is the outer product of a row and a column profile, and
        every row of tiles has the same columns, so the summed weights of the frame are the
        outer product of the summed profiles: normalising each 1-D profile makes the
        blended tiles add up to a weighted mean with no whole-frame weight image.
        """

        def profiles(windows, length, band):
            raw, total = [], np.zeros(length * factor, np.float64)
            for start, stop in windows:
                weights = feather_weights(
                    (stop - start) * factor, band, start > 0, stop < length
                ).astype(np.float64)
                total[start * factor : stop * factor] += weights
                raw.append(weights)
            return [
                (w / total[a * factor : b * factor]).astype(np.float32)
                for w, (a, b) in zip(raw, windows, strict=True)
            ]

        band = self.overlap * factor
        return (
            profiles([(r[0], r[1]) for r in self.rows], self.height, band),
            profiles([(c[0], c[1]) for c in self.cols], self.width, band),
        )


def iter_tiled_rows(
    model,
    vis_lr,
    nir_lr,
    scale,
    *,
    keys=None,
    tile=DEFAULT_TILE,
    overlap=DEFAULT_OVERLAP,
    context=None,
    max_disparity=None,
    align=None,
    batch=1,
    self_ensemble=False,
    frame_matching=None,
    stats=None,
    config=None,
):
    """Tiled inference that hands over the output one finished band of rows at a time.

    Memory is bounded by one row of tiles: for each output only a float32 band of
    `tile` LR rows (times the output's factor) is held, and the input frames are converted
    to float one tile at a time, so they may stay uint8 / uint16.

    Args:
        model, scale, tile, overlap, context, max_disparity, align, batch, config: as for
            `tiled_predict`.
        vis_lr: [h, w, 3] or [1, h, w, 3]: float in [0, 1], or uint8 / uint16 (divided by
            the dtype's maximum tile by tile).
        nir_lr: [h, w, 1] or [1, h, w, 1], likewise.
        keys: model outputs to stitch (default: all); the others are dropped at once.
        self_ensemble: also run every tile vertically flipped and average the two (the
            flipped tile is aligned like the whole flipped frame, see `TilePlan`).
        frame_matching: run the CVM once on the whole frame and the rest of the model on
            tiles (default: `default_frame_matching`, True for a group-norm CVM; see the
            module docstring).
        stats: optional dict, filled with "tiles", "forward_passes", "model_seconds"
            (wall time inside the model calls, the whole-frame CVM included) and
            "frame_matching", "context" and "input_shape" (the one input size of every
            tile).

    Yields:
        (lr_start, lr_stop, {key: float32 [(lr_stop - lr_start) * factor, w * factor, C]}):
        consecutive bands covering the frame top to bottom, each final.
    """
    vis = _as_frame(vis_lr, 3, "vis_lr")
    nir = _as_frame(nir_lr, 1, "nir_lr")
    if vis.shape[:2] != nir.shape[:2]:
        raise ValueError(
            f"vis_lr and nir_lr differ in size. Received: {vis.shape} and {nir.shape}"
        )
    if batch < 1:
        raise ValueError(f"batch must be >= 1. Received: batch={batch}")
    height, width = vis.shape[:2]
    cvm = stereo_cvm(model)
    if frame_matching is None:
        frame_matching = default_frame_matching(model, height, width)
    frame_matching = bool(frame_matching)
    if frame_matching and cvm is None:
        raise ValueError(f"frame_matching needs a model with a stereo CVM; {model.name!r} has none.")
    if not splittable(model) and getattr(getattr(model, "config", None), "exposure_conditioning", False):
        raise ValueError(f"{model.name!r} is an exported model with exposure conditioning: its tiles "
                         "would each read their own exposure. Tile with its .keras file, or run "
                         "whole frames.")
    if frame_matching and not splittable(model):
        raise ValueError(f"frame_matching needs a Keras model; {model.name!r} is one graph "
                         "(an exported SavedModel): its CVM runs tile by tile.")
    if context is None:
        context = tile_context(model, config, frame_matching)
    model_disparity, model_stride = tile_geometry(model, frame_matching)
    plan = TilePlan(
        height, width, tile, overlap, context,
        model_disparity if max_disparity is None else float(max_disparity),
        model_stride if align is None else int(align),
    )
    logging.info(
        "Tiled inference of a %dx%d LR frame: %d tiles of %dx%d, overlap %d, context %d "
        "(+%d horizontally for disparity), alignment %d%s%s.",
        height, width, plan.num_tiles, plan.tile_h, plan.tile_w, overlap, plan.context_v,
        plan.context_h - plan.context_v, plan.align, ", self-ensemble" if self_ensemble else "",
        ", CVM on the whole frame" if frame_matching else "",
    )
    stats = {} if stats is None else stats
    stats.update(tiles=plan.num_tiles, forward_passes=0, model_seconds=0.0,
                 frame_matching=frame_matching, context=plan.context_v,
                 input_shape=(plan.in_h, plan.in_w))
    run = _TiledRun(model, cvm if frame_matching else None, plan, vis, nir, scale, keys,
                    self_ensemble, batch, stats)
    for row_index in range(len(plan.rows)):
        run.run_row(row_index)
        yield run.hand_over(row_index)


class _TiledRun:
    """The state of one `iter_tiled_rows` call: the plan, the (matched) inputs and, per
    output, a float32 band of one row of tiles into which the tiles' cores are blended."""

    def __init__(self, model, frame_cvm, plan, vis, nir, scale, keys, self_ensemble, batch,
                 stats):
        import time

        self.plan, self.vis, self.nir, self.scale = plan, vis, nir, scale
        self.keys = None if keys is None else set(keys)
        self.stats = stats
        self.passes = (False, True) if self_ensemble else (False,)
        # Every row has the same passes; a short last batch is filled up to this size with
        # repeats of its last tile, so that the batch dimension never changes either.
        self.batch = min(batch, len(plan.cols) * len(self.passes))
        self.share = 1.0 / len(self.passes)
        self.bands, self.factors, self.weights = {}, {}, {}
        self.runner, self.matched, self.frame_stats = model, None, None
        started = time.perf_counter()
        if frame_cvm is not None:
            # The CVM runs once on the whole frame; tiles get crops of its matched maps.
            self.runner = after_matching_model(model)
            self.matched = {flip: match_frame(frame_cvm, vis, nir, flip) for flip in self.passes}
        statistics = frame_statistics_layer(model)
        if statistics is not None and splittable(model):
            # Exposure conditioning reads the whole frame (the same for its vertical flip).
            self.runner = with_statistics_input(model, after_matching=frame_cvm is not None)
            self.frame_stats = whole_frame_statistics(statistics, vis, nir)
        stats["model_seconds"] += time.perf_counter() - started

    def _jobs(self, row_index):
        """The forward passes of a row of tiles, grouped by input size (one batch each)."""
        _, _, cy0, cy1, fy0, fy1 = self.plan.rows[row_index]
        jobs = {}
        for col_index, (_, _, cx0, cx1) in enumerate(self.plan.cols):
            for flip in self.passes:
                top, bottom = (fy0, fy1) if flip else (cy0, cy1)
                jobs.setdefault((bottom - top, cx1 - cx0), []).append((col_index, flip, top))
        return jobs

    def _inputs(self, chunk, in_h):
        """The stacked VIS tiles and the NIR input (nir_lr, or crops of the matched maps)."""
        def columns(c):
            return slice(self.plan.cols[c][2], self.plan.cols[c][3])

        vis_tiles = np.stack([
            _tile_input(self.vis, slice(top, top + in_h), columns(c), flip)
            for c, flip, top in chunk
        ])
        sources = [self.nir if self.matched is None else self.matched[flip] for _, flip, _ in chunk]
        nir_tiles = np.stack([
            _tile_input(frame, slice(top, top + in_h), columns(c), flip)
            for frame, (c, flip, top) in zip(sources, chunk, strict=True)
        ])
        if self.matched is not None:
            nir_tiles = [nir_tiles[..., i : i + 1] for i in range(len(MATCHED_KEYS))]
        return vis_tiles, nir_tiles

    def run_row(self, row_index):
        import time

        for (in_h, in_w), group in self._jobs(row_index).items():
            for first in range(0, len(group), self.batch):
                chunk = group[first : first + self.batch]
                filled = chunk + [chunk[-1]] * (self.batch - len(chunk))
                vis_tiles, nir_inputs = self._inputs(filled, in_h)
                started = time.perf_counter()
                statistics = {} if self.frame_stats is None else {"frame_stats": self.frame_stats}
                outputs = _run_model(self.runner, vis_tiles, nir_inputs, self.keys, **statistics)
                self.stats["model_seconds"] += time.perf_counter() - started
                self.stats["forward_passes"] += len(chunk)
                for key, value in outputs.items():
                    self._blend(key, value, chunk, row_index, in_h, in_w)

    def _blend(self, key, value, chunk, row_index, in_h, in_w):
        """Adds the weighted cores of a batch of tiles' `key` output to its band."""
        factor = value.shape[1] // in_h
        if value.shape[1] != in_h * factor or value.shape[2] != in_w * factor:
            raise ValueError(
                f"Output {key!r} of shape {value.shape} is not an integer "
                f"multiple of the tile input {in_h}x{in_w}."
            )
        if key == "vis_sr" and factor != self.scale:
            raise ValueError(f"The model's vis_sr is {factor}x the input, not scale={self.scale}.")
        plan = self.plan
        if key not in self.bands:
            self.factors[key] = factor
            self.weights[key] = plan.normalised_weights(factor)
            self.bands[key] = np.zeros(
                (plan.tile_h * factor, plan.width * factor, value.shape[-1]), np.float32
            )
        row_weights, col_weights = self.weights[key]
        y0, y1 = plan.rows[row_index][:2]
        for index, (col_index, flip, top) in enumerate(chunk):
            x0, x1, cx0, _ = plan.cols[col_index]
            out = value[index, ::-1] if flip else value[index]
            core = out[
                (y0 - top) * factor : (y1 - top) * factor,
                (x0 - cx0) * factor : (x1 - cx0) * factor,
            ]
            w = np.outer(row_weights[row_index] * self.share, col_weights[col_index])
            self.bands[key][:, x0 * factor : x1 * factor] += core * w[..., np.newaxis]

    def hand_over(self, row_index):
        """The finished rows above the next row of tiles; the bands move down past them."""
        plan = self.plan
        y0 = plan.rows[row_index][0]
        stop = plan.rows[row_index + 1][0] if row_index + 1 < len(plan.rows) else plan.height
        done = {key: band[: (stop - y0) * self.factors[key]].copy()
                for key, band in self.bands.items()}
        for key, band in self.bands.items():
            shift = (stop - y0) * self.factors[key]
            band[: band.shape[0] - shift] = band[shift:]
            band[band.shape[0] - shift :] = 0.0
        return y0, stop, done


def tiled_predict(
    model,
    vis_lr,
    nir_lr,
    scale,
    *,
    tile=DEFAULT_TILE,
    overlap=DEFAULT_OVERLAP,
    context=None,
    max_disparity=None,
    align=None,
    batch=1,
    keys=None,
    self_ensemble=False,
    frame_matching=None,
    config=None,
    stats=None,
):
    """Runs `model` on overlapping tiles of an LR pair and stitches the outputs.

    Args:
        model: a CSPSR Keras model (dict inputs `vis_lr`, `nir_lr`; dict outputs).
        vis_lr: float32 [h, w, 3] or [1, h, w, 3] in [0, 1], the left visible image
            (uint8 / uint16 are accepted too, see `iter_tiled_rows`).
        nir_lr: float32 [h, w, 1] or [1, h, w, 1] in [0, 1], the right NIR image.
        scale: int, the model's SR factor (checked against the `vis_sr` output).
        tile: int or (height, width), default 128: LR size of a tile's core (clipped to the
            frame).
        overlap: int, default 8: LR pixels shared by neighbouring cores and cross-faded.
            Must be smaller than the tile.
        context: int or None (default): LR pixels of extra input on each side of a core,
            computed and discarded; None derives it from the model (`tile_context`: its
            receptive field, plus the CVM's cost volume where the CVM runs per tile).
        max_disparity: float or None: extra horizontal context, in LR pixels, for the stereo
            warp; None reads it from the model's CVM (0 without a CVM or with frame_matching).
        align: int or None: tile origins are moved outwards to multiples of this; None uses
            the CVM's stride 2**depth (1 without a CVM or with frame_matching).
        batch: int, default 1: how many tiles of equal size go through the model together.
        keys: outputs to return (default: all); only these are held in memory.
        self_ensemble: average every tile with its vertically flipped pass.
        frame_matching: CVM on the whole frame, the rest on tiles (default: True for a
            group-norm CVM; see the module docstring).
        config: the model's `CSPSRConfig`, for the context (default: read from the model's
            layers; an exported SavedModel's adapter needs it).
        stats: optional dict, filled as by `iter_tiled_rows`.

    Returns:
        dict of float32 numpy arrays with the same keys and shapes as the model's outputs for
        the whole frame ([1, h*s, w*s, C] for SR images, [1, h, w, 1] for LR maps).

    Raises:
        ValueError: for inconsistent shapes or tiling arguments.
    """
    stitched = {}
    for start, stop, bands in iter_tiled_rows(
        model, vis_lr, nir_lr, scale, keys=keys, tile=tile, overlap=overlap, context=context,
        max_disparity=max_disparity, align=align, batch=batch, self_ensemble=self_ensemble,
        frame_matching=frame_matching, config=config, stats=stats,
    ):
        for key, band in bands.items():
            if key not in stitched:
                factor = band.shape[0] // (stop - start)
                height, width = np.shape(vis_lr)[-3:-1]
                stitched[key] = np.empty(
                    (1, height * factor, width * factor, band.shape[-1]), np.float32
                )
            factor = band.shape[0] // (stop - start)
            stitched[key][0, start * factor : stop * factor] = band
    return stitched


def predict(
    model, vis_lr, nir_lr, scale, *, tile=None, self_ensemble=False, keys=None,
    nir_side="right", **tile_kwargs
):
    """Whole-frame or tiled inference, optionally with the vertical-flip self-ensemble.

    With `nir_side="left"` (a rig whose NIR camera is left of the VIS camera) both views are
    mirrored left-right, which puts the NIR on the right as the model expects, and every
    output is mirrored back (`mirror_views`).

    The self-ensemble averages the prediction for the input and the (flipped back)
    prediction for the vertically flipped input. Only the vertical flip is used: a
    horizontal flip or a transpose would put the NIR camera on the other side or make the
    disparity vertical, which the model never saw. Disparity maps are averaged too (a
    vertical flip keeps every disparity value). Tiled, every tile is averaged with its own
    flipped pass, so memory stays bounded by one row of tiles.

    Args:
        model, vis_lr, nir_lr, scale: as for `tiled_predict`.
        tile: None for one forward pass, else the tile size for `tiled_predict`.
        self_ensemble: bool, average with the vertically flipped pass.
        keys: outputs to return (default: all).
        nir_side: `right` (default; the model's own rig) or `left`.
        **tile_kwargs: further `tiled_predict` arguments (overlap, context, batch...).

    Returns:
        dict of float32 numpy arrays shaped like the model's outputs.
    """
    if check_nir_side(nir_side) == "left":
        outputs = predict(
            model, mirror_views(vis_lr), mirror_views(nir_lr), scale, tile=tile,
            self_ensemble=self_ensemble, keys=keys, **tile_kwargs,
        )
        return {key: mirror_views(value) for key, value in outputs.items()}
    if tile is not None:
        return tiled_predict(
            model, vis_lr, nir_lr, scale, tile=tile, keys=keys, self_ensemble=self_ensemble,
            **tile_kwargs,
        )
    vis = _as_batch(vis_lr, 3, "vis_lr")
    nir = _as_batch(nir_lr, 1, "nir_lr")

    def once(v, n):
        outputs = predict_whole(model, v, n)
        return {k: value for k, value in outputs.items() if keys is None or k in keys}

    outputs = once(vis, nir)
    if not self_ensemble:
        return outputs
    flipped = once(vis[:, ::-1].copy(), nir[:, ::-1].copy())
    return {
        key: ((outputs[key] + flipped[key][:, ::-1]) * 0.5).astype(np.float32)
        for key in outputs
    }


def mirror_views(image):
    """`image` ([B,] H, W[, C] numpy) mirrored left-right: its width axis reversed.

    Mirroring both views of a rig whose NIR camera is on the left gives the views of a rig
    whose NIR camera is on the right (the one every model here is trained for); the left-right
    order of the cameras flips with the images. A disparity keeps its (positive) value: in the
    mirrored rig the NIR pixel of VIS column x is at x - d, in the real one at x + d.
    """
    image = np.asarray(image)
    width_axis = 2 if image.ndim == 4 else 1
    return np.flip(image, axis=width_axis).copy()


def forward_bytes_per_pixel(model, config=None):
    """Bytes one LR pixel costs in a forward pass (float32), estimated from the graph.

    Keras keeps every layer output of a functional model until the call ends, so the sum of
    the layer outputs per LR pixel, measured on a 32x32 probe, is close to the peak (within
    0.8-1.0x of the measured peak for the tiny and small presets); callers add a margin.

    An exported SavedModel has no layers to measure: the figure is that of a Keras model
    built from its `config` (in its precision). That is conservative: the SavedModel runs as
    a TensorFlow graph, which frees each intermediate tensor once its last reader is done,
    where the Keras model keeps them all. Without a config: None (no estimate).
    """
    import keras

    cached = getattr(model, "_cspsr_bytes_per_pixel", None)
    if cached is not None:
        return cached
    if not isinstance(model, keras.Model):
        if config is None:
            return None
        from cspsr_tf.model.build import build_cspsr

        stand_in = build_cspsr(config, precision=getattr(model, "precision", None) or "float32")
        total = forward_bytes_per_pixel(stand_in)
        model._cspsr_bytes_per_pixel = total
        return total
    tensors = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        output = layer.output
        if isinstance(output, dict):
            output = list(output.values())
        tensors += list(output) if isinstance(output, list | tuple) else [output]
    probe = keras.Model(model.inputs, tensors)
    side = 32
    values = probe(
        {"vis_lr": np.zeros((1, side, side, 3), np.float32),
         "nir_lr": np.zeros((1, side, side, 1), np.float32)},
        training=False,
    )
    total = sum(int(np.prod(v.shape)) * 4 for v in values) / (side * side)
    model._cspsr_bytes_per_pixel = total
    return total


def available_memory_bytes():
    """Memory this process may still take: MemAvailable, capped by a cgroup v2 limit.

    None where neither can be read (not Linux).
    """
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read().strip())
        if limit != "max":
            room = int(limit) - current
            available = room if available is None else min(available, room)
    except (OSError, ValueError):
        pass
    return available
