"""Does the NIR gain grow with training? The rows' checkpoints, evaluated step by step.

    .venv/bin/python studies/nir_gain_by_step.py \
        --nir_rows=runs/nir_benefit_cvm192/low_light_full_seed0,runs/nir_benefit_cvm192/low_light_full_seed1 \
        --vis_rows=runs/nir_benefit/low_light_baseline_seed0,runs/nir_benefit/low_light_baseline_seed1

Each argument is a training folder of `benchmarks/nir_benefit.py` (its `checkpoints/` keep the
last few saves, e.g. steps 1000, 1500, 2000). For every step that all folders hold, the model of
each folder (architecture from its `final.keras`, weights from `ckpt-<step>`) is evaluated on
the test frames of --results (its split strings, same condition and degradation seeds as
`evaluate.py`), and the gain of the NIR rows' mean over the VIS-only rows' mean is reported
per step, overall and per test group. At the last step the PSNRs must equal those --results
recorded for the same folders (checked; the script stops otherwise).
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from studies import default_out  # noqa: E402

NAME = "nir_gain_by_step"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_list("nir_rows", None, "Training folders of the rows with NIR (one per seed).")
flags.DEFINE_list("vis_rows", None, "Training folders of the VIS-only rows (one per seed).")
flags.DEFINE_list("results", [os.path.join(bench_util.RESULTS_DIR, "nir_benefit.json"),
                              os.path.join(bench_util.RESULTS_DIR, "nir_benefit_cvm192.json")],
                  "benchmarks/nir_benefit.py results: the split and the final PSNR of each folder.")
flags.DEFINE_string("condition", "low_light", "clean or low_light (the rows' condition).")
flags.DEFINE_string("data_dir", "runs/nir_benefit/tfds", "TFDS data dir of the rows.")
flags.DEFINE_string("manual_dir", os.path.join(os.path.dirname(REPO), "shared", "data", "nirvis_samples"),
                    "The shared samples folder.")
flags.DEFINE_string("out", default_out(NAME), "JSON results.")

DEGRADATION = {"clean": None, "low_light": "low_light"}


def checkpoint_steps(folder):
    names = os.listdir(os.path.join(folder, "checkpoints"))
    return {int(n[len("ckpt-"):-len(".index")]) for n in names if n.startswith("ckpt-") and n.endswith(".index")}


def recorded_psnrs(results_paths):
    """{training folder (relative): {frame id: PSNR}} of the rows in the results files, and the split."""
    recorded, split = {}, None
    for path in results_paths:
        with open(path) as f:
            data = json.load(f)
        split = split or data["split"]
        if data["split"]["eval_splits"] != split["eval_splits"]:
            raise SystemExit(f"{path}: another split than {results_paths[0]}")
        for row in data["rows_results"].values():
            command = row.get("training", {}).get("command", "")
            folder = next((a.split("=", 1)[1] for a in command.split() if a.startswith("--model_dir=")), None)
            if folder and "evaluation" in row:
                recorded[os.path.normpath(folder)] = {
                    f["id"]: f["model"]["standard"]["psnr"] for f in row["evaluation"]["frames"]}
    return recorded, split


def evaluate_steps(folder, steps, split, condition):
    """{step: {frame id: (group, standard PSNR)}}: the folder's model (loaded once) with the
    weights of each `ckpt-<step>`."""
    import tensorflow as tf

    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.evaluate import evaluation
    from cspsr_tf.model import model_io

    model, config = model_io.load_model(os.path.join(folder, "final.keras"))
    # Evaluation datasets are deterministic (degradation seeds by frame position): built once.
    datasets = [pipeline.make_eval_dataset(
        sources.load_split("nirvis_folder", split_string, FLAGS.data_dir, FLAGS.manual_dir),
        scale=config.scale, degradation=DEGRADATION[condition]) for split_string in split["eval_splits"]]
    checkpoint = tf.train.Checkpoint(model_weights=model_io.weights_by_path(model))
    by_step = {}
    for step in steps:
        checkpoint.read(os.path.join(folder, "checkpoints", f"ckpt-{step}")
                        ).expect_partial().assert_existing_objects_matched()
        frames = {}
        for ds in datasets:
            results = evaluation.evaluate_dataset(model, config, ds, scale=config.scale, save_images=False)
            frames.update({f["id"]: (f["group"], f["model"]["standard"]["psnr"]) for f in results["frames"]})
        print(f"step {step} {folder}: {statistics.fmean(p for _, p in frames.values()):.3f} dB", flush=True)
        by_step[step] = frames
    return by_step


def gain(psnrs, selected):
    """Mean PSNR of the NIR rows and of the VIS rows (means over seeds) on the frames `selected`;
    `psnrs`: {folder: {frame id: (group, PSNR)}}."""
    def rows_mean(rows):
        return statistics.fmean(
            statistics.fmean(psnrs[os.path.normpath(f)][i][1] for i in selected) for f in rows)

    nir, vis = rows_mean(FLAGS.nir_rows), rows_mean(FLAGS.vis_rows)
    return {"nir": round(nir, 4), "vis": round(vis, 4), "gain_db": round(nir - vis, 4),
            "frames": len(selected)}


def main(argv):
    del argv
    if not FLAGS.nir_rows or not FLAGS.vis_rows:
        raise app.UsageError("--nir_rows and --vis_rows are required")
    folders = [os.path.normpath(f) for f in FLAGS.nir_rows + FLAGS.vis_rows]
    for folder in folders:
        if not os.path.isfile(os.path.join(folder, "final.keras")):
            raise app.UsageError(f"{folder}: no final.keras (not a finished training folder)")
    steps = sorted(set.intersection(*(checkpoint_steps(f) for f in folders)))
    if not steps:
        raise app.UsageError("the folders hold no checkpoint step in common")
    recorded, split = recorded_psnrs(FLAGS.results)
    by_folder = {}
    for folder in folders:
        by_folder[folder] = evaluate_steps(folder, steps, split, FLAGS.condition)
        want = recorded.get(bench_util.rel(folder))
        if want:
            last = by_folder[folder][steps[-1]]
            worst = max(abs(last[i][1] - want[i]) for i in want)
            if worst > 0.01:
                raise SystemExit(f"{folder} at step {steps[-1]}: {worst:.3f} dB off the recorded PSNRs")
    per_step = {}
    for step in steps:
        psnrs = {folder: by_folder[folder][step] for folder in folders}
        ids = sorted(psnrs[folders[0]])
        groups = sorted({psnrs[folders[0]][i][0] for i in ids})
        per_step[step] = {"all": gain(psnrs, ids), "groups": {
            g: gain(psnrs, [i for i in ids if psnrs[folders[0]][i][0] == g]) for g in groups}}
        print(f"step {step}: gain {per_step[step]['all']['gain_db']:+.3f} dB "
              f"(NIR {per_step[step]['all']['nir']:.3f}, VIS {per_step[step]['all']['vis']:.3f})", flush=True)
    data = bench_util.header(NAME, {"nir_rows": [bench_util.rel(f) for f in FLAGS.nir_rows],
                                    "vis_rows": [bench_util.rel(f) for f in FLAGS.vis_rows],
                                    "condition": FLAGS.condition, "results": [bench_util.rel(p) for p in FLAGS.results]})
    data.update({"steps": steps, "per_step": per_step,
                 "checked": f"PSNRs at step {steps[-1]} equal the recorded ones (0.01 dB) where recorded"})
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
