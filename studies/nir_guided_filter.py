"""How much does the NIR tell about the lost VIS detail? Classical filters, no training.

    .venv/bin/python studies/nir_guided_filter.py --data_dir=runs/nir_benefit/tfds

The frames and conditions of `benchmarks/nir_benefit.py` (the same split rule, the same
`pipeline.make_eval_dataset` inputs, so the same noise draws), and two darker variants of its
`low_light` (exposure gain 0.1 and 0.05 instead of 0.25, the same photon and read-noise
constants): each LR VIS is brought back to its exposure (divided by the gain), filtered at LR, then
upscaled with the project's bicubic (`bicubic_upscale`, what the `bicubic` rows use) and scored
with the standard protocol (Y, `scale` pixels shaved, 8-bit), as `evaluate.py` scores a model:

    exposure only       no filter
    gaussian            a Gaussian blur per channel (VIS only)
    nlmeans             OpenCV's non-local means for colour images (VIS only; strong classical)
    guided_self         He et al.'s guided filter per channel, guided by the noisy VIS luminance
    guided_nir          the same filter guided by the LR NIR instead
    guided_nir_and_self guided by both (their two-channel form); the last two use the NIR

Each filter's parameter is picked on training frames (the mean PSNR over the first
--tune_frames of the training split), then the test frames are scored once. The gap between
the best filter with the NIR and the best VIS-only one (both picked on the training frames) is what a fixed, hand-made use of the NIR recovers;
a learned model can do better on both sides, so this is a reference point for the NIR's
information at this noise level, not a bound on what a network gains.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import statistics  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from benchmarks.nir_usage import load_frames  # noqa: E402
from benchmarks.sample_split import define_splits  # noqa: E402
from cspsr_tf.data.degradations import resolve_degradation  # noqa: E402
from studies import default_out  # noqa: E402

NAME = "nir_guided_filter"
SCALE = 4
# name: degradation spec. `low_light` is nir_benefit.py's condition; the darker ones keep its
# photon and read-noise constants and cut the exposure further.
CONDITIONS = {
    "clean": "none",
    "low_light": "low_light",
    "low_light_gain0.1": {"name": "low_light", "gain": 0.1},
    "low_light_gain0.05": {"name": "low_light", "gain": 0.05},
}
GUIDED_GRID = [(r, eps) for r in (1, 2, 3, 4, 6) for eps in (1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2)]
GRIDS = {
    "exposure_only": [None],
    "gaussian": [0.5, 0.75, 1.0, 1.5, 2.0],
    "nlmeans": [3, 6, 10, 14, 18, 24, 30],
    "guided_self": GUIDED_GRID,
    "guided_nir": GUIDED_GRID,
    "guided_nir_and_self": GUIDED_GRID,
}
NIR_METHODS = ("guided_nir", "guided_nir_and_self")

FLAGS = flags.FLAGS
flags.DEFINE_string("out", default_out(NAME), "JSON results.")
flags.DEFINE_string("manual_dir", bench_util.SAMPLES_DIR, "Folder with pairs.csv (nirvis_folder).")
flags.DEFINE_string("data_dir", os.path.join(bench_util.REPO_ROOT, "runs", "nir_benefit", "tfds"),
                    "TFDS data dir (nir_benefit.py's, so the prepared data is reused).")
flags.DEFINE_list("conditions", list(CONDITIONS), "Conditions to measure.")
flags.DEFINE_integer("tune_frames", 40, "Training frames the filter parameters are picked on.")


def box(image, radius):
    return cv2.boxFilter(image, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def guided_filter(guide, source, radius, eps):
    """He et al. (2010) guided filter of one channel `source` by one channel `guide`."""
    mean_g, mean_s = box(guide, radius), box(source, radius)
    var_g = box(guide * guide, radius) - mean_g * mean_g
    cov = box(guide * source, radius) - mean_g * mean_s
    a = cov / (var_g + eps)
    b = mean_s - a * mean_g
    return box(a, radius) * guide + box(b, radius)


def guided_filter_2(guide, source, radius, eps):
    """He et al.'s guided filter with a two-channel guide [h, w, 2] (their colour-guide form:
    a per-window 2x2 covariance, regularised by eps on its diagonal)."""
    g0, g1 = guide[..., 0], guide[..., 1]
    m0, m1, ms = box(g0, radius), box(g1, radius), box(source, radius)
    s00 = box(g0 * g0, radius) - m0 * m0 + eps
    s11 = box(g1 * g1, radius) - m1 * m1 + eps
    s01 = box(g0 * g1, radius) - m0 * m1
    c0 = box(g0 * source, radius) - m0 * ms
    c1 = box(g1 * source, radius) - m1 * ms
    det = s00 * s11 - s01 * s01
    a0 = (s11 * c0 - s01 * c1) / det
    a1 = (s00 * c1 - s01 * c0) / det
    b = ms - a0 * m0 - a1 * m1
    return box(a0, radius) * g0 + box(a1, radius) * g1 + box(b, radius)


def restore(method, param, vis, nir):
    """The filtered LR VIS (float64 [h, w, 3], exposure restored) of one method."""
    if method == "exposure_only":
        return vis
    if method == "gaussian":
        return cv2.GaussianBlur(vis, (0, 0), param, borderType=cv2.BORDER_REFLECT)
    if method == "nlmeans":
        bgr = np.round(np.clip(vis[..., ::-1], 0, 1) * 255).astype(np.uint8)
        out = cv2.fastNlMeansDenoisingColored(bgr, None, param, param, 5, 15)
        return out[..., ::-1].astype(np.float64) / 255.0
    radius, eps = param
    if method == "guided_nir_and_self":
        guide = np.stack([nir, vis.mean(axis=-1)], -1)
        return np.stack([guided_filter_2(guide, vis[..., c], radius, eps) for c in range(3)], -1)
    guide = vis.mean(axis=-1) if method == "guided_self" else nir
    return np.stack([guided_filter(guide, vis[..., c], radius, eps) for c in range(3)], -1)


def score(method, param, frames, gain):
    from cspsr_tf.ops.metrics import psnr
    from cspsr_tf.ops.resize import bicubic_upscale

    values = []
    for _, vis_lr, nir_lr, hr, _ in frames:
        vis = np.asarray(vis_lr[0], np.float64) / gain
        nir = np.asarray(nir_lr[0, ..., 0], np.float64)
        lr = np.clip(restore(method, param, vis, nir), 0.0, 1.0).astype(np.float32)
        sr = np.asarray(bicubic_upscale(lr, SCALE))
        values.append(psnr(sr, hr, protocol="standard", scale=SCALE))
    return values


def main(argv):
    del argv
    started = time.time()
    splits = define_splits(FLAGS.data_dir, FLAGS.manual_dir)
    train_split = splits["train_split"]
    results = {}
    for condition in FLAGS.conditions:
        degradation = CONDITIONS[condition]
        gain = resolve_degradation(degradation)[1].get("gain", 1.0)  # the exposure to restore
        tune = load_frames("nirvis_folder", [train_split], FLAGS.data_dir, FLAGS.manual_dir,
                           SCALE, degradation, max_frames=FLAGS.tune_frames)
        test = load_frames("nirvis_folder", splits["eval_splits"], FLAGS.data_dir,
                           FLAGS.manual_dir, SCALE, degradation)
        rows = {}
        for method, grid in GRIDS.items():
            tuned = [(statistics.fmean(score(method, p, tune, gain)), p) for p in grid]
            best_tune, best = max(tuned, key=lambda t: t[0])
            per_frame = dict(zip((i for i, *_ in test), score(method, best, test, gain), strict=True))
            epfl = [v for i, v in per_frame.items() if i.startswith("epfl_nirscene1/")]
            rows[method] = {
                "param": best, "tune_psnr": best_tune,
                "test_psnr": statistics.fmean(per_frame.values()),
                "test_psnr_epfl": statistics.fmean(epfl) if epfl else None,
                "per_frame": per_frame,
            }
            print(f"{condition:9s} {method:14s} param={best!s:14s} tune {best_tune:.2f} dB, "
                  f"test {rows[method]['test_psnr']:.2f} dB (EPFL {rows[method]['test_psnr_epfl']:.2f})")
        # Both sides picked on the training frames, like the parameters.
        best_vis = max((m for m in rows if m not in NIR_METHODS), key=lambda m: rows[m]["tune_psnr"])
        best_nir = max(NIR_METHODS, key=lambda m: rows[m]["tune_psnr"])
        gain_db = {key: rows[best_nir][key] - rows[best_vis][key]
                   for key in ("test_psnr", "test_psnr_epfl")}
        results[condition] = {
            "degradation": degradation, "exposure_gain": gain,
            "rows": rows, "tune_frames": len(tune), "test_frames": len(test),
            "best_vis_only": best_vis, "best_with_nir": best_nir,
            "nir_gain_db": gain_db["test_psnr"], "nir_gain_db_epfl": gain_db["test_psnr_epfl"],
        }
        print(f"{condition}: {best_nir} - {best_vis} = {gain_db['test_psnr']:+.2f} dB "
              f"(EPFL {gain_db['test_psnr_epfl']:+.2f})")
    data = bench_util.header(NAME, {"manual_dir": bench_util.rel(FLAGS.manual_dir),
                                    "data_dir": bench_util.rel(FLAGS.data_dir),
                                    "tune_frames": FLAGS.tune_frames})
    data.update({"split_rule": splits["rule"], "train_split": train_split,
                 "results": results, "seconds": round(time.time() - started, 1)})
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
