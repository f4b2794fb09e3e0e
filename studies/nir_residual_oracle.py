"""How much linearly usable NIR information is left on top of a trained network's output?

    .venv/bin/python studies/nir_residual_oracle.py \
        --results=benchmarks/results/nir_benefit_gf_skip_4k.json \
        --rows=low_light/baseline/seed1,low_light/full_gf_skip/seed1 \
        --out=studies/results/nir_residual_oracle.json

`studies/nir_linear_oracle.py` compares linear maps of the LR VIS with and without the LR
NIR; its VIS-only map is far weaker than a trained VIS-only network, so its NIR gain says
little about what the NIR could add to a network. Here the linear maps start from a trained
network's output instead: each HR pixel's luma is predicted, one map per sub-pixel phase, from

    net       the network's SR luma (as `evaluate.py` scores it: RGB quantised to 8 bits) over
              the LR pixel the HR pixel lies in and its neighbours (a (2q+1)^2 window of
              scale x scale blocks), the LR VIS window ((2r+1)^2, 3 channels) and a constant;
    net_nir   the same plus the LR NIR window ((2r+1)^2).

The gain of `net_nir` over `net` is what a linear use of the NIR still adds after that network.
On top of the VIS-only baseline it estimates what the NIR can add to the baseline's own
estimate (linearly, locally); on top of a NIR row it says how much of that the row left unused.

The networks were trained on the training frames, where their outputs are better than on new
frames, so the maps are not fitted there: they are fitted on half of the test frames and
scored on the other half (two folds by sorted frame id, whole frames; `cross`), and, as an
optimistic bound, on each test frame itself (`oracle`). Registered test frames only (the
stereo frames' NIR is not aligned with their VIS). Each network's own PSNR on every frame is
checked against the one its `nir_benefit.py` JSON recorded (same model, frames and inputs).
PSNR as in `nir_linear_oracle.py`: range 255, `scale` pixels shaved, luma clipped to [16, 235].

With `--mlp_epochs=N`, a non-linear counterpart too (`mlp`): a small MLP on the same columns,
cross-fitted over the same folds, fitting what each fold's linear map leaves (it starts from
that map).
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
from studies.nir_linear_oracle import (  # noqa: E402
    NormalEquations,
    assemble,
    phase_targets,
    window_features,
    y_psnr,
)

NAME = "nir_residual_oracle"
FEATURE_SETS = ("net", "net_nir")
FITS = ("cross", "oracle")
FOLDS = 2
# A network's recomputed PSNR must match the recorded one this closely (same model, same frame).
RECHECK_TOLERANCE_DB = 0.01
FLAGS = flags.FLAGS


def residual_features(net_y, vis_lr, nir_lr, scale, net_radius, radius):
    """Design matrix [h*w, n] of one frame: network blocks, VIS window, NIR window, constant.

    `net_y`: the network's HR luma [h*scale, w*scale]; `vis_lr` [h, w, 3]; `nir_lr` [h, w, 1].
    """
    vis_lr, nir_lr = np.asarray(vis_lr), np.asarray(nir_lr)
    h, w = vis_lr.shape[:2]
    if np.shape(net_y) != (h * scale, w * scale) or nir_lr.shape[:2] != (h, w):
        raise ValueError(f"sizes differ: net_y {np.shape(net_y)}, vis_lr {vis_lr.shape}, nir_lr {nir_lr.shape}, "
                         f"scale {scale}")
    # Luma scaled to [0, 1] like the LR inputs, so the relative ridge weighs all columns alike.
    blocks = phase_targets(np.asarray(net_y, np.float64) / 255.0, scale).reshape(h, w, scale * scale)
    parts = [window_features(blocks, net_radius), window_features(vis_lr, radius),
             window_features(nir_lr, radius)]
    parts.append(np.ones((h * w, 1)))
    return np.concatenate(parts, axis=1)


def residual_columns(feature_set, scale, net_radius, radius):
    """Indices of `feature_set`'s columns in the `residual_features` matrix."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {FEATURE_SETS}; got {feature_set!r}")
    n_net = scale * scale * (2 * net_radius + 1) ** 2
    n_vis = 3 * (2 * radius + 1) ** 2
    n_total = n_net + n_vis + (2 * radius + 1) ** 2 + 1
    return np.r_[0:n_net + n_vis, n_total - 1] if feature_set == "net" else np.arange(n_total)


def fold_of(frame_ids, folds=FOLDS):
    """{id: fold}: the ids in sorted order dealt round-robin into `folds` folds."""
    return {frame_id: k % folds for k, frame_id in enumerate(sorted(frame_ids))}


def measure(frames, net_ys, scale, net_radius, radius):
    """Mean and per-frame PSNRs of the network and of each fit and feature set.

    `frames`: (id, vis_lr [h,w,3], nir_lr [h,w,1], HR luma [H,W]); `net_ys`: the network's HR
    luma of each frame, same order.
    """
    columns = {fs: residual_columns(fs, scale, net_radius, radius) for fs in FEATURE_SETS}
    folds = fold_of([f[0] for f in frames])
    per_fold = [NormalEquations() for _ in range(FOLDS)]
    own = []
    for (frame_id, vis, nir, hr_y), net_y in zip(frames, net_ys, strict=True):
        x, t = residual_features(net_y, vis, nir, scale, net_radius, radius), phase_targets(hr_y, scale)
        own.append(NormalEquations())
        own[-1].add(x, t)
        per_fold[folds[frame_id]].add(x, t)
    # The map scoring fold k is fitted on every other fold.
    cross = {}
    for k in range(FOLDS):
        others = NormalEquations()
        for j in range(FOLDS):
            if j != k:
                others.add_sums(per_fold[j])
        cross[k] = {fs: others.solve(cols) for fs, cols in columns.items()}
    per_frame = []
    for ((frame_id, vis, nir, hr_y), net_y), own_eq in zip(zip(frames, net_ys, strict=True), own, strict=True):
        h, w = vis.shape[:2]
        # Rebuilt rather than kept from the first pass: ~90 MB a real frame.
        x = residual_features(net_y, vis, nir, scale, net_radius, radius)
        row = {"id": frame_id, "net": y_psnr(net_y, hr_y, scale)}
        for fs, cols in columns.items():
            for fit, weights in (("cross", cross[folds[frame_id]][fs]), ("oracle", own_eq.solve(cols))):
                row[f"{fit}/{fs}"] = y_psnr(assemble(x[:, cols] @ weights, h, w, scale), hr_y, scale)
        per_frame.append(row)
    keys = [k for k in per_frame[0] if k != "id"]
    return {k: float(np.mean([row[k] for row in per_frame])) for k in keys}, per_frame


def mlp_cross_fit(frames, net_ys, scale, net_radius, radius, epochs, hidden=128, batch_size=1024, seed=0):
    """{feature set: PSNR of each frame} of the `cross` maps plus a small MLP, cross-fitted alike.

    A non-linear counterpart of the `cross` maps: on the same columns (standardised on the
    fitting frames), two hidden ReLU layers predict what the map fitted on those frames leaves
    of the HR luma (all `scale`^2 phases at once). The output layer starts at zero, so training
    starts from the linear map and can only fit more of the fitting frames.
    """
    import keras

    ids = [f[0] for f in frames]
    folds = fold_of(ids)
    xs, targets = [], []
    for (_, vis, nir, hr_y), net_y in zip(frames, net_ys, strict=True):
        xs.append(residual_features(net_y, vis, nir, scale, net_radius, radius).astype(np.float32))
        targets.append((phase_targets(hr_y, scale) / 255.0).astype(np.float32))
    out = {}
    for fs in FEATURE_SETS:
        cols = residual_columns(fs, scale, net_radius, radius)
        out[fs] = [None] * len(frames)
        for k in range(FOLDS):
            fit = [i for i, frame_id in enumerate(ids) if folds[frame_id] != k]
            equations = NormalEquations()
            for i in fit:
                equations.add(xs[i][:, cols].astype(np.float64), targets[i].astype(np.float64))
            weights = equations.solve().astype(np.float32)
            x_fit = np.concatenate([xs[i][:, cols[:-1]] for i in fit])  # no constant: the layers have biases
            t_fit = np.concatenate([targets[i] - xs[i][:, cols] @ weights for i in fit])
            mean, std = x_fit.mean(axis=0), x_fit.std(axis=0) + 1e-6
            keras.utils.set_random_seed(seed)
            model = keras.Sequential([keras.Input((len(cols) - 1,)), keras.layers.Dense(hidden, activation="relu"),
                                      keras.layers.Dense(hidden, activation="relu"),
                                      keras.layers.Dense(scale * scale, kernel_initializer="zeros")])
            model.compile(keras.optimizers.Adam(1e-3), "mse")
            model.fit((x_fit - mean) / std, t_fit, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
            del x_fit, t_fit
            for i, frame_id in enumerate(ids):
                if folds[frame_id] == k:
                    h, w = frames[i][1].shape[:2]
                    linear = xs[i][:, cols] @ weights
                    pred = model.predict((xs[i][:, cols[:-1]] - mean) / std, batch_size=8192, verbose=0) + linear
                    out[fs][i] = y_psnr(assemble(255.0 * pred, h, w, scale), frames[i][3], scale)
    return out


def network_lumas(model_path, frames):
    """The model's SR luma on each frame, run and quantised as `evaluate.py` does."""
    from cspsr_tf.evaluate.evaluation import quantize
    from cspsr_tf.infer import tiling
    from cspsr_tf.model import model_io
    from cspsr_tf.model.build import with_geometry
    from cspsr_tf.ops.metrics import rgb_to_y

    stereo_model, config = model_io.load_model(model_path)
    scale = tiling.model_scale(stereo_model, config)
    registered = with_geometry(stereo_model, config, "aligned")[0]
    out = []
    for _, vis_lr, nir_lr, _, geometry in frames:
        model = registered if geometry == "aligned" else stereo_model
        out.append(rgb_to_y(quantize(tiling.predict(model, vis_lr, nir_lr, scale)["vis_sr"][0])))
    return out


def find_rows(results_list, wanted):
    """{row name: (results JSON, row)} for each of `wanted`; the first JSON holding it wins."""
    found = {}
    for results in results_list:
        for name, row in results["rows_results"].items():
            if name in wanted and name not in found and "frames" in row.get("evaluation", {}):
                found[name] = (results, row)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ValueError(f"row {missing[0]} has no evaluated frames in the given results")
    return found


def main(argv):
    del argv
    from benchmarks.nir_usage import load_frames
    from cspsr_tf.ops.metrics import rgb_to_y

    results_list = []
    for path in FLAGS.results:
        with open(path) as f:
            results_list.append(json.load(f))
    try:
        rows = find_rows(results_list, FLAGS.rows)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    out = bench_util.header(NAME, {"results": [bench_util.rel(p) for p in FLAGS.results], "rows": FLAGS.rows,
                                   "net_radius": FLAGS.net_radius, "radius": FLAGS.radius,
                                   "mlp_epochs": FLAGS.mlp_epochs})
    out["rows"] = {}
    frames_cache = {}
    table = []
    for name in FLAGS.rows:
        results, row = rows[name]
        condition, ablation, seed = name.split("/")
        settings = row["settings"]
        scale = settings["scale"]
        model_path = os.path.join(bench_util.REPO_ROOT, results["flags"]["work_dir"],
                                  f"{condition}_{ablation}_{seed}", "final.keras")
        if not os.path.exists(model_path):
            raise app.UsageError(f"{model_path} not found (row {name})")
        key = (condition, tuple(settings["eval_splits"]), scale)
        if key not in frames_cache:
            loaded = load_frames("nirvis_folder", settings["eval_splits"], FLAGS.data_dir, FLAGS.manual_dir,
                                 scale, results["conditions"][condition])
            frames_cache[key] = [f for f in loaded if f[4] == "aligned"]
        frames = frames_cache[key]
        if not frames:
            raise app.UsageError(f"{name}: no registered test frames")
        net_ys = network_lumas(model_path, frames)
        recorded = {f["id"]: f["model"]["standard"]["psnr"] for f in row["evaluation"]["frames"]}
        arrays = [(f[0], f[1][0], f[2][0], rgb_to_y(f[3])) for f in frames]
        means, per_frame = measure(arrays, net_ys, scale, FLAGS.net_radius, FLAGS.radius)
        for frame in per_frame:
            if frame["id"] not in recorded:
                raise RuntimeError(f"{name}: frame {frame['id']} was not evaluated in its results JSON")
            if abs(frame["net"] - recorded[frame["id"]]) > RECHECK_TOLERANCE_DB:
                raise RuntimeError(f"{name}, {frame['id']}: PSNR {frame['net']:.3f} dB here, "
                                   f"{recorded[frame['id']]:.3f} dB recorded: not the same model or inputs")
        if FLAGS.mlp_epochs:
            mlp = mlp_cross_fit(arrays, net_ys, scale, FLAGS.net_radius, FLAGS.radius, FLAGS.mlp_epochs)
            for fs, psnrs in mlp.items():
                for frame, psnr in zip(per_frame, psnrs, strict=True):
                    frame[f"mlp/{fs}"] = psnr
                means[f"mlp/{fs}"] = float(np.mean(psnrs))
        gains = {fit: means[f"{fit}/net_nir"] - means[f"{fit}/net"] for fit in FITS + ("mlp",)
                 if f"{fit}/net" in means}
        out["rows"][name] = {"model": bench_util.rel(model_path), "test_frames": len(frames),
                             "mean_psnr_db": means, "nir_gain_db": gains, "per_frame": per_frame}
        table.append([name, len(frames), bench_util.fmt(means["net"], 2),
                      bench_util.fmt(means["cross/net"], 2), bench_util.fmt(means["cross/net_nir"], 2),
                      bench_util.fmt(gains["cross"], 2, " dB"), bench_util.fmt(means["oracle/net"], 2),
                      bench_util.fmt(means["oracle/net_nir"], 2), bench_util.fmt(gains["oracle"], 2, " dB"),
                      bench_util.fmt(means.get("mlp/net"), 2), bench_util.fmt(means.get("mlp/net_nir"), 2),
                      bench_util.fmt(gains.get("mlp"), 2, " dB")])
        print(" | ".join(str(v) for v in table[-1]), flush=True)
    bench_util.write_json(FLAGS.out, out)
    bench_util.print_table(["row", "test frames", "network", "cross: net", "cross: net+nir", "NIR gain",
                            "oracle: net", "oracle: net+nir", "NIR gain", "mlp: net", "mlp: net+nir",
                            "NIR gain"], table)


if __name__ == "__main__":
    flags.DEFINE_list("results", None, "nir_benefit.py JSONs holding the rows (an earlier file's row wins); "
                      "each row's model is <its JSON's work_dir>/<condition>_<ablation>_<seed>/final.keras.",
                      required=True)
    flags.DEFINE_list("rows", None, "Rows (condition/ablation/seedK) whose outputs to start from.", required=True)
    flags.DEFINE_integer("net_radius", 1, "Radius q of the window of network output blocks (in LR pixels).")
    flags.DEFINE_integer("radius", 2, "Radius r of the LR VIS and NIR windows.")
    flags.DEFINE_integer("mlp_epochs", 0, "Also cross-fit a small MLP on the same columns for this many "
                         "epochs (0: maps only).")
    flags.DEFINE_string("data_dir", os.path.join(bench_util.REPO_ROOT, "runs", "nir_benefit", "tfds"),
                        "TFDS data directory of the nir_benefit run.")
    flags.DEFINE_string("manual_dir", bench_util.SAMPLES_DIR, "The shared sample pairs.")
    flags.DEFINE_string("out", default_out(NAME), "JSON results.")
    app.run(main)
