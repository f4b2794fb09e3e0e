"""What does the LR NIR tell about the HR VIS that the LR VIS does not? Linear regressors.

    .venv/bin/python studies/nir_linear_oracle.py \
        --results=benchmarks/results/nir_benefit_over_exposure.json --data_dir=runs/nir_benefit/tfds \
        --conditions=clean,low_light,dark,very_dark,over_exposure \
        --out=studies/results/nir_linear_oracle.json

A measurement of the data, not of a network: each HR pixel's luma (BT.601 Y, what the standard
protocol scores) is predicted by a linear map of the LR pixel it lies in and its neighbours
(a (2r+1)^2 window, edge-replicated), one map per sub-pixel phase (scale^2 maps), fitted by
least squares. Two feature sets, fitted and scored alike:

    vis       the LR VIS window (3 channels) and a constant;
    vis_nir   the same plus the LR NIR window.

The gain of `vis_nir` over `vis` is what a linear use of the NIR adds. Two fits:

    train     one map per phase fitted on the training frames, scored on the test frames
              (a learned linear SR, the honest figure);
    oracle    one map per phase fitted on each test frame itself (an optimistic bound for
              linear maps of that window: with ~100 weights per phase and tens of thousands
              of pixels per frame it barely over-fits).

Frames, split and degradation are those of a `benchmarks/nir_benefit.py` run (its JSON's
train/test splits and conditions; the same noise as `evaluate.py`). Only registered pairs are
used (the stereo frames' NIR is not aligned with their VIS; they are counted and left out).
PSNR: data range 255, `scale` pixels shaved, the predicted luma clipped to [16, 235] and not
rounded; the bicubic row is the tables' metric exactly (its RGB quantised to 8 bits first).

Beside them, the trained networks' NIR gains on the same frames (`--network_results`): for
each NIR row of `--network_rows` found in those `nir_benefit.py` JSONs, its standard PSNR
minus the VIS-only baseline's of the same seed, averaged over the frames measured here, then
over the seeds both have.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from studies import default_out  # noqa: E402

NAME = "nir_linear_oracle"
FEATURE_SETS = ("vis", "vis_nir")
# Ridge term relative to the mean diagonal of X^T X: only keeps the solve well posed.
RIDGE = 1e-6
Y_RANGE = (16.0, 235.0)
FLAGS = flags.FLAGS


def window_features(image, radius):
    """[h*w, c*(2r+1)^2] windows of an [h, w, c] image (edge-replicated), row-major pixels.

    Column order: channel-major, then window row, then window column.
    """
    image = np.asarray(image, np.float64)
    if image.ndim != 3:
        raise ValueError(f"image must be [h, w, c]; got shape {image.shape}")
    h, w, c = image.shape
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    side = 2 * radius + 1
    columns = [padded[dy:dy + h, dx:dx + w, k].reshape(-1)
               for k in range(c) for dy in range(side) for dx in range(side)]
    return np.stack(columns, axis=1)


def features(vis_lr, nir_lr, feature_set, radius):
    """Design matrix [h*w, n] of one LR pair ([h, w, 3] and [h, w, 1]) with a constant column."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {FEATURE_SETS}; got {feature_set!r}")
    parts = [window_features(vis_lr, radius)]
    if feature_set == "vis_nir":
        parts.append(window_features(nir_lr, radius))
    parts.append(np.ones((parts[0].shape[0], 1)))
    return np.concatenate(parts, axis=1)


def feature_columns(feature_set, radius, vis_channels=3):
    """Indices of `feature_set`'s columns in the `vis_nir` design matrix (VIS windows, NIR
    window, constant), so that one matrix per frame serves both fits."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {FEATURE_SETS}; got {feature_set!r}")
    n_vis = vis_channels * (2 * radius + 1) ** 2
    n_total = n_vis + (2 * radius + 1) ** 2 + 1
    return np.r_[0:n_vis, n_total - 1] if feature_set == "vis" else np.arange(n_total)


def phase_targets(hr_y, scale):
    """[h*w, scale^2]: the HR values of each LR pixel, column py*scale + px."""
    hr_y = np.asarray(hr_y, np.float64)
    big_h, big_w = hr_y.shape
    if big_h % scale or big_w % scale:
        raise ValueError(f"HR size {hr_y.shape} is not a multiple of scale {scale}")
    h, w = big_h // scale, big_w // scale
    return hr_y.reshape(h, scale, w, scale).transpose(0, 2, 1, 3).reshape(h * w, scale * scale)


def assemble(phases, h, w, scale):
    """Inverse of `phase_targets`: [h*w, scale^2] -> [h*scale, w*scale]."""
    return np.asarray(phases).reshape(h, w, scale, scale).transpose(0, 2, 1, 3).reshape(h * scale, w * scale)


class NormalEquations:
    """X^T X and X^T Y summed over frames; `solve` gives the least-squares weights."""

    def __init__(self):
        self.xtx = None
        self.xty = None

    def add(self, x, y):
        self._accumulate(x.T @ x, x.T @ y)

    def add_sums(self, other):
        """Adds another instance's sums (frames fitted together)."""
        if other.xtx is not None:
            self._accumulate(other.xtx, other.xty)

    def _accumulate(self, xtx, xty):
        self.xtx = xtx.copy() if self.xtx is None else self.xtx + xtx
        self.xty = xty.copy() if self.xty is None else self.xty + xty

    def solve(self, columns=None):
        """Weights of the fit on all columns, or on the subset `columns` (same sums, sub-blocks)."""
        if self.xtx is None:
            raise ValueError("no frames were added")
        xtx, xty = self.xtx, self.xty
        if columns is not None:
            xtx, xty = xtx[np.ix_(columns, columns)], xty[columns]
        ridge = RIDGE * float(np.mean(np.diag(xtx)))
        return np.linalg.solve(xtx + ridge * np.eye(len(xtx)), xty)


def y_psnr(pred_y, hr_y, scale):
    """PSNR (range 255) of a luma prediction clipped to [16, 235], `scale` pixels shaved."""
    crop = (slice(scale, -scale), slice(scale, -scale))
    diff = np.clip(pred_y, *Y_RANGE)[crop] - np.asarray(hr_y, np.float64)[crop]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _frame_arrays(frame):
    """(vis [h,w,3], nir [h,w,1], HR luma [H,W]) of a `nir_usage.load_frames` entry."""
    from cspsr_tf.ops.metrics import rgb_to_y

    _, vis_lr, nir_lr, hr, _ = frame
    return vis_lr[0], nir_lr[0], rgb_to_y(hr)


def measure(train_frames, test_frames, scale, radius):
    """{fit: {feature set or "bicubic": mean PSNR over the test frames}} and per-frame values."""
    from cspsr_tf.ops.metrics import rgb_to_y
    from cspsr_tf.ops.resize import bicubic_upscale

    # One VIS+NIR design matrix per frame; the VIS-only fits use its VIS and constant columns.
    columns = {feature_set: feature_columns(feature_set, radius) for feature_set in FEATURE_SETS}
    train = NormalEquations()
    for frame in train_frames:
        vis, nir, hr_y = _frame_arrays(frame)
        train.add(features(vis, nir, "vis_nir", radius), phase_targets(hr_y, scale))
    fitted = {feature_set: train.solve(cols) for feature_set, cols in columns.items()}
    per_frame = []
    for frame in test_frames:
        vis, nir, hr_y = _frame_arrays(frame)
        h, w = vis.shape[:2]
        bicubic = rgb_to_y(np.asarray(bicubic_upscale(vis, scale)))
        row = {"id": frame[0], "bicubic": y_psnr(bicubic, hr_y, scale)}
        x = features(vis, nir, "vis_nir", radius)
        own = NormalEquations()
        own.add(x, phase_targets(hr_y, scale))
        for feature_set, cols in columns.items():
            x_set = x[:, cols]
            for fit, weights in (("train", fitted[feature_set]), ("oracle", own.solve(cols))):
                row[f"{fit}/{feature_set}"] = y_psnr(assemble(x_set @ weights, h, w, scale), hr_y, scale)
        per_frame.append(row)
    keys = [k for k in per_frame[0] if k != "id"]
    means = {k: float(np.mean([row[k] for row in per_frame])) for k in keys}
    return means, per_frame


def network_gains(results_list, condition, frame_ids, ablations, vis_ablation="baseline"):
    """{ablation: {"seeds": [...], "gain_db": mean over seeds of the mean per-frame gain}}.

    `results_list`: loaded `nir_benefit.py` JSONs; a row found in an earlier one wins.
    Only the frames in `frame_ids` count; every one of them must have been evaluated.
    """
    rows = {}
    for results in results_list:
        for name, row in results["rows_results"].items():
            if name not in rows and "frames" in row.get("evaluation", {}):
                rows[name] = {f["id"]: f["model"]["standard"]["psnr"] for f in row["evaluation"]["frames"]}

    def seeds_of(ablation):
        prefix = f"{condition}/{ablation}/"
        return {name[len(prefix):]: frames for name, frames in rows.items() if name.startswith(prefix)}

    vis = seeds_of(vis_ablation)
    out = {}
    for ablation in ablations:
        nir = seeds_of(ablation)
        seeds = sorted(set(nir) & set(vis))
        if not seeds:
            continue
        gains = []
        for seed in seeds:
            missing = [i for i in frame_ids if i not in nir[seed] or i not in vis[seed]]
            if missing:
                raise ValueError(f"{condition}/{ablation}/{seed}: frame {missing[0]} was not evaluated")
            gains.append(np.mean([nir[seed][i] - vis[seed][i] for i in frame_ids]))
        out[ablation] = {"seeds": seeds, "gain_db": float(np.mean(gains))}
    return out


def main(argv):
    del argv
    from benchmarks.nir_usage import load_frames

    with open(FLAGS.results) as f:
        results = json.load(f)
    split = results["split"]
    out = bench_util.header(NAME, {"results": bench_util.rel(FLAGS.results), "radius": FLAGS.radius,
                                   "scale": FLAGS.scale, "network_results": FLAGS.network_results,
                                   "network_rows": FLAGS.network_rows})
    out["conditions"] = {}
    networks = []
    for path in FLAGS.network_results:
        with open(path) as f:
            networks.append(json.load(f))
    table = []
    for condition in FLAGS.conditions:
        if condition not in results["conditions"]:
            raise app.UsageError(f"condition {condition!r} is not one of {sorted(results['conditions'])} "
                                 f"in {FLAGS.results}")
        degradation = results["conditions"][condition]
        train_all, test_all = (load_frames("nirvis_folder", splits, FLAGS.data_dir, FLAGS.manual_dir,
                                           FLAGS.scale, degradation)
                               for splits in ([split["train_split"]], split["eval_splits"]))
        train = [f for f in train_all if f[4] == "aligned"]
        test = [f for f in test_all if f[4] == "aligned"]
        if not train or not test:
            raise app.UsageError(f"{condition}: no registered frames in the train or test split")
        means, per_frame = measure(train, test, FLAGS.scale, FLAGS.radius)
        out["conditions"][condition] = {
            "degradation": degradation, "train_frames": len(train), "test_frames": len(test),
            "left_out_stereo": {"train": len(train_all) - len(train), "test": len(test_all) - len(test)},
            "mean_psnr_db": means,
            "nir_gain_db": {fit: means[f"{fit}/vis_nir"] - means[f"{fit}/vis"] for fit in ("train", "oracle")},
            "per_frame": per_frame,
        }
        out["conditions"][condition]["network_nir_gain_db"] = network_gains(
            networks, condition, [row["id"] for row in per_frame], FLAGS.network_rows)
        gains = out["conditions"][condition]["nir_gain_db"]
        table.append([condition, len(test), bench_util.fmt(means["bicubic"], 2),
                      bench_util.fmt(means["train/vis"], 2), bench_util.fmt(means["train/vis_nir"], 2),
                      bench_util.fmt(gains["train"], 2, " dB"), bench_util.fmt(means["oracle/vis"], 2),
                      bench_util.fmt(means["oracle/vis_nir"], 2), bench_util.fmt(gains["oracle"], 2, " dB"),
                      ", ".join(f"{a} {bench_util.fmt(g['gain_db'], 2)} ({len(g['seeds'])})" for a, g in
                                out["conditions"][condition]["network_nir_gain_db"].items())])
        print(" | ".join(str(v) for v in table[-1]), flush=True)
    bench_util.write_json(FLAGS.out, out)
    bench_util.print_table(["condition", "test frames", "bicubic", "train: vis", "train: vis+nir", "NIR gain",
                            "oracle: vis", "oracle: vis+nir", "NIR gain", "networks' NIR gain (seeds)"], table)


if __name__ == "__main__":
    flags.DEFINE_string("results", os.path.join(bench_util.REPO_ROOT, "benchmarks", "results",
                                                     "nir_benefit_over_exposure.json"),
                        "benchmarks/nir_benefit.py results JSON (its split and conditions).")
    flags.DEFINE_list("conditions", ["clean", "low_light"], "Conditions to measure.")
    flags.DEFINE_list("network_results", [], "nir_benefit.py JSONs whose trained rows' NIR gains to show "
                      "beside (an earlier file's row wins).")
    flags.DEFINE_list("network_rows", ["full", "w_nir", "full_gf_skip"], "NIR ablations to show.")
    flags.DEFINE_integer("radius", 2, "LR window radius r ((2r+1)^2 pixels per channel).")
    flags.DEFINE_integer("scale", 4, "SR factor.")
    flags.DEFINE_string("data_dir", os.path.join(bench_util.REPO_ROOT, "runs", "nir_benefit", "tfds"),
                        "TFDS data directory of the nir_benefit run.")
    flags.DEFINE_string("manual_dir", bench_util.SAMPLES_DIR, "The shared sample pairs.")
    flags.DEFINE_string("out", default_out(NAME), "JSON results.")
    app.run(main)
