"""Tiled inference: super-resolves frames too large for one forward pass.

The LR pair is cut into overlapping 2-D tiles, every tile is run through the model with some
extra input around it (the *context*), the context is thrown away, and the tiles' outputs
are blended in their overlaps with linear (feathered) weights. Every model output is stitched
at its own resolution: `vis_sr` / `nir_sr` at HR, `disp_l` / `disp_r` / `nir_l` at LR.

Geometry of one tile (all sizes in LR pixels):

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
  bottom/right padding are the same as for the whole frame.

What tiling cannot reproduce exactly: (a) convolutions near a tile's cut see the cut, not
the image (the context keeps that out of the core as long as it exceeds the receptive field
that matters); (b) the CSFT unit's channel weights come from a *global* average pool
(paper Eq. 2), which a tile computes over itself rather than over the frame. Both effects are
small for natural images (`tests/test_tiling.py` checks < 0.05 dB PSNR difference against
whole-frame inference), but tiled numbers are not bit-identical to whole-frame numbers.
"""

import math

import numpy as np
import tensorflow as tf
from absl import logging

DEFAULT_TILE = 128
DEFAULT_OVERLAP = 8
DEFAULT_CONTEXT = 16


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


def _run_model(model, vis, nir):
    outputs = model({"vis_lr": tf.constant(vis), "nir_lr": tf.constant(nir)}, training=False)
    return {key: np.asarray(value, dtype=np.float32) for key, value in outputs.items()}


def predict_whole(model, vis_lr, nir_lr):
    """One untiled forward pass; returns the model's outputs as float32 numpy arrays."""
    vis = _as_batch(vis_lr, 3, "vis_lr")
    nir = _as_batch(nir_lr, 1, "nir_lr")
    if vis.shape[1:3] != nir.shape[1:3]:
        raise ValueError(
            f"vis_lr and nir_lr differ in size. Received: {vis.shape} and {nir.shape}"
        )
    return _run_model(model, vis, nir)


def tiled_predict(
    model,
    vis_lr,
    nir_lr,
    scale,
    *,
    tile=DEFAULT_TILE,
    overlap=DEFAULT_OVERLAP,
    context=DEFAULT_CONTEXT,
    max_disparity=None,
    align=None,
    batch=1,
):
    """Runs `model` on overlapping tiles of an LR pair and stitches the outputs.

    Args:
        model: a CSPSR Keras model (dict inputs `vis_lr`, `nir_lr`; dict outputs).
        vis_lr: float32 [h, w, 3] or [1, h, w, 3] in [0, 1], the left visible image.
        nir_lr: float32 [h, w, 1] or [1, h, w, 1] in [0, 1], the right NIR image.
        scale: int, the model's SR factor (checked against the `vis_sr` output).
        tile: int or (height, width), default 128: LR size of a tile's core (clipped to the
            frame).
        overlap: int, default 8: LR pixels shared by neighbouring cores and cross-faded.
            Must be smaller than the tile.
        context: int, default 16: LR pixels of extra input on each side of a core, computed
            and discarded.
        max_disparity: float or None: extra horizontal context, in LR pixels, for the stereo
            warp; None reads it from the model's CVM (0 without a CVM).
        align: int or None: tile origins are moved outwards to multiples of this; None uses
            the CVM's stride 2**depth (1 without a CVM).
        batch: int, default 1: how many tiles of equal size go through the model together.

    Returns:
        dict of float32 numpy arrays with the same keys and shapes as the model's outputs for
        the whole frame ([1, h*s, w*s, C] for SR images, [1, h, w, 1] for LR maps).

    Raises:
        ValueError: for inconsistent shapes or tiling arguments.
    """
    vis = _as_batch(vis_lr, 3, "vis_lr")
    nir = _as_batch(nir_lr, 1, "nir_lr")
    if vis.shape[1:3] != nir.shape[1:3]:
        raise ValueError(
            f"vis_lr and nir_lr differ in size. Received: {vis.shape} and {nir.shape}"
        )
    height, width = vis.shape[1:3]
    tile_h, tile_w = _pair(tile, "tile")
    if min(tile_h, tile_w) < 1:
        raise ValueError(f"tile must be positive. Received: tile={tile!r}")
    tile_h, tile_w = min(tile_h, height), min(tile_w, width)
    if overlap < 0 or context < 0:
        raise ValueError(
            f"overlap and context must be >= 0. Received: overlap={overlap}, context={context}"
        )
    if batch < 1:
        raise ValueError(f"batch must be >= 1. Received: batch={batch}")
    model_disparity, model_stride = model_geometry(model)
    max_disparity = model_disparity if max_disparity is None else float(max_disparity)
    align = model_stride if align is None else int(align)
    for size, name in ((tile_h, "height"), (tile_w, "width")):
        length = height if name == "height" else width
        if size < length and overlap >= size:
            raise ValueError(
                f"overlap must be smaller than the tile. Received: overlap={overlap}, "
                f"tile {name}={size}"
            )
    context_v = int(context)
    context_h = int(context) + int(math.ceil(max_disparity))

    windows = []  # (core y0, y1, x0, x1, input y0, y1, x0, x1)
    for y0 in window_starts(height, tile_h, overlap):
        for x0 in window_starts(width, tile_w, overlap):
            y1, x1 = y0 + tile_h, x0 + tile_w
            cy0 = max(0, y0 - context_v) // align * align
            cx0 = max(0, x0 - context_h) // align * align
            cy1, cx1 = min(height, y1 + context_v), min(width, x1 + context_h)
            windows.append((y0, y1, x0, x1, cy0, cy1, cx0, cx1))
    logging.info(
        "Tiled inference of a %dx%d LR frame: %d tiles of %dx%d, overlap %d, context %d "
        "(+%d horizontally for disparity), alignment %d.",
        height, width, len(windows), tile_h, tile_w, overlap, context_v,
        context_h - context_v, align,
    )

    # Tiles of equal input size can share a forward pass.
    by_shape = {}
    for window in windows:
        by_shape.setdefault((window[5] - window[4], window[7] - window[6]), []).append(window)

    sums, weight_sums = {}, {}
    for (in_h, in_w), group in by_shape.items():
        for first in range(0, len(group), batch):
            chunk = group[first : first + batch]
            vis_tiles = np.concatenate([vis[:, w[4] : w[5], w[6] : w[7]] for w in chunk])
            nir_tiles = np.concatenate([nir[:, w[4] : w[5], w[6] : w[7]] for w in chunk])
            outputs = _run_model(model, vis_tiles, nir_tiles)
            for key, value in outputs.items():
                factor = value.shape[1] // in_h
                if value.shape[1] != in_h * factor or value.shape[2] != in_w * factor:
                    raise ValueError(
                        f"Output {key!r} of shape {value.shape} is not an integer multiple "
                        f"of the tile input {in_h}x{in_w}."
                    )
                if key not in sums:
                    shape = (1, height * factor, width * factor, value.shape[-1])
                    sums[key] = np.zeros(shape, np.float32)
                    weight_sums[key] = np.zeros(shape[:3] + (1,), np.float32)
                for index, (y0, y1, x0, x1, cy0, _, cx0, _) in enumerate(chunk):
                    core = value[
                        index,
                        (y0 - cy0) * factor : (y1 - cy0) * factor,
                        (x0 - cx0) * factor : (x1 - cx0) * factor,
                    ]
                    weights = np.outer(
                        feather_weights(core.shape[0], overlap * factor, y0 > 0, y1 < height),
                        feather_weights(core.shape[1], overlap * factor, x0 > 0, x1 < width),
                    )[..., np.newaxis]
                    rows = slice(y0 * factor, y1 * factor)
                    cols = slice(x0 * factor, x1 * factor)
                    sums[key][0, rows, cols] += core * weights
                    weight_sums[key][0, rows, cols] += weights

    if "vis_sr" in sums and sums["vis_sr"].shape[1] != height * scale:
        raise ValueError(
            f"The model's vis_sr is {sums['vis_sr'].shape[1] // height}x the input, "
            f"not scale={scale}."
        )
    return {key: (sums[key] / weight_sums[key]).astype(np.float32) for key in sums}


def predict(model, vis_lr, nir_lr, scale, *, tile=None, self_ensemble=False, **tile_kwargs):
    """Whole-frame or tiled inference, optionally with the vertical-flip self-ensemble.

    The self-ensemble averages the prediction for the input and the (flipped back)
    prediction for the vertically flipped input. Only the vertical flip is used: a
    horizontal flip or a transpose would put the NIR camera on the other side or make the
    disparity vertical, which the model never saw. Disparity maps are averaged too (a
    vertical flip keeps every disparity value).

    Args:
        model, vis_lr, nir_lr, scale: as for `tiled_predict`.
        tile: None for one forward pass, else the tile size for `tiled_predict`.
        self_ensemble: bool, average with the vertically flipped pass.
        **tile_kwargs: further `tiled_predict` arguments (overlap, context, batch...).

    Returns:
        dict of float32 numpy arrays shaped like the model's outputs.
    """
    vis = _as_batch(vis_lr, 3, "vis_lr")
    nir = _as_batch(nir_lr, 1, "nir_lr")

    def once(v, n):
        if tile is None:
            return predict_whole(model, v, n)
        return tiled_predict(model, v, n, scale, tile=tile, **tile_kwargs)

    outputs = once(vis, nir)
    if not self_ensemble:
        return outputs
    flipped = once(vis[:, ::-1].copy(), nir[:, ::-1].copy())
    return {
        key: ((outputs[key] + flipped[key][:, ::-1]) * 0.5).astype(np.float32)
        for key in outputs
    }
