"""How well the CVM matches: disparity error against ground truth, in LR pixels.

Used by `make demo`, `benchmarks/cvm_matching.py` and the tests. The error is measured where
the model works, at LR resolution: the HR ground truth is averaged over each scale x scale
block and divided by the scale (`matching_losses.disparity_to_lr`), and an LR pixel counts
only when its whole block has a known disparity.
"""

import numpy as np
import tensorflow as tf

from cspsr_tf.ops.warp import disparity_to_lr


def disparity_errors(predicted, gt, valid):
    """End-point error (mean |d - gt|) and the share of pixels off by more than 1 px.

    Args:
        predicted, gt: disparities of the same shape, in the same pixels; valid: the mask of
            known ground truth (> 0.5 counts).

    Returns:
        dict with `epe`, `bad1`, `bias` (the mean signed error, predicted - gt: a matcher
        that is off the same way everywhere shows it here), floats, NaN without a valid
        pixel, and `pixels` (int).
    """
    predicted, gt = np.asarray(predicted, np.float64), np.asarray(gt, np.float64)
    mask = np.asarray(valid) > 0.5
    if not mask.any():
        return {"epe": float("nan"), "bad1": float("nan"), "bias": float("nan"), "pixels": 0}
    signed = (predicted - gt)[mask]
    error = np.abs(signed)
    return {"epe": float(error.mean()), "bad1": float((error > 1.0).mean()),
            "bias": float(signed.mean()), "pixels": int(mask.sum())}


def measure_disparity(cvm, eval_ds, scale, max_frames=None):
    """EPE and >1 px share of a CVM over an evaluation dataset with ground truth.

    Args:
        cvm: a `CrossViewMatching` layer (or any callable taking `(vis_lr, nir_lr)` and
            returning a dict with `disp_l`).
        eval_ds: `(inputs, targets, meta)` frames (`pipeline.make_eval_dataset`) whose
            targets hold `disparity_hr` and `disparity_valid_hr`; frames without are skipped.
        scale: the SR factor of the LR inputs.
        max_frames: stop after this many frames.

    Returns:
        dict with `epe`, `bad1` and `bias` (means over all valid LR pixels of all frames, in
        LR pixels), `frame_epe` (mean of the per-frame EPEs), `frames` ([{id, epe, bad1,
        pixels}]) and `pixels`.
    """
    call = tf.function(lambda v, n: cvm((v, n), training=False)["disp_l"], reduce_retracing=True,
                       autograph=False)
    frames, errors, bad, signed = [], 0.0, 0.0, 0.0
    pixels = 0
    for index, (inputs, targets, meta) in enumerate(eval_ds):
        if max_frames is not None and index >= max_frames:
            break
        if "disparity_hr" not in targets:
            continue
        gt, valid = disparity_to_lr(targets["disparity_hr"], targets["disparity_valid_hr"], scale)
        predicted = call(inputs["vis_lr"], inputs["nir_lr"]).numpy()
        result = disparity_errors(predicted, gt.numpy(), valid.numpy())
        if not result["pixels"]:
            continue
        frame_id = np.asarray(meta["id"]).reshape(-1)[0]
        result["id"] = frame_id.decode() if isinstance(frame_id, bytes) else str(frame_id)
        frames.append(result)
        errors += result["epe"] * result["pixels"]
        bad += result["bad1"] * result["pixels"]
        signed += result["bias"] * result["pixels"]
        pixels += result["pixels"]
    if not pixels:
        return {"epe": None, "bad1": None, "bias": None, "frame_epe": None, "frames": [], "pixels": 0}
    return {
        "epe": errors / pixels,
        "bad1": bad / pixels,
        "bias": signed / pixels,
        "frame_epe": float(np.mean([f["epe"] for f in frames])),
        "frames": frames,
        "pixels": pixels,
    }
