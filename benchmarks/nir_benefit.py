"""Does the NIR help? The paper's central ablation (Tables 3-4), trained and tested here.

    .venv/bin/python benchmarks/nir_benefit.py                       # ~30 min on 2 cores
    .venv/bin/python benchmarks/nir_benefit.py --minutes_per_row=30  # longer
    .venv/bin/python benchmarks/nir_benefit.py --smoke               # a few minutes

Four rows at x4, each trained by the project's own `train.py` (a subprocess) with the same
data, seed, batch, patch size and number of steps, then evaluated by `evaluate.py` on the
same held-out frames:

    baseline  single branch, VIS only
    w_nir     single branch, NIR concatenated to the VIS input (no alignment)
    wo_cvm    dual branch (DMF modules: dynamic conv + CSFT), NIR not aligned (no CVM)
    full      CSPSR: dual branch with the cross-view matching module

Data. With the shared samples (`--manual_dir`, default /work/shared/data/nirvis_samples,
read by the `nirvis_folder` builder) the split is fixed by id, before any result, and
never by result:
    test  = the EPFL 'country' pairs with key >= 0040 (0040-0048, 0050, 0051, 0070: 12
            aligned pairs) + the indoor stereo pair of the SANet authors (a scene and rig
            found nowhere else in the data), 13 whole frames;
    train = the 40 other EPFL pairs + the 4 Zhi et al. (Pittsburgh) stereo frames. The
            Pittsburgh frames stay together in training: three are crops made by another
            repository, and whether any of them shows the same frame as the fourth is not
            known, so they are never split.
`nirvis_folder` has one `train` split, stored in TFDS's own (hashed) order, not the CSV's,
so `train[:N]` slices of the CSV order do not exist: the rule is applied to the ids, and
the resulting positions are written as TFDS split strings (`train[3:4]+train[9:12]+...`)
for train.py and evaluate.py. The script then reads the ids of both split strings back
and checks that they are exactly the rule's sets, disjoint, and cover every pair (each
example is a whole frame pair, so no frame is ever cut between the splits). As a check for
near-duplicate scenes across the split, every test frame's highest correlation with a
training frame (64x64 grey thumbnails) is reported.
Without the samples, the builder-defined splits of `nirvis_synthetic` (train / test) are
used.

Budget. Every row trains the same number of steps. By default that number comes from a
calibration: two short runs of the most expensive row (`full`, 5 and 25 steps) give its
time per step, and the steps are chosen so that `full` trains for --minutes_per_row
(default 6, so that the whole run, with the cheaper rows, calibration and evaluation,
stays near 30 minutes on 2 cores). --steps fixes the number instead. With the
calibration, as a safety net, each run is stopped after 1.5 x --minutes_per_row
(train.py --max_minutes; --time_limit_factor=0 turns it off); a row stopped that way has
fewer steps, and the table and JSON say so.

Validation during training is off (no best.keras chosen on any data): every row is
evaluated at its final step (final.keras).

Target (issue): `full` at least 0.3 dB PSNR (standard protocol: Y channel, `scale` pixels
shaved) above `baseline` on the held-out frames. Whatever comes out is reported.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import glob  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "nir_benefit"
ROWS = {
    "baseline": "single branch, VIS only",
    "w_nir": "single branch, VIS + NIR concatenated",
    "wo_cvm": "dual branch (DMF), no CVM",
    "full": "CSPSR (dual branch + CVM)",
}
TARGET_GAIN_DB = 0.3
SAMPLES_DIR = "/work/shared/data/nirvis_samples"
EPFL_ID = re.compile(r"^epfl_nirscene1/.*/country/(\d{4})_rgb$")
INDOOR_STEREO_ID = "sanet_own_rgbnir_stereo/lustrouselixir_SANet/Ours/01_target"
SPLIT_RULE = (
    "test = EPFL country pairs with key >= 0040, plus the indoor SANet stereo pair "
    f"({INDOOR_STEREO_ID}); train = every other pair (40 EPFL country pairs and the 4 "
    "Pittsburgh stereo frames). Fixed before any result."
)
CALIBRATION_STEPS = (5, 25)

FLAGS = flags.FLAGS
flags.DEFINE_string("out", bench_util.default_out(NAME), "JSON results (a .md table is written beside it).")
flags.DEFINE_bool("smoke", False, "A short run (tiny preset, 2 steps, 2 test frames) to check the script.")
flags.DEFINE_list("rows", list(ROWS), "Ablation rows to train, in table order.")
flags.DEFINE_string("preset", "small", "Model preset.")
flags.DEFINE_integer("scale", 4, "SR factor.")
flags.DEFINE_string("manual_dir", SAMPLES_DIR, "Folder with pairs.csv (nirvis_folder); if absent, nirvis_synthetic.")
flags.DEFINE_string("dataset", None, "Force a dataset (nirvis_folder or nirvis_synthetic).")
flags.DEFINE_string("work_dir", os.path.join(bench_util.REPO_ROOT, "runs", NAME),
                    "Training runs, evaluations and logs (runs/ is git-ignored).")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: <work_dir>/tfds, so no stale preparation is reused).")
flags.DEFINE_float("minutes_per_row", 6.0, "Training minutes of the `full` row (sets --steps by calibration).")
flags.DEFINE_integer("steps", None, "Steps per row (skips the calibration).")
flags.DEFINE_float("time_limit_factor", 1.5, "Stop a row after this x --minutes_per_row (0: never).")
flags.DEFINE_integer("batch_size", 16, "Training batch size (paper: 32).")
flags.DEFINE_integer("patch_size", 120, "HR patch size (paper: 120).")
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate (paper: 1e-4).")
flags.DEFINE_integer("seed", 0, "Seed of every row (weights and data stream); never chosen by results.")
flags.DEFINE_bool("include_indoor_test", True, "Add the indoor stereo pair to the test frames.")
flags.DEFINE_bool("resume", False, "Keep existing row directories (train.py resumes) instead of starting fresh.")
flags.DEFINE_integer("max_frames", None, "Evaluate at most this many test frames.")


# ---------------------------------------------------------------------------------------
# Splits


def read_ids(builder, split):
    import tensorflow_datasets as tfds

    decoders = {"vis": tfds.decode.SkipDecoding(), "nir": tfds.decode.SkipDecoding()}
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    return [example["id"].numpy().decode() for example in ds]


def is_test_id(frame_id, include_indoor):
    match = EPFL_ID.match(frame_id)
    if match:
        return int(match.group(1)) >= 40
    return include_indoor and frame_id == INDOOR_STEREO_ID


def split_string(indices, base="train"):
    """Sorted positions -> 'train[a:b]+train[c:d]' with one slice per run of positions."""
    parts, start, previous = [], None, None
    for index in sorted(indices):
        if start is None:
            start = previous = index
        elif index == previous + 1:
            previous = index
        else:
            parts.append(f"{base}[{start}:{previous + 1}]")
            start = previous = index
    if start is not None:
        parts.append(f"{base}[{start}:{previous + 1}]")
    return "+".join(parts)


def thumbnails(builder, split):
    import cv2
    import numpy as np

    ds = builder.as_dataset(split=split, shuffle_files=False)
    out = {}
    for example in ds:
        vis = example["vis"].numpy().astype(np.float32)
        grey = vis @ np.array([0.299, 0.587, 0.114], np.float32)
        thumb = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA).ravel()
        thumb -= thumb.mean()
        out[example["id"].numpy().decode()] = thumb / (np.linalg.norm(thumb) + 1e-8)
    return out


def define_splits(dataset, data_dir, manual_dir, include_indoor):
    """The train / test split strings, their ids, and the checks; prepares the data."""
    from cspsr_tf.data import sources

    builder = sources.get_builder(dataset, data_dir, manual_dir)
    if dataset != "nirvis_folder":
        train_ids, test_ids = read_ids(builder, "train"), read_ids(builder, "test")
        return {
            "rule": "the nirvis_synthetic builder's own train / test splits",
            "train_split": "train", "test_split": "test",
            "train_ids": train_ids, "test_ids": test_ids,
            "checks": {"disjoint": not set(train_ids) & set(test_ids)},
        }, builder
    ids = read_ids(builder, "train")
    test_pos = [i for i, frame_id in enumerate(ids) if is_test_id(frame_id, include_indoor)]
    train_pos = [i for i in range(len(ids)) if i not in set(test_pos)]
    if not test_pos or not train_pos:
        raise app.UsageError(f"the split rule leaves an empty side on {manual_dir}: {SPLIT_RULE}")
    test_split, train_split = split_string(test_pos), split_string(train_pos)
    read_test, read_train = read_ids(builder, test_split), read_ids(builder, train_split)
    expected_test = {ids[i] for i in test_pos}
    checks = {
        "test_ids_match_rule": set(read_test) == expected_test,
        "train_ids_match_rule": set(read_train) == set(ids) - expected_test,
        "disjoint": not set(read_test) & set(read_train),
        "cover_all_pairs": len(read_test) + len(read_train) == len(ids),
        "num_pairs": len(ids),
    }
    if not all(v for k, v in checks.items() if k != "num_pairs"):
        raise RuntimeError(f"split strings do not give the rule's frames: {checks}")
    # Near-duplicate scenes across the split (informational).
    thumbs = thumbnails(builder, "train")
    nearest = {}
    for frame_id in read_test:
        best = max((float(thumbs[frame_id] @ thumbs[t]), t) for t in read_train)
        nearest[frame_id] = {"max_correlation": round(best[0], 4), "train_frame": best[1]}
    checks["nearest_train_frame_by_thumbnail"] = nearest
    rule = SPLIT_RULE if include_indoor else SPLIT_RULE.replace(
        f", plus the indoor SANet stereo pair ({INDOOR_STEREO_ID})", ""
    ).replace("train = every other pair (40 EPFL", "train = every other pair except the indoor pair (40 EPFL")
    return {
        "rule": rule, "train_split": train_split, "test_split": test_split,
        "train_ids": sorted(read_train), "test_ids": sorted(read_test), "checks": checks,
    }, builder


# ---------------------------------------------------------------------------------------
# Subprocesses


def run_logged(argv, log_path):
    """Runs a command with stdout + stderr to a log file; returns (returncode, wall s, text)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=bench_util.REPO_ROOT)
    wall = time.perf_counter() - start
    with open(log_path, errors="replace") as log:
        text = log.read()
    return proc.returncode, wall, text


def train_row(row, steps, model_dir, common, max_minutes, log_path, fresh=True):
    if fresh and os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    argv = [sys.executable, os.path.join(bench_util.REPO_ROOT, "train.py"), f"--ablation={row}",
            f"--steps={steps}", f"--model_dir={model_dir}", f"--save_every={max(steps // 4, 50)}",
            "--eval_every=0", *common]
    if max_minutes:
        argv.append(f"--max_minutes={max_minutes}")
    code, wall, text = run_logged(argv, log_path)
    summary = None
    found = re.findall(r"Training summary: (\{.*\})", text)
    if found:
        summary = json.loads(found[-1])
    result = {"returncode": code, "wall_s": round(wall, 1), "log": log_path,
              "command": " ".join(argv[1:])}
    if summary:
        result.update({"step": summary["step"], "train_loop_s": summary["seconds"],
                       "final_losses": summary["losses"]})
    if code != 0:
        result["error"] = text[-2000:]
    return result


def evaluate_row(model_path, out_dir, common_eval, log_path, max_frames):
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    argv = [sys.executable, os.path.join(bench_util.REPO_ROOT, "evaluate.py"),
            f"--model={model_path}", f"--out_dir={out_dir}", "--save_images=false", *common_eval]
    if max_frames:
        argv.append(f"--max_frames={max_frames}")
    code, wall, text = run_logged(argv, log_path)
    paths = glob.glob(os.path.join(out_dir, "*", "results.json"))
    if code != 0 or len(paths) != 1:
        return {"returncode": code, "error": text[-2000:], "log": log_path}
    with open(paths[0]) as f:
        results = json.load(f)
    return {"returncode": code, "wall_s": round(wall, 1), "log": log_path,
            "results_json": paths[0], "mean": results["mean"], "groups": results.get("groups", {}),
            "frames": [{"id": fr["id"], "model": fr["model"], "bicubic": fr["bicubic"]}
                       for fr in results.get("frames", [])]}


# ---------------------------------------------------------------------------------------
# Tables


def metric_cells(block):
    return [bench_util.fmt(block["paper"]["psnr"], 2), bench_util.fmt(block["paper"]["ssim"], 4),
            bench_util.fmt(block["standard"]["psnr"], 2), bench_util.fmt(block["standard"]["ssim"], 4)]


def table_rows(rows_results, bicubic, base_psnr):
    table = [["bicubic", "-", "-", *metric_cells(bicubic), "-"]]
    for row, r in rows_results.items():
        ev = r.get("evaluation", {})
        if "mean" not in ev:
            table.append([row, ROWS.get(row, ""), str(r["training"].get("step", "-")),
                          "FAILED", "", "", "", ""])
            continue
        psnr = ev["mean"]["model"]["standard"]["psnr"]
        delta = "-" if base_psnr is None else f"{psnr - base_psnr:+.2f}"
        table.append([row, ROWS.get(row, ""), str(r["training"].get("step", "-")),
                      *metric_cells(ev["mean"]["model"]), delta])
    return table


HEADERS = ["method", "what", "steps", "PSNR paper", "SSIM paper", "PSNR std", "SSIM std",
           "dPSNR std vs baseline"]


def markdown(data, table):
    lines = [
        f"# NIR benefit (x{data['flags']['scale']}, {data['flags']['preset']} preset)", "",
        f"Dataset `{data['dataset']}`; test: {len(data['split']['test_ids'])} held-out frames "
        f"({data['frames_evaluated']} evaluated), "
        f"train: {len(data['split']['train_ids'])} frames. Split rule: {data['split']['rule']}", "",
        f"Same steps ({data['steps_per_row']}), seed {data['flags']['seed']}, batch "
        f"{data['flags']['batch_size']}, HR patch {data['flags']['patch_size']}, Adam "
        f"lr {data['flags']['learning_rate']} for every row; evaluated at the final step. "
        "`paper`: RGB, 0-255, no shave; `std`: Y (BT.601), `scale` pixels shaved.", "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    lines += ["", f"Target: `full` >= {TARGET_GAIN_DB} dB (std PSNR) above `baseline`: "
              f"{data['verdict']}.", "", f"Machine: {data['machine']['cpu_model']}, "
              f"{data['machine']['cpu_affinity']} cores, TensorFlow {data['machine']['tensorflow']}; "
              f"{data['date_utc']}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------


def main(argv):
    del argv
    import tensorflow_datasets as tfds

    from cspsr_tf.cli import quiet_library_logs

    quiet_library_logs()
    tfds.disable_progress_bar()
    preset, batch, patch, rows = FLAGS.preset, FLAGS.batch_size, FLAGS.patch_size, FLAGS.rows
    work_dir, max_frames, steps = FLAGS.work_dir, FLAGS.max_frames, FLAGS.steps
    if FLAGS.smoke:
        preset, batch, patch, steps = "tiny", 2, 24, FLAGS.steps or 2
        max_frames = max_frames or 2
        work_dir = FLAGS.work_dir + "_smoke"
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise app.UsageError(f"unknown rows {unknown}; choose from {list(ROWS)}")
    data_dir = FLAGS.data_dir or os.path.join(work_dir, "tfds")
    manual_dir = FLAGS.manual_dir
    dataset = FLAGS.dataset or (
        "nirvis_folder" if manual_dir and os.path.isfile(os.path.join(manual_dir, "pairs.csv"))
        else "nirvis_synthetic"
    )
    if dataset != "nirvis_folder":
        manual_dir = None
    started = time.time()

    print(f"Preparing {dataset} in {data_dir} and checking the split ...", flush=True)
    split, _ = define_splits(dataset, data_dir, manual_dir, FLAGS.include_indoor_test)
    print(f"  train: {len(split['train_ids'])} frames ({split['train_split']})")
    print(f"  test:  {len(split['test_ids'])} frames ({split['test_split']})")
    for frame_id, near in split["checks"].get("nearest_train_frame_by_thumbnail", {}).items():
        if near["max_correlation"] > 0.95:
            print(f"  note: test frame {frame_id} looks like training frame "
                  f"{near['train_frame']} (thumbnail correlation {near['max_correlation']})")

    common = [f"--dataset={dataset}", f"--data_dir={data_dir}", f"--preset={preset}",
              f"--scale={FLAGS.scale}", f"--batch_size={batch}", f"--patch_size={patch}",
              f"--learning_rate={FLAGS.learning_rate}", f"--seed={FLAGS.seed}",
              f"--train_split={split['train_split']}", f"--val_split={split['train_split']}"]
    common_eval = [f"--dataset={dataset}", f"--data_dir={data_dir}",
                   f"--split={split['test_split']}"]
    if manual_dir:
        common.append(f"--manual_dir={manual_dir}")
        common_eval.append(f"--manual_dir={manual_dir}")

    calibration = None
    if steps is None:
        print(f"Calibrating the step time of `full` ({CALIBRATION_STEPS} steps) ...", flush=True)
        runs = []
        for n in CALIBRATION_STEPS:
            runs.append(train_row("full", n, os.path.join(work_dir, f"calibration_{n}"), common,
                                  0, os.path.join(work_dir, "logs", f"calibration_{n}.log")))
        if any("train_loop_s" not in r for r in runs):
            raise RuntimeError(f"calibration failed: {runs}")
        per_step = (runs[1]["train_loop_s"] - runs[0]["train_loop_s"]) / (
            CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])
        per_step = max(per_step, 1e-3)
        steps = max(1, int(FLAGS.minutes_per_row * 60 / per_step))
        calibration = {"runs": runs, "full_step_s": per_step, "minutes_per_row": FLAGS.minutes_per_row}
        print(f"  full: {per_step:.3f} s/step -> {steps} steps per row", flush=True)
    max_minutes = 0.0
    if FLAGS.time_limit_factor > 0 and not FLAGS.smoke:
        max_minutes = FLAGS.time_limit_factor * FLAGS.minutes_per_row
        if FLAGS.steps is not None and calibration is None:
            max_minutes = 0.0  # fixed steps asked for: no time cut

    results = {}
    for row in rows:
        model_dir = os.path.join(work_dir, row)
        print(f"Training {row} ({ROWS[row]}) for {steps} steps ...", flush=True)
        training = train_row(row, steps, model_dir, common, max_minutes,
                             os.path.join(work_dir, "logs", f"train_{row}.log"),
                             fresh=not FLAGS.resume)
        results[row] = {"description": ROWS[row], "training": training}
        if "error" in training:
            print(f"  training failed (see {training['log']})")
            continue
        print(f"  step {training.get('step')}, {training.get('train_loop_s')} s; evaluating ...",
              flush=True)
        evaluation = evaluate_row(os.path.join(model_dir, "final.keras"),
                                  os.path.join(work_dir, "eval", row), common_eval,
                                  os.path.join(work_dir, "logs", f"eval_{row}.log"), max_frames)
        results[row]["evaluation"] = evaluation
        if "error" in evaluation:
            print(f"  evaluation failed (see {evaluation['log']})")

    evaluated = [r["evaluation"] for r in results.values() if "mean" in r.get("evaluation", {})]
    bicubic = evaluated[0]["mean"]["bicubic"] if evaluated else None
    base = results.get("baseline", {}).get("evaluation", {}).get("mean")
    full = results.get("full", {}).get("evaluation", {}).get("mean")
    base_psnr = base["model"]["standard"]["psnr"] if base else None
    gain = None
    if base and full:
        gain = full["model"]["standard"]["psnr"] - base_psnr
    step_counts = {row: r["training"].get("step") for row, r in results.items()}
    equal_steps = len(set(step_counts.values())) == 1 and steps in step_counts.values()
    if gain is None:
        verdict = "not measured (a row failed)"
    else:
        verdict = f"{gain:+.2f} dB, {'MET' if gain >= TARGET_GAIN_DB else 'NOT MET'}"
        if not equal_steps:
            verdict += f" (rows trained unequal steps: {step_counts})"

    data = bench_util.header(NAME, {
        "rows": rows, "preset": preset, "scale": FLAGS.scale, "batch_size": batch,
        "patch_size": patch, "learning_rate": FLAGS.learning_rate, "seed": FLAGS.seed,
        "minutes_per_row": FLAGS.minutes_per_row, "steps_flag": FLAGS.steps,
        "time_limit_minutes_per_row": max_minutes, "max_frames": max_frames,
        "include_indoor_test": FLAGS.include_indoor_test, "smoke": FLAGS.smoke,
        "work_dir": work_dir, "data_dir": data_dir, "manual_dir": manual_dir,
    })
    data.update({
        "dataset": dataset, "split": split, "calibration": calibration,
        "steps_per_row": steps, "step_counts": step_counts, "equal_steps": equal_steps,
        "bicubic": bicubic, "rows_results": results,
        "gain_full_over_baseline_standard_psnr_db": gain,
        "target": {"full_minus_baseline_standard_psnr_db_min": TARGET_GAIN_DB},
        "meets_target": None if gain is None else gain >= TARGET_GAIN_DB,
        "verdict": verdict, "total_minutes": round((time.time() - started) / 60, 1),
    })
    table = table_rows(results, bicubic, base_psnr) if bicubic else []
    data["frames_evaluated"] = evaluated[0]["mean"]["num_frames"] if evaluated else 0
    print()
    print(f"x{FLAGS.scale}, {preset} preset, {steps} steps per row, "
          f"{data['frames_evaluated']} of {len(split['test_ids'])} held-out frames evaluated "
          f"({dataset})")
    if table:
        bench_util.print_table(HEADERS, table)
    print(f"Target: full >= {TARGET_GAIN_DB} dB above baseline (std PSNR): {verdict}")
    print(f"Total {data['total_minutes']} min")
    bench_util.write_json(FLAGS.out, data)
    md_path = os.path.splitext(FLAGS.out)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(markdown(data, table))
    print(f"Wrote {md_path}")


if __name__ == "__main__":
    app.run(main)
