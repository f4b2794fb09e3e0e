"""Where does the NIR pay on over-exposed inputs? PSNR inside and outside the clipped regions.

    .venv/bin/python benchmarks/nir_gain_by_saturation.py \
        --results=runs/nir_benefit_over.json --work_dir=runs/nir_benefit_over \
        --data_dir=runs/nir_benefit/tfds --out=benchmarks/results/nir_gain_by_saturation.json

For the rows of one condition of a `benchmarks/nir_benefit.py` run (their trained models,
`<work_dir>/<condition>_<ablation>_seed<k>/final.keras`), every test frame is run as
`evaluate.py` runs it (the JSON's test splits and degradation, registered frames at zero
disparity, SR quantised to 8 bits) and the standard-protocol error (BT.601 Y, `scale` pixels
shaved) is split by what the degradation left of the LR VIS pixel under each HR pixel:

    saturated   all three channels clipped at 1: nothing of the VIS is left there;
    partly      one or two channels clipped;
    unclipped   no channel clipped.

Per row: the PSNR of each region, pooled over the frames (squared errors summed over the
region's pixels of every frame), and the region's share of the pixels; per NIR row, its gain
over the VIS-only row in each region (means over the seeds both rows have). Each model's
mean whole-frame PSNR is checked against the one the JSON recorded (same frames, same inputs).
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

NAME = "nir_gain_by_saturation"
REGIONS = ("saturated", "partly", "unclipped")
# The whole-frame PSNRs must reproduce the JSON's to this many dB (same model, same frames).
RECHECK_TOLERANCE_DB = 0.01
FLAGS = flags.FLAGS


def clip_regions(vis_lr, scale, level=1.0):
    """Region index (0 saturated, 1 partly, 2 unclipped) of each HR pixel, [h*scale, w*scale].

    `vis_lr` is one LR VIS input [h, w, 3] (or [1, h, w, 3]) in [0, 1]; a channel counts as
    clipped at `level` or above. Each HR pixel takes the region of the LR pixel it lies in.
    """
    vis_lr = np.asarray(vis_lr)
    if vis_lr.ndim == 4:
        vis_lr = vis_lr[0]
    if vis_lr.ndim != 3 or vis_lr.shape[-1] != 3:
        raise ValueError(f"vis_lr must be [h, w, 3] or [1, h, w, 3]; got shape {vis_lr.shape}")
    clipped = np.sum(vis_lr >= level, axis=-1)
    regions = np.where(clipped == 3, 0, np.where(clipped > 0, 1, 2))
    return np.repeat(np.repeat(regions, scale, axis=0), scale, axis=1)


def region_errors(sr, hr, regions, scale):
    """{region: (sum of squared Y errors, pixel count)} under the standard protocol.

    `sr`, `hr`: uint8 (or [0, 1] float) RGB images of the same size as `regions`.
    """
    from cspsr_tf.ops.metrics import rgb_to_y, to_uint8

    if np.shape(sr) != np.shape(hr) or np.shape(hr)[:2] != np.shape(regions):
        raise ValueError(f"sizes differ: sr {np.shape(sr)}, hr {np.shape(hr)}, regions {np.shape(regions)}")
    crop = (slice(scale, -scale), slice(scale, -scale))
    error = (rgb_to_y(to_uint8(sr)[crop]) - rgb_to_y(to_uint8(hr)[crop])) ** 2
    regions = np.asarray(regions)[crop]
    return {name: (float(error[regions == k].sum()), int((regions == k).sum()))
            for k, name in enumerate(REGIONS)}


def pooled_psnr(sse, count):
    """PSNR (data range 255) of a summed squared error over `count` pixels; None if empty."""
    if count == 0:
        return None
    return float("inf") if sse == 0 else float(10 * np.log10(255.0**2 * count / sse))


def measure_model(model_path, frames):
    """Region errors summed over `frames` (from `nir_usage.load_frames`) and the mean PSNR."""
    from cspsr_tf.evaluate.evaluation import quantize
    from cspsr_tf.infer import tiling
    from cspsr_tf.model import model_io
    from cspsr_tf.model.build import with_geometry

    stereo_model, config = model_io.load_model(model_path)
    scale = tiling.model_scale(stereo_model, config)
    registered = with_geometry(stereo_model, config, "aligned")[0]
    totals = {name: [0.0, 0] for name in REGIONS}
    psnrs = []
    for _, vis_lr, nir_lr, hr, geometry in frames:
        model = registered if geometry == "aligned" else stereo_model
        sr = quantize(tiling.predict(model, vis_lr, nir_lr, scale)["vis_sr"][0])
        errors = region_errors(sr, hr, clip_regions(vis_lr, scale), scale)
        # The regions cover the shaved frame, so their sums give the frame's standard PSNR:
        # checking it against the recorded one also checks that nothing was left out.
        psnrs.append(pooled_psnr(sum(e[0] for e in errors.values()), sum(e[1] for e in errors.values())))
        for name, (sse, count) in errors.items():
            totals[name][0] += sse
            totals[name][1] += count
    return totals, float(np.mean(psnrs))


def main(argv):
    del argv
    from benchmarks.nir_usage import load_frames

    with open(FLAGS.results) as f:
        results = json.load(f)
    rows = {name: row for name, row in results["rows_results"].items()
            if name.split("/")[0] == FLAGS.condition and "evaluation" in row}
    if not rows:
        raise app.UsageError(f"{FLAGS.results} has no evaluated {FLAGS.condition!r} rows")
    settings = next(iter(rows.values()))["settings"]
    degradation = results["conditions"][FLAGS.condition]
    frames = load_frames("nirvis_folder", settings["eval_splits"], FLAGS.data_dir, FLAGS.manual_dir,
                         settings["scale"], degradation)
    out = bench_util.header(NAME, {"results": bench_util.rel(FLAGS.results), "work_dir": bench_util.rel(FLAGS.work_dir),
                                   "condition": FLAGS.condition, "degradation": degradation})
    out["num_frames"] = len(frames)
    out["rows"] = {}
    for name, row in sorted(rows.items()):
        condition, ablation, seed = name.split("/")
        model_path = os.path.join(FLAGS.work_dir, f"{condition}_{ablation}_{seed}", "final.keras")
        if not os.path.exists(model_path):
            raise app.UsageError(f"{model_path} not found (row {name} of {FLAGS.results})")
        totals, mean_psnr = measure_model(model_path, frames)
        recorded = row["evaluation"]["mean"]["model"]["standard"]["psnr"]
        if abs(mean_psnr - recorded) > RECHECK_TOLERANCE_DB:
            raise RuntimeError(f"{model_path}: mean PSNR {mean_psnr:.3f} dB here, {recorded:.3f} dB in "
                               f"{FLAGS.results}: not the same frames or inputs")
        pixels = sum(count for _, count in totals.values())
        out["rows"][name] = {
            "mean_psnr_db": mean_psnr, "recorded_mean_psnr_db": recorded,
            "regions": {region: {"psnr_db": pooled_psnr(sse, count), "share": count / pixels}
                        for region, (sse, count) in totals.items()},
        }
        print(name, " ".join(f"{r} {bench_util.fmt(v['psnr_db'], 2)} dB ({v['share']:.1%})"
                             for r, v in out["rows"][name]["regions"].items()), flush=True)
    out["gains"] = gains(out["rows"], FLAGS.vis_row)
    bench_util.write_json(FLAGS.out, out)
    table = [[ablation, ",".join(g["seeds"])] + [bench_util.fmt(g["regions"][r], 2, " dB") for r in REGIONS]
             for ablation, g in out["gains"].items()]
    bench_util.print_table(["NIR row vs " + FLAGS.vis_row, "seeds"] + list(REGIONS), table)


def gains(rows, vis_ablation):
    """{NIR ablation: {"seeds", "regions": {region: mean PSNR gain over the VIS row}}}."""
    by_ablation = {}
    for name, row in rows.items():
        _, ablation, seed = name.split("/")
        by_ablation.setdefault(ablation, {})[seed] = row
    vis = by_ablation.get(vis_ablation, {})
    out = {}
    for ablation, seeds_rows in by_ablation.items():
        seeds = sorted(set(seeds_rows) & set(vis))
        if ablation == vis_ablation or not seeds:
            continue
        out[ablation] = {"seeds": seeds, "regions": {}}
        for region in REGIONS:
            diffs = [seeds_rows[s]["regions"][region]["psnr_db"] - vis[s]["regions"][region]["psnr_db"]
                     for s in seeds if seeds_rows[s]["regions"][region]["psnr_db"] is not None]
            out[ablation]["regions"][region] = float(np.mean(diffs)) if diffs else None
    return out


if __name__ == "__main__":
    flags.DEFINE_string("results", None, "benchmarks/nir_benefit.py results JSON.", required=True)
    flags.DEFINE_string("work_dir", None, "That run's --work_dir (the trained rows).", required=True)
    flags.DEFINE_string("condition", "over_exposure", "Which condition's rows to measure.")
    flags.DEFINE_string("vis_row", "baseline", "The VIS-only ablation the gains are taken over.")
    flags.DEFINE_string("data_dir", os.path.join(bench_util.REPO_ROOT, "runs", "nir_benefit", "tfds"),
                        "TFDS data directory of the nir_benefit run.")
    flags.DEFINE_string("manual_dir", bench_util.SAMPLES_DIR, "The shared sample pairs.")
    flags.DEFINE_string("out", bench_util.default_out(NAME), "JSON results.")
    app.run(main)
