"""The paper's Table 5: cross-spectral disparity estimated on SR images, RMSE per material.

The paper estimates the disparity between the super-resolved VIS image and the HR NIR image
with Zhi et al.'s learned cross-spectral stereo network and scores it on the material-labelled
keypoints of the RGB-NIR stereo release. That network is not part of this project, and a
learned matcher would bring its own training data into the comparison. Here the matcher is
fixed and has no weights, so nothing in the comparison was trained for it:

- cost: the local NCC^2 of the VIS luminance against the NIR moved by each candidate disparity
  (`ops.cross_spectral_similarity.ncc_squared_volume`, the measure the CVM is built on: it is
  invariant to the gain, offset and sign changes between the two bands), at HR;
- aggregation: each disparity slice blurred by a Gaussian (sigma `AGGREGATION_SIGMA` HR px), a
  local window of evidence (no global optimisation: what it sees is what the image shows);
- winner-take-all over 0..max_disparity, refined to sub-pixel by a parabola through the best
  score and its two neighbours.

A sharper, more faithful VIS image gives a cost volume with clearer peaks, which is what the
table measures. Scores: RMSE in HR pixels per material class over the keypoints (pooled over
frames), their mean over the classes that have points, and the paper's "Mean" convention (the
paper's Mean row equals the sum of its seven class RMSEs divided by eight: Bag, absent from the
video it scored, counts as 0); on datasets with dense ground truth (`nirvis_synthetic`), EPE
and RMSE over the valid pixels.
"""

import math

import numpy as np
import tensorflow as tf

from cspsr_tf.ops.cross_spectral_similarity import gaussian_blur, luminance, ncc_squared_volume

# The material classes of the RGB-NIR stereo keypoints, in the order of their class index
# (the same list as datasets/rgb_nir_stereo KEYPOINT_CLASSES; a test checks they agree).
KEYPOINT_CLASSES = ("Common", "Light", "Glass", "Glossy", "Vegetation", "Skin", "Clothing", "Bag")
# The classes the paper's Table 5 shows, and its figures (HR pixels), for the table's layout.
PAPER_CLASSES = KEYPOINT_CLASSES[:7]
PAPER_TABLE5 = {
    "Bicubic": (1.3565, 1.701, 1.9886, 2.3736, 1.6742, 1.5242, 2.0174, 1.5795),
    "Our": (0.5210, 0.2558, 0.3899, 0.5940, 0.6113, 0.9846, 0.5131, 0.4837),
    "HR": (0.5109, 0.2930, 0.3912, 0.3965, 0.5973, 1.0353, 0.5700, 0.4743),
}
MATCH_WINDOW_SIGMA = 2.0
AGGREGATION_SIGMA = 4.0
# A candidate whose sample lies beyond the NIR frame's left border cannot win.
_OUTSIDE = -1.0


def match_disparity(vis, nir, max_disparity, window_sigma=MATCH_WINDOW_SIGMA,
                    aggregation_sigma=AGGREGATION_SIGMA):
    """Left-view disparity of a rectified VIS-left / NIR-right pair, in pixels, [H, W] float32.

    `vis(i, j)` is matched with `nir(i, j - d)` for d in 0..max_disparity (integers), then
    refined to sub-pixel. Args: vis [H, W, 3] or [H, W, 1], nir [H, W, 1] or [H, W], floats in
    [0, 1] (uint8 is scaled); max_disparity: int >= 1.
    """
    if int(max_disparity) < 1:
        raise ValueError(f"max_disparity must be >= 1. Received: {max_disparity!r}")
    vis, nir = _as_float(vis), _as_float(nir)
    if nir.ndim == 2:
        nir = nir[..., np.newaxis]
    if vis.shape[:2] != nir.shape[:2]:
        raise ValueError(f"vis {vis.shape[:2]} and nir {nir.shape[:2]} differ in size")
    disparities = np.arange(int(max_disparity) + 1)
    reference = luminance(tf.constant(vis[np.newaxis]))
    volume = ncc_squared_volume(reference, tf.constant(nir[np.newaxis]), [-int(d) for d in disparities],
                                window_sigma=window_sigma)
    volume = gaussian_blur(volume, aggregation_sigma)[0].numpy()
    columns = np.arange(vis.shape[1])[np.newaxis, :, np.newaxis]
    volume = np.where(columns - disparities[np.newaxis, np.newaxis, :] < 0, _OUTSIDE, volume)
    return _winner_take_all(volume)


def _winner_take_all(volume):
    """argmax over the last axis of [H, W, D], refined by a parabola through its neighbours."""
    best = np.argmax(volume, axis=-1)
    rows, cols = np.indices(best.shape)
    inner = (best > 0) & (best < volume.shape[-1] - 1)
    left = volume[rows, cols, np.maximum(best - 1, 0)]
    centre = volume[rows, cols, best]
    right = volume[rows, cols, np.minimum(best + 1, volume.shape[-1] - 1)]
    curvature = left - 2.0 * centre + right
    usable = inner & (curvature < 0) & (left > _OUTSIDE) & (right > _OUTSIDE)
    offset = np.where(usable, 0.5 * (left - right) / np.where(usable, curvature, -1.0), 0.0)
    return (best + np.clip(offset, -0.5, 0.5)).astype(np.float32)


def _as_float(image):
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return image.astype(np.float32)


def keypoint_squared_errors(disparity, keypoints):
    """Squared errors at the keypoints inside `disparity` [H, W]: {class index: [errors]}.

    keypoints: [N, 4] rows (row, column, disparity in pixels, class index), as the
    `rgb_nir_stereo` builder stores them; points outside the (cropped) frame are skipped.
    """
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 4)
    height, width = disparity.shape
    errors = {}
    for row, col, truth, label in keypoints:
        row, col = int(row), int(col)
        if 0 <= row < height and 0 <= col < width:
            errors.setdefault(int(label), []).append((float(disparity[row, col]) - truth) ** 2)
    return errors


def merge_squared_errors(total, errors):
    for label, values in errors.items():
        total.setdefault(label, []).extend(values)
    return total


def rmse_by_class(squared_errors):
    """{class name: RMSE or None (no points)}, `mean` over the classes with points, and
    `mean_paper` (the sum over the paper's seven classes divided by eight, its convention)."""
    table = {}
    for index, name in enumerate(KEYPOINT_CLASSES):
        values = squared_errors.get(index, [])
        table[name] = math.sqrt(sum(values) / len(values)) if values else None
    present = [v for v in table.values() if v is not None]
    table["mean"] = sum(present) / len(present) if present else None
    table["mean_paper"] = (sum(table[c] or 0.0 for c in PAPER_CLASSES) / len(KEYPOINT_CLASSES)
                           if present else None)
    table["points"] = sum(len(v) for v in squared_errors.values())
    return table


def dense_errors(disparity, truth, valid):
    """EPE and RMSE (pixels) of `disparity` [H, W] over the valid pixels of `truth`."""
    return _pooled_dense([(disparity, truth, valid)])


def default_max_disparity(config, scale):
    """The matcher's range in HR px: the model's CVM range at HR, 64 without a CVM."""
    if config is not None and config.use_cvm:
        return int(round(config.max_disparity * scale))
    return 64


def table5_markdown(rows, title):
    """The paper's layout: one row per method (bicubic, model, HR), the classes, Mean; the
    paper's own rows beside for reference. `rows`: {label: rmse_by_class(...)}."""
    header = "| Method | " + " | ".join(PAPER_CLASSES) + " | Bag | Mean (classes with points) | Mean (paper's: sum of 7 / 8) | points |"
    lines = [f"### {title}", "", header, "|" + "---|" * (len(PAPER_CLASSES) + 5)]

    def cell(value):
        return "-" if value is None else f"{value:.4f}"

    for label, table in rows.items():
        classes = " | ".join(cell(table[c]) for c in PAPER_CLASSES)
        lines.append(f"| {label} | {classes} | {cell(table['Bag'])} | {cell(table['mean'])} | "
                     f"{cell(table['mean_paper'])} | {table['points']} |")
    lines += ["", "The paper's Table 5 (video 20170224_0742, Zhi et al.'s learned matcher):", "",
              "| Method | " + " | ".join(PAPER_CLASSES) + " | Mean |", "|" + "---|" * (len(PAPER_CLASSES) + 2)]
    for label, values in PAPER_TABLE5.items():
        lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def evaluate_downstream(model, eval_ds, scale, max_disparity, *, tile=None, max_frames=None,
                        model_label="model"):
    """Table 5 on an evaluation dataset: the fixed matcher on bicubic, the model's SR (when
    `model` is not None) and the HR VIS, each against the HR NIR.

    Args:
        model: a CSPSR Keras model or None (bicubic and HR rows only).
        eval_ds: `(inputs, targets, meta)` of `data.pipeline.make_eval_dataset`; keypoints are
            read from meta `keypoints` ([1, N, 4]) and dense ground truth from targets
            `disparity_hr` / `disparity_valid_hr` where present.
        scale: the SR factor; max_disparity: the matcher's range in HR pixels.

    Returns:
        {"max_disparity", "frames", "keypoints": {label: rmse_by_class}, "dense": {label:
        dense errors pooled over frames} (empty without dense ground truth)}.
    """
    from cspsr_tf.evaluate.evaluation import quantize
    from cspsr_tf.infer import tiling
    from cspsr_tf.ops.resize import bicubic_upscale

    labels = ["Bicubic"] + ([model_label] if model is not None else []) + ["HR"]
    squared = {label: {} for label in labels}
    dense = {label: [] for label in labels}
    frames = 0
    for index, (inputs, targets, meta) in enumerate(eval_ds):
        if max_frames is not None and index >= max_frames:
            break
        vis_lr = np.asarray(inputs["vis_lr"], np.float32)
        images = {"Bicubic": quantize(bicubic_upscale(vis_lr[0], scale).numpy())}
        if model is not None:
            outputs = tiling.predict(model, vis_lr, np.asarray(inputs["nir_lr"], np.float32),
                                     scale, tile=tile, keys=("vis_sr",))
            images[model_label] = quantize(outputs["vis_sr"][0])
        images["HR"] = quantize(np.asarray(targets["vis_hr"])[0])
        nir_hr = quantize(np.asarray(targets["nir_hr"])[0])
        keypoints = np.asarray(meta["keypoints"])[0] if "keypoints" in meta else None
        for label in labels:
            disparity = match_disparity(images[label], nir_hr, max_disparity)
            if keypoints is not None:
                merge_squared_errors(squared[label], keypoint_squared_errors(disparity, keypoints))
            if "disparity_hr" in targets:
                truth = np.asarray(targets["disparity_hr"])[0, ..., 0]
                valid = np.asarray(targets["disparity_valid_hr"])[0, ..., 0]
                dense[label].append((disparity, truth, valid))
        frames += 1
    if not frames:
        raise ValueError("The evaluation dataset yielded no frames.")
    return {
        "max_disparity": int(max_disparity),
        "frames": frames,
        # Every row, also where the dataset has no keypoints (its cells then stay empty).
        "keypoints": {label: rmse_by_class(squared[label]) for label in labels},
        "dense": {label: _pooled_dense(items) for label, items in dense.items() if items},
    }


def _pooled_dense(items):
    """Dense EPE / RMSE pooled over every valid pixel of every frame."""
    errors = []
    for disparity, truth, valid in items:
        disparity = np.asarray(disparity, np.float64)
        truth = np.asarray(truth, np.float64).reshape(disparity.shape)
        valid = np.asarray(valid).reshape(disparity.shape) > 0.5
        errors.append(np.abs(disparity - truth)[valid])
    errors = np.concatenate(errors)
    if errors.size == 0:
        return {"epe": None, "rmse": None, "valid_pixels": 0}
    return {"epe": float(errors.mean()), "rmse": float(np.sqrt(np.mean(errors**2))),
            "valid_pixels": int(errors.size)}


def downstream_markdown(results, title):
    """Table 5 (keypoints) and the dense table, as Markdown."""
    parts = [f"## Downstream disparity: {title}", "",
             f"Fixed NCC^2 matcher at HR, 0..{results['max_disparity']} px, {results['frames']} "
             "frames (cspsr_tf/evaluate/downstream_disparity.py says how and why). RMSE in HR px.", ""]
    parts.append(table5_markdown(results["keypoints"], "RMSE per material on the keypoints"))
    if not any(row["points"] for row in results["keypoints"].values()):
        parts.append("This dataset has no material keypoints (those of rgb_nir_stereo): the cells "
                     "above stay empty.\n")
    if results["dense"]:
        parts += ["### Against dense ground truth", "", "| Method | EPE | RMSE | valid pixels |",
                  "|---|---:|---:|---:|"]
        for label, row in results["dense"].items():
            epe = "-" if row["epe"] is None else f"{row['epe']:.3f}"
            rmse = "-" if row["rmse"] is None else f"{row['rmse']:.3f}"
            parts.append(f"| {label} | {epe} | {rmse} | {row['valid_pixels']} |")
        parts.append("")
    return "\n".join(parts)
