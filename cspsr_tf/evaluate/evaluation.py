"""Whole-frame evaluation: metrics beside bicubic, per-group tables, images and figures.

`evaluate_dataset` runs a model over an evaluation dataset (`data.pipeline.make_eval_dataset`
elements `(inputs, targets, meta)`, one frame per element) and measures every frame under
both metric protocols of `metrics.py`, for the model and for the bicubic baseline made from
the same LR input (`data.resize.bicubic_upscale`). Both SR images are quantised to 8 bits
first exactly as they are saved to PNG (clip to [0, 1], `metrics.to_uint8`: times 255, round
half to even), so the numbers are those of the written files.

Frames are grouped by the part of their id before the first '/': the video (collection) for
the RGB-NIR stereo data, the category for EPFL nirscene, as in the paper's per-video and
per-category tables. An id without '/' belongs to the group "all".

Ground-truth disparity (`targets["disparity_hr"]`, HR pixels, 0 or non-finite = unknown) is
compared with the model's `disp_l`: upsampled to HR with bilinear interpolation (half-pixel
centres, `tf.image.resize`) and multiplied by the scale. Reported per frame: the end-point
error (mean absolute difference, HR pixels) and the share of valid pixels off by more than
1 HR pixel; both averaged over frames in the aggregates.

Output folder (when `out_dir` is given):

    results.json                   everything below, machine readable
    results.md                     tables: bicubic vs model, overall and per group
    sr/<id>.png                    8-bit SR images (id with '/' replaced by '__')
    disparity/<id>.png             colour-coded `disp_l` (when the model has a CVM)
    disparity/<id>.npy             float32 [h, w] `disp_l` in LR pixels (save_disparity_npy)
    figures/<id>.png               zoomed crops: bicubic | model | HR | NIR

Non-finite numbers (PSNR of identical images is inf) are written to JSON as null.
"""

import json
import math
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from cspsr_tf.evaluate.disparity_eval import disparity_errors as stats_of_disparity
from cspsr_tf.infer import tiling
from cspsr_tf.model.build import with_geometry
from cspsr_tf.model.precision import model_precision
from cspsr_tf.ops.metrics import PROTOCOLS, evaluate_pair, to_uint8
from cspsr_tf.ops.resize import bicubic_upscale
from cspsr_tf.util import figures

UNGROUPED = "all"
METHODS = ("bicubic", "model")
_METRIC_NAMES = ("psnr", "ssim")


def frame_group(frame_id):
    """The video / category of a frame: its id up to the first '/' ("all" without one)."""
    return frame_id.split("/", 1)[0] if "/" in frame_id else UNGROUPED


def file_stem(frame_id):
    """A file name for a frame id: '/' (and '\\') become '__'."""
    stem = frame_id.replace("/", "__").replace("\\", "__")
    return stem.lstrip(".") or "frame"


def quantize(image):
    """Clips a float [0, 1] image and rounds it to uint8 as it is saved (`to_uint8`)."""
    return to_uint8(np.clip(np.asarray(image, np.float64), 0.0, 1.0))


def disparity_errors(disp_l, disparity_hr, scale, valid_hr=None):
    """End-point error and >1 px share of a predicted LR disparity against HR ground truth.

    Args:
        disp_l: [h, w] (or with singleton batch / channel axes) predicted left disparity in
            LR pixels.
        disparity_hr: [h*s, w*s] ground-truth left disparity in HR pixels; 0 and non-finite
            values are unknown and skipped.
        scale: int, the SR factor.
        valid_hr: optional [h*s, w*s] mask of the known disparities (`disparity_valid_hr`:
            occluded and out-of-frame pixels are 0); it narrows the valid pixels further.

    Returns:
        {"epe": float or None, "bad1": float or None, "valid_pixels": int}; None where no
        ground-truth pixel is valid.
    """
    pred = _single_map(disp_l)
    gt = _single_map(disparity_hr)
    if gt.shape != (pred.shape[0] * scale, pred.shape[1] * scale):
        raise ValueError(
            f"Ground-truth disparity {gt.shape} is not {scale}x the predicted {pred.shape}."
        )
    upsampled = tf.image.resize(pred[np.newaxis, ..., np.newaxis], gt.shape, method="bilinear")
    upsampled = upsampled.numpy()[0, ..., 0].astype(np.float64) * scale
    valid = np.isfinite(gt) & (gt > 0)
    if valid_hr is not None:
        valid &= _single_map(valid_hr) > 0.5
    errors = stats_of_disparity(upsampled, np.where(valid, gt, 0.0), valid)
    if not errors["pixels"]:
        return {"epe": None, "bad1": None, "valid_pixels": 0}
    return {"epe": errors["epe"], "bad1": errors["bad1"], "valid_pixels": errors["pixels"]}


def _single_map(array):
    """[H, W] from [H, W], [H, W, 1] or [1, H, W, 1]."""
    array = np.asarray(array, np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"Expected a single-channel map. Received: shape={array.shape}")
    return array


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def aggregate(frames):
    """Means over frames of every metric, for the model, bicubic and disparity errors.

    Args:
        frames: list of per-frame result dicts (as in `evaluate_dataset`).

    Returns:
        {"num_frames", "bicubic": {protocol: {psnr, ssim}}, "model": {...}} plus
        "disparity": {"epe", "bad1", "num_frames"} when any frame has disparity errors.
    """
    summary = {"num_frames": len(frames)}
    for method in METHODS:
        summary[method] = {
            protocol: {
                metric: _mean([f[method][protocol][metric] for f in frames])
                for metric in _METRIC_NAMES
            }
            for protocol in PROTOCOLS
        }
    with_disparity = [f["disparity"] for f in frames if f.get("disparity", {}).get("epe")
                      is not None]
    if with_disparity:
        summary["disparity"] = {
            "epe": _mean([d["epe"] for d in with_disparity]),
            "bad1": _mean([d["bad1"] for d in with_disparity]),
            "num_frames": len(with_disparity),
        }
    return summary


def _as_text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _json_safe(value):
    if isinstance(value, dict):
        return {key: _json_safe(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_text_atomic(path, text):
    # Shared helper: temporary file + rename, keeping the umask's mode (not mkstemp's 0600).
    from cspsr_tf.util import atomic_files

    atomic_files.write_text(path, text)


def _fmt(value, digits):
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.{digits}f}"


def _metric_cells(block):
    return [
        _fmt(block[protocol][metric], 2 if metric == "psnr" else 4)
        for protocol in PROTOCOLS
        for metric in _METRIC_NAMES
    ]


def results_markdown(results):
    """The markdown report of `evaluate_dataset` results: overall, per group, disparity."""
    model_label = results.get("model_name") or "model"
    scale = results["scale"]
    overall = results["mean"]
    header = "| Method | " + " | ".join(
        f"{metric.upper()} ({protocol})" for protocol in PROTOCOLS for metric in _METRIC_NAMES
    ) + " |"
    rule = "|---|" + "---:|" * (len(PROTOCOLS) * len(_METRIC_NAMES))
    lines = [
        f"# Evaluation x{scale}: {model_label}",
        "",
        f"{overall['num_frames']} frames; tile={results['tile']}, "
        f"self_ensemble={results['self_ensemble']}, "
        f"precision={results.get('precision', 'float32')}.",
        "",
        header,
        rule,
        "| Bicubic | " + " | ".join(_metric_cells(overall["bicubic"])) + " |",
        f"| {model_label} | " + " | ".join(_metric_cells(overall["model"])) + " |",
        "",
        "## Per group",
        "",
        "| Group | Frames | Method | "
        + " | ".join(f"{m.upper()} ({p})" for p in PROTOCOLS for m in _METRIC_NAMES)
        + " |",
        "|---|---:|---|" + "---:|" * (len(PROTOCOLS) * len(_METRIC_NAMES)),
    ]
    for group, summary in results["groups"].items():
        for method, label in (("bicubic", "Bicubic"), ("model", model_label)):
            lines.append(
                f"| {group} | {summary['num_frames']} | {label} | "
                + " | ".join(_metric_cells(summary[method]))
                + " |"
            )
    if "disparity" in overall:
        lines += [
            "",
            "## Disparity (disp_l upsampled to HR, HR pixels, valid ground truth only)",
            "",
            "| Group | Frames | EPE (px) | > 1 px (%) |",
            "|---|---:|---:|---:|",
        ]
        for group, summary in [*results["groups"].items(), ("all frames", overall)]:
            if "disparity" in summary:
                d = summary["disparity"]
                bad = None if d["bad1"] is None else 100 * d["bad1"]
                lines.append(
                    f"| {group} | {d['num_frames']} | {_fmt(d['epe'], 3)} | {_fmt(bad, 2)} |"
                )
    lines += ["", "Protocols:"]
    lines += [f"- `{name}`: {protocol.description}" for name, protocol in PROTOCOLS.items()]
    return "\n".join(lines) + "\n"


def _frame_figure(bicubic, sr, hr, nir_hr, frame):
    labels = [
        f"bicubic {frame['bicubic']['paper']['psnr']:.2f}dB",
        f"model {frame['model']['paper']['psnr']:.2f}dB",
        "HR",
    ]
    panels = [bicubic, sr, hr]
    if nir_hr is not None and nir_hr.shape[:2] == hr.shape[:2]:
        panels.append(nir_hr)
        labels.append("NIR HR (own view)")
    return figures.comparison_figure(panels, labels)


def evaluate_dataset(
    model,
    config,
    eval_ds,
    *,
    scale,
    tile=None,
    self_ensemble=False,
    out_dir=None,
    save_images=True,
    max_frames=None,
    save_disparity_npy=False,
    overlap=tiling.DEFAULT_OVERLAP,
    context=tiling.DEFAULT_CONTEXT,
    model_name=None,
    nir_side="right",
):
    """Evaluates a model frame by frame, beside the bicubic baseline.

    Args:
        model: a CSPSR Keras model, in the precision to evaluate (`runtime.with_precision`;
            recorded in the results).
        config: its `CSPSRConfig`, or None (then only recorded as null; the disparity colour
            scale comes from the model's CVM). With a config, frames whose meta `geometry` is
            `aligned` (registered pairs) are evaluated with zero disparity.
        eval_ds: iterable of `(inputs, targets, meta)` with a batch dimension of 1 (see
            `data.pipeline.make_eval_dataset`): inputs {"vis_lr", "nir_lr"}, targets
            {"vis_hr", ...; optional "disparity_hr"}, meta {"id", ...}.
        scale: int, the SR factor (must equal `config.scale` when a config is given).
        tile: None for whole-frame inference, else the LR tile size (`tiling.tiled_predict`).
        self_ensemble: average with the vertically flipped pass (`tiling.predict`).
        out_dir: folder for results and images; None writes nothing.
        save_images: write SR PNGs, disparity colour maps and figures (with `out_dir`).
        max_frames: evaluate at most this many frames.
        save_disparity_npy: also write `disp_l` as float32 .npy (with `save_images`).
        overlap, context: tiling arguments, used with `tile`.
        model_name: label of the model in the tables (default: the Keras model's name).
        nir_side: `right` (the model's rig) or `left`: each frame is run mirrored and its
            outputs mirrored back (`tiling.predict`); scores and images keep the frame's
            orientation.

    Returns:
        dict: "scale", "tile", "self_ensemble", "precision", "model_name", "config", "protocols",
        "frames" (list of {"id", "group", "model": {protocol: {psnr, ssim}}, "bicubic":
        {...}, "seconds", optional "disparity": {"epe", "bad1", "valid_pixels"}}),
        "mean" (see `aggregate`) and "groups" ({group: aggregate}).
    """
    if config is not None and int(config.scale) != int(scale):
        raise ValueError(f"scale={scale} differs from the model config's scale={config.scale}")
    if max_frames is not None and max_frames < 1:  # checked before out_dir is made
        raise ValueError(f"max_frames must be >= 1. Received: max_frames={max_frames}")
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    max_disparity = config.max_disparity if config is not None else tiling.model_geometry(model)[0]
    image_dir = out_dir if save_images else None
    models = _ModelsByGeometry(model, config)
    frame_results, seen_ids = [], set()
    for index, (inputs, targets, meta) in enumerate(eval_ds):
        if max_frames is not None and index >= max_frames:
            break
        vis_lr = np.asarray(inputs["vis_lr"], np.float32)
        nir_lr = np.asarray(inputs["nir_lr"], np.float32)
        if vis_lr.ndim != 4 or vis_lr.shape[0] != 1:
            raise ValueError(f"Expected one frame per element. Received: {vis_lr.shape}")
        frame_id = _unique_frame_id(meta, index, seen_ids)
        start = time.perf_counter()
        outputs = tiling.predict(
            models.for_frame(meta), vis_lr, nir_lr, scale, tile=tile,
            self_ensemble=self_ensemble, overlap=overlap, context=context, nir_side=nir_side,
        )
        seconds = time.perf_counter() - start
        frame, images = _score_frame(frame_id, vis_lr, outputs, targets, scale, seconds)
        frame_results.append(frame)
        if image_dir is not None:
            _write_frame_images(image_dir, frame, images, outputs, max_disparity,
                                save_disparity_npy)
    if not frame_results:
        raise ValueError("The evaluation dataset yielded no frames.")
    results = _results(frame_results, model, config, scale, tile, self_ensemble,
                       model_name or model.name)
    if out_dir is not None:
        _write_text_atomic(
            os.path.join(out_dir, "results.json"),
            json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n",
        )
        _write_text_atomic(os.path.join(out_dir, "results.md"), results_markdown(results))
    return results


class _ModelsByGeometry:
    """The model for a frame: `model`, or its zero-disparity twin (built once) for a frame
    whose meta `geometry` is `aligned` (train.py trains registered pairs the same way)."""

    def __init__(self, model, config):
        self.model, self.config, self.registered = model, config, None

    def for_frame(self, meta):
        geometry = _as_text(np.asarray(meta["geometry"]).reshape(-1)[0]) if "geometry" in meta else ""
        if geometry != "aligned" or self.config is None or not self.config.use_cvm:
            return self.model
        if self.registered is None:
            self.registered, _ = with_geometry(self.model, self.config, "aligned")
        return self.registered


def _unique_frame_id(meta, index, seen_ids):
    frame_id = _as_text(np.asarray(meta["id"]).reshape(-1)[0]) if "id" in meta else ""
    frame_id = frame_id or f"frame{index:05d}"
    if frame_id in seen_ids:
        frame_id = f"{frame_id}#{index}"
    seen_ids.add(frame_id)
    return frame_id


def _score_frame(frame_id, vis_lr, outputs, targets, scale, seconds):
    """The frame's record (model and bicubic under both protocols, disparity errors) and
    its uint8 images (bicubic, sr, hr, nir_hr or None)."""
    hr = quantize(np.asarray(targets["vis_hr"])[0])
    sr = quantize(outputs["vis_sr"][0])
    bicubic = quantize(bicubic_upscale(vis_lr[0], scale).numpy())
    if sr.shape != hr.shape:
        raise ValueError(
            f"Frame {frame_id}: SR output {sr.shape} differs from HR {hr.shape} "
            f"(LR {vis_lr.shape[1:3]}, scale {scale})"
        )
    frame = {
        "id": frame_id,
        "group": frame_group(frame_id),
        "model": evaluate_pair(sr, hr, scale),
        "bicubic": evaluate_pair(bicubic, hr, scale),
        "seconds": seconds,
    }
    if "disparity_hr" in targets and "disp_l" in outputs:
        frame["disparity"] = disparity_errors(
            outputs["disp_l"], targets["disparity_hr"], scale, targets.get("disparity_valid_hr")
        )
    logging.info(
        "%s: model %.2f dB / %.4f, bicubic %.2f dB / %.4f (paper protocol), %.2fs",
        frame_id, frame["model"]["paper"]["psnr"], frame["model"]["paper"]["ssim"],
        frame["bicubic"]["paper"]["psnr"], frame["bicubic"]["paper"]["ssim"], seconds,
    )
    nir_hr = targets.get("nir_hr") if hasattr(targets, "get") else None
    nir_hr = None if nir_hr is None else quantize(np.asarray(nir_hr)[0])
    return frame, (bicubic, sr, hr, nir_hr)


def _write_frame_images(out_dir, frame, images, outputs, max_disparity, save_disparity_npy):
    """The SR PNG, the disparity colour map (and .npy) and the comparison figure of a frame."""
    bicubic, sr, hr, nir_hr = images
    stem = file_stem(frame["id"])
    figures.write_image(os.path.join(out_dir, "sr", stem + ".png"), sr)
    if "disp_l" in outputs:
        disp = outputs["disp_l"][0, ..., 0]
        figures.write_image(
            os.path.join(out_dir, "disparity", stem + ".png"),
            figures.disparity_to_color(disp, max_disparity or None),
        )
        if save_disparity_npy:
            np.save(os.path.join(out_dir, "disparity", stem + ".npy"), disp)
    figures.write_image(
        os.path.join(out_dir, "figures", stem + ".png"),
        _frame_figure(bicubic, sr, hr, nir_hr, frame),
    )


def _results(frame_results, model, config, scale, tile, self_ensemble, model_name):
    groups = {}
    for frame in frame_results:
        groups.setdefault(frame["group"], []).append(frame)
    results = {
        "scale": int(scale),
        "tile": tile,
        "self_ensemble": bool(self_ensemble),
        "precision": model_precision(model),
        "model_name": model_name,
        "config": config.to_dict() if config is not None else None,
        "protocols": {name: p.description for name, p in PROTOCOLS.items()},
        "frames": frame_results,
        "mean": aggregate(frame_results),
        "groups": {group: aggregate(items) for group, items in sorted(groups.items())},
    }
    mean = results["mean"]
    logging.info(
        "Mean over %d frames: model %s, bicubic %s",
        mean["num_frames"], mean["model"], mean["bicubic"],
    )
    return results
