"""Does the NIR help? VIS-only baseline against the dual branch, clean and in low light.

    .venv/bin/python benchmarks/nir_benefit.py                    # all 12 rows (hours on 2 cores)
    .venv/bin/python benchmarks/nir_benefit.py --calibrate_only   # time per step, projected total
    .venv/bin/python benchmarks/nir_benefit.py --resume           # skip rows already done
    .venv/bin/python benchmarks/nir_benefit.py --rows=clean/full/seed0,clean/baseline/seed0
    .venv/bin/python benchmarks/nir_benefit.py --smoke            # a few minutes, figures meaningless

Data: the shared samples (`nirvis_folder` builder on `<repo>/../shared/data/nirvis_samples`,
found relative to the repository root; --manual_dir to change it). Split rule, fixed by id
before any result (and recorded verbatim in the JSON):

    EPFL pairs (ids starting with `epfl_nirscene1/`): within each category folder (the id's
    parent folder name, e.g. `country`, `urban`), sort the ids; the pairs at sorted positions
    3, 7, 11, ... (position % 4 == 3) are test, the rest train. The Zhi et al. Pittsburgh
    stereo frames (ids starting with `pittsburgh_stereo/`) are all train (crops of possibly
    the same frames are never split). The SANet indoor stereo pair
    (`sanet_own_rgbnir_stereo/...`) and the low-light pair (`lowlight_rgbnir/...`) are test.
    Any id matching none of these (future rows of pairs.csv) is train.

"Parent folder" is taken literally: the CDLSR urban TIFFs (`.../Train_RGB_NIR/NNNN_rgb`) form a
group `Train_RGB_NIR` of their own, the Tangzl7 pairs the groups of their own folders. Each
example is a whole frame pair, so no pair is ever cut between the splits. `nirvis_folder` has
one `train` split in TFDS's own (hashed) order, so the rule is applied to the ids and written
as TFDS split strings (`train[3:4]+train[9:12]+...`); the ids of both strings are read back
and checked (disjoint, covering every pair, equal to the rule's sets). Every test frame's most
similar training frame (64x64 grey thumbnail correlation) is reported (near duplicates).
evaluate.py names its output folder after the split string, and the test string is longer
than a file name may be, so the test split goes to evaluate.py (and nir_usage.py) as a
comma-separated list of shorter split strings (one evaluate.py call); the frames of all of
them are merged and averaged with `cspsr_tf.evaluate.evaluation.aggregate`, the function evaluate.py
itself uses.

Conditions (training and evaluation use the same one): `clean` (`--degradation=none`,
bicubic LR, the paper's protocol) and `low_light` (`--degradation=low_light`: the LR VIS is
darkened x0.25 with shot and read noise; the NIR stays clean, the HR target is the clean VIS).
`dark` (`--degradation=low_light:gain=0.1`, the same noise constants at a 0.1 exposure) is run
only when named in --rows: it was added after the main table, when
`benchmarks/nir_guided_filter.py` showed a classical NIR-guided filter gaining +0.14 dB over the
VIS-only ones at `low_light` and +0.65 dB at this exposure. `very_dark`
(`--degradation=low_light:gain=0.05`), likewise only when named, was added later still, where
that filter gains +1.29 dB: does the trained model turn that into a gain above +1.0 dB?
`over_exposure` (`--degradation=over_exposure`: the LR VIS x2, clipped at 1; deterministic),
likewise only when named, is the abstract's "high brightness": the VIS loses what saturates,
the clean NIR keeps that structure.
`mild_over_exposure` (x1.5) and `strong_over_exposure` (x3), likewise only when named, were
added last, to see how the NIR's gain follows the share of the VIS that saturates.
`blind` (each training example draws clean, low light, over-exposure or noise; see
`cspsr_tf/data/degradations.py`), likewise only when named, trains the shipped presets'
models; its evaluation here draws a condition per frame, and `benchmarks/model_zoo.py`
scores those models in each condition.

Rows, run in this order so that a partial run is still a useful table (JSON + markdown
written after every row; --resume skips rows already in the JSON with the same settings):
    low_light/baseline/seed0, low_light/full/seed0, clean/baseline/seed0, clean/full/seed0,
    low_light/baseline/seed1, low_light/full/seed1, clean/baseline/seed1, clean/full/seed1,
    clean/baseline_wide/seed0, low_light/baseline_wide/seed0, clean/w_nir/seed0,
    clean/wo_cvm/seed0
`baseline` is the single-branch VIS-only model, `full` CSPSR (dual branch with DMF modules
and the CVM), `w_nir` the single branch with the NIR concatenated, `wo_cvm` the dual branch
without the CVM. Rows run only when named: `full_gf` (the LR VIS guided-filtered by the
aligned NIR also at the VIS branch input) and, for dark inputs, `full_gf_skip` (`full_gf` whose
bicubic skip upsamples the guided-filtered VIS, with a learned gain). The rows of variants
retired since (`full_early`, `full_gf_bank`, `baseline_skip_gain`, `full_lgf_skip`,
`full_lgf_sup_skip`, `full_vis2`, `full_gf_skip_vis2`: measured to give nothing) stay in the
committed result files; the commit before their retirement (d0b8592) runs them.

A DMF module's VIS path has one 3x3 conv after CSFT where the baseline's residual block has
two, so at equal T the baseline has the stronger VIS path: `baseline_wide` is the baseline
with `--num_modules` raised until its parameter count is the closest to the full model's SR
part (the full model's count without the layer `cvm`); both counts are printed and recorded.

Every row: train.py with the same steps (--steps, default 2000), batch 16, HR patch 96, x4,
Adam 5e-4 with a cosine schedule, no validation, seed 0 or 1 (weights and data stream), the
`small` preset by default (--preset, --channels and --num_modules pass through); rows with a
CVM also get --cvm_steps (CVM pre-training, default 300) when train.py knows that flag. Then
evaluate.py on the test frames under the row's condition, at the final step (final.keras);
and for every dual-branch and w_nir row nir_usage.py: PSNR with the NIR replaced by a flat
grey image and by another frame's NIR, and the mean CSFT gates per DMF module.

Targets (issue; standard protocol: Y, `scale` pixels shaved; full vs baseline, means over
seeds): low_light >= +1.0 dB, clean >= +0.3 dB; the dual branch must also beat
`baseline_wide`. Whatever comes out is reported, with the seed spread.

Calibration (by default before the rows; --calibrate_only stops after it): two short runs
(5 and 25 steps, CVM pre-training as many) of `full`, `baseline` and `baseline_wide` give each
one's time per step (the difference cancels start-up and tracing), one evaluate.py and one
nir_usage.py call on 3 frames the evaluation time; the projected total of the selected rows
is printed and recorded.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from benchmarks.sample_split import chunked_split_strings, define_splits  # noqa: E402
from cspsr_tf.model.configs import CVM_NORMALIZATIONS  # noqa: E402  (no TensorFlow import)

NAME = "nir_benefit"
SAMPLES_DIR = Path(bench_util.SAMPLES_DIR)
CONDITIONS = {"clean": "none", "low_light": "low_light", "dark": "low_light:gain=0.1",
              "very_dark": "low_light:gain=0.05", "over_exposure": "over_exposure",
              "mild_over_exposure": "over_exposure:gain=1.5", "strong_over_exposure": "over_exposure:gain=3.0",
              "blind": "blind"}
ABLATIONS = {
    "baseline": "single branch, VIS only",
    "full": "CSPSR: dual branch (DMF) + CVM",
    "baseline_wide": "single branch, VIS only, T raised to the full model's SR parameters",
    "w_nir": "single branch, VIS + NIR concatenated",
    "wo_cvm": "dual branch (DMF), no CVM",
    "full_gf": "CSPSR with the VIS guided-filtered by the NIR also at the VIS branch input",
    "full_gf_skip": "full_gf whose VIS skip is the guided-filtered VIS, with a learned gain",
}
TRAIN_ABLATION = {"baseline_wide": "baseline"}
USES_CVM = {"full", "full_gf", "full_gf_skip"}
NIR_USAGE_ROWS = USES_CVM | {"wo_cvm", "w_nir"}
ROW_ORDER = [
    "low_light/baseline/seed0", "low_light/full/seed0", "clean/baseline/seed0", "clean/full/seed0",
    "low_light/baseline/seed1", "low_light/full/seed1", "clean/baseline/seed1", "clean/full/seed1",
    "clean/baseline_wide/seed0", "low_light/baseline_wide/seed0", "clean/w_nir/seed0",
    "clean/wo_cvm/seed0",
]
SMOKE_ROWS = ["low_light/baseline/seed0", "low_light/full/seed0"]
TARGETS_DB = {"low_light": 1.0, "clean": 0.3, "dark": 1.0, "very_dark": 1.0,
              "over_exposure": 1.0, "mild_over_exposure": 1.0, "strong_over_exposure": 1.0}
CALIBRATION_STEPS = (5, 25)
CALIBRATION_KINDS = ("full", "baseline", "baseline_wide")
# evaluate.py names a folder "<dataset>_<split>": keep each split string well below NAME_MAX.

FLAGS = flags.FLAGS
flags.DEFINE_string("out", bench_util.default_out(NAME), "JSON results (a .md table is written beside it).")
flags.DEFINE_bool("smoke", False, "Tiny preset, 2 steps, 2 test frames, 2 rows: checks the script.")
flags.DEFINE_list("rows", None, f"Rows to run, by name (default: all, in this order: {','.join(ROW_ORDER)}).")
flags.DEFINE_string("preset", "small", "Model preset.")
flags.DEFINE_integer("channels", None, "Override of the preset's channels (passed to train.py).")
flags.DEFINE_integer("num_modules", None, "Override of the preset's num_modules (passed to train.py).")
flags.DEFINE_string("manual_dir", str(SAMPLES_DIR), "Folder with pairs.csv (nirvis_folder).")
flags.DEFINE_string("split_rule_dir", None, "Apply the split rule to this folder's ids (default: "
                    "--manual_dir's), so a copy with rows left out keeps the test frames it has.")
flags.DEFINE_string("work_dir", os.path.join(bench_util.REPO_ROOT, "runs", NAME),
                    "Training runs, evaluations and logs (runs/ is git-ignored).")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: <work_dir>/tfds).")
flags.DEFINE_integer("steps", 2000, "SR training steps of every row.")
flags.DEFINE_integer("cvm_steps", 300, "CVM pre-training steps of rows with a CVM (train.py --cvm_steps).")
flags.DEFINE_integer("cvm_patch_size", None, "HR patch side of the CVM pre-training (train.py "
                     "--cvm_patch_size; default: train.py's, the largest the frames allow up to 192).")
flags.DEFINE_enum("cvm_normalization", None, list(CVM_NORMALIZATIONS),
                  "CVM normalisation of rows with a CVM (train.py --cvm_normalization; default: train.py's).")
flags.DEFINE_integer("batch_size", 16, "Training batch size.")
flags.DEFINE_integer("patch_size", 96, "HR patch size.")
flags.DEFINE_float("learning_rate", 5e-4, "Adam learning rate.")
flags.DEFINE_string("lr_schedule", "cosine", "train.py --lr_schedule.")
flags.DEFINE_bool("resume", False, "Skip rows already in --out with the same settings; keep run folders (train.py resumes).")
flags.DEFINE_bool("calibrate", True, "Measure the time per step first and print the projected total.")
flags.DEFINE_bool("calibrate_only", False, "Stop after the calibration.")
flags.DEFINE_integer("max_frames", None, "Evaluate only the first N test frames (TFDS order).")

SCALE = 4


def python_cmd():
    return bench_util.rel(sys.executable)


# ---------------------------------------------------------------------------------------
# Splits


def model_overrides(num_modules=None):
    overrides = {}
    if FLAGS.channels is not None:
        overrides["channels"] = FLAGS.channels
    if num_modules is not None:
        overrides["num_modules"] = num_modules
    elif FLAGS.num_modules is not None:
        overrides["num_modules"] = FLAGS.num_modules
    return overrides


def param_counts(preset):
    """SR parameters of full (CVM left out) and baseline, and the baseline_wide T."""
    import keras

    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config

    def count(ablation, **overrides):
        model = build_cspsr(get_config(preset, ablation, scale=SCALE, **overrides))
        total = model.count_params()
        try:
            cvm = model.get_layer("cvm").count_params()
        except ValueError:
            cvm = 0
        keras.backend.clear_session()
        return total, cvm

    full_total, full_cvm = count("full", **model_overrides())
    target = full_total - full_cvm
    base_t = get_config(preset, "baseline", **model_overrides()).num_modules
    candidates = {}
    t = 1
    while True:
        candidates[t] = count("baseline", **model_overrides(t))[0]
        if candidates[t] >= target or t > 200:
            break
        t += 1
    wide_t = min(candidates, key=lambda k: (abs(candidates[k] - target), k))
    return {
        "full_total": full_total, "full_cvm": full_cvm, "full_sr": target,
        "baseline_num_modules": base_t,
        "baseline": count("baseline", **model_overrides())[0],
        "baseline_wide_num_modules": wide_t, "baseline_wide": candidates[wide_t],
        "wo_cvm": count("wo_cvm", **model_overrides())[0],
        "w_nir": count("w_nir", **model_overrides())[0],
    }


# ---------------------------------------------------------------------------------------
# Subprocesses


def run_logged(argv, log_path):
    """Runs a command (cwd: repository root) logging stdout + stderr; (returncode, wall s, text)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=bench_util.REPO_ROOT)
    wall = time.perf_counter() - start
    with open(log_path, errors="replace") as log:
        text = log.read()
    return proc.returncode, wall, text


_TRAIN_FLAGS = None


def train_flags():
    """The flags train.py defines (from --helpfull), to pass --cvm_steps only where known."""
    global _TRAIN_FLAGS
    if _TRAIN_FLAGS is None:
        proc = subprocess.run([sys.executable, "train.py", "--helpfull"], capture_output=True,
                              text=True, cwd=bench_util.REPO_ROOT)
        _TRAIN_FLAGS = set(re.findall(r"--(?:\[no\])?([a-z_0-9]+):", proc.stdout + proc.stderr))
    return _TRAIN_FLAGS


def train_argv(ctx, condition, ablation, seed, steps, model_dir, cvm_steps):
    argv = [python_cmd(), "train.py", "--dataset=nirvis_folder", f"--manual_dir={bench_util.rel(ctx['manual_dir'])}",
            f"--data_dir={bench_util.rel(ctx['data_dir'])}", f"--train_split={ctx['split']['train_split']}",
            f"--preset={ctx['preset']}", f"--ablation={TRAIN_ABLATION.get(ablation, ablation)}",
            f"--scale={SCALE}", f"--batch_size={ctx['batch']}", f"--patch_size={ctx['patch']}",
            f"--steps={steps}", f"--learning_rate={FLAGS.learning_rate}",
            f"--lr_schedule={FLAGS.lr_schedule}", f"--seed={seed}",
            f"--degradation={CONDITIONS[condition]}", "--eval_every=0",
            f"--save_every={max(steps // 4, 50)}", f"--model_dir={bench_util.rel(model_dir)}"]
    wide = ctx["params"]["baseline_wide_num_modules"] if ablation == "baseline_wide" else None
    for key, value in model_overrides(wide).items():
        argv.append(f"--{key}={value}")
    if ablation in USES_CVM and "cvm_steps" in train_flags():
        argv.append(f"--cvm_steps={cvm_steps}")
        if FLAGS.cvm_patch_size:
            argv.append(f"--cvm_patch_size={FLAGS.cvm_patch_size}")
    if ablation in USES_CVM and FLAGS.cvm_normalization:
        argv.append(f"--cvm_normalization={FLAGS.cvm_normalization}")
    return argv


def train(argv, model_dir, log_path, fresh=True):
    if fresh and os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    code, wall, text = run_logged(argv, log_path)
    result = {"returncode": code, "wall_s": round(wall, 1), "log": bench_util.rel(log_path),
              "command": " ".join(argv)}
    found = re.findall(r"Training summary: (\{.*\})", text)
    if found:
        summary = json.loads(found[-1])
        result.update({"step": summary["step"], "target_steps": summary["target_steps"],
                       "stopped": summary.get("stopped"), "train_loop_s": summary["seconds"],
                       "final_losses": summary["losses"]})
        pre = summary.get("cvm_pretraining")
        if pre:
            result["cvm_pretraining"] = {"step": pre["step"], "seconds": pre["seconds"],
                                         "final_losses": pre["losses"]}
    if code != 0 or not found:
        result["error"] = text[-2000:]
    return result


def eval_label(split):
    """evaluate.py's sub-folder name of a (nirvis_folder, split)."""
    return f"nirvis_folder_{split}".replace("[", "_").replace("]", "").replace(":", "-")


def evaluate(ctx, condition, model_path, out_dir, log_path):
    """evaluate.py on the test frames (one call, the split strings comma-separated), merged."""
    from cspsr_tf.evaluate.evaluation import aggregate

    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    argv = [python_cmd(), "evaluate.py", f"--model={bench_util.rel(model_path)}", "--dataset=nirvis_folder",
            f"--manual_dir={bench_util.rel(ctx['manual_dir'])}", f"--data_dir={bench_util.rel(ctx['data_dir'])}",
            f"--split={','.join(ctx['split']['eval_splits'])}",
            f"--degradation={CONDITIONS[condition]}", "--save_images=false",
            f"--out_dir={bench_util.rel(out_dir)}"]
    code, wall, text = run_logged(argv, log_path)
    result = {"returncode": code, "wall_s": round(wall, 1), "log": bench_util.rel(log_path),
              "command": " ".join(argv)}
    frames = []
    try:
        for split in ctx["split"]["eval_splits"]:
            with open(os.path.join(out_dir, eval_label(split), "results.json")) as f:
                frames += json.load(f)["frames"]
    except (OSError, ValueError, KeyError) as error:
        result["error"] = f"{error}\n{text[-2000:]}"
        return result
    if code != 0:
        result["error"] = text[-2000:]
        return result
    groups = {}
    for frame in frames:
        groups.setdefault(frame["group"], []).append(frame)
    result.update({
        "mean": aggregate(frames),
        "groups": {g: aggregate(items) for g, items in sorted(groups.items())},
        "frames": [{"id": fr["id"], "model": fr["model"], "bicubic": fr["bicubic"],
                    "seconds": fr.get("seconds")} for fr in frames],
    })
    return result


def nir_usage(ctx, condition, model_path, out_path, log_path):
    argv = [python_cmd(), "benchmarks/nir_usage.py", f"--model={bench_util.rel(model_path)}",
            "--dataset=nirvis_folder", f"--manual_dir={bench_util.rel(ctx['manual_dir'])}",
            f"--data_dir={bench_util.rel(ctx['data_dir'])}", f"--split={','.join(ctx['split']['eval_splits'])}",
            f"--degradation={CONDITIONS[condition]}", f"--out={bench_util.rel(out_path)}"]
    if os.path.exists(out_path):
        os.remove(out_path)
    code, wall, text = run_logged(argv, log_path)
    result = {"returncode": code, "wall_s": round(wall, 1), "log": bench_util.rel(log_path),
              "command": " ".join(argv)}
    if code != 0 or not os.path.exists(out_path):
        result["error"] = text[-2000:]
        return result
    with open(out_path) as f:
        usage = json.load(f)
    usage.pop("frames", None)  # per-frame figures stay in out_path
    result.update(usage)
    result["json"] = bench_util.rel(out_path)
    return result


# ---------------------------------------------------------------------------------------
# Calibration


def calibrate(ctx, kinds, steps_pair, condition="low_light"):
    """Time per SR step (and CVM step) of each kind; evaluation time per frame."""
    work = os.path.join(ctx["work_dir"], "calibration")
    out = {"steps": list(steps_pair), "condition": condition, "kinds": {}}
    for kind in kinds:
        runs = []
        for n in steps_pair:
            model_dir = os.path.join(work, f"{kind}_{n}")
            argv = train_argv(ctx, condition, kind, 0, n, model_dir, n)
            argv = [a if not a.startswith("--save_every=") else f"--save_every={n}" for a in argv]
            print(f"  {kind}, {n} steps ...", flush=True)
            runs.append(train(argv, model_dir, os.path.join(work, "logs", f"{kind}_{n}.log")))
        if any("error" in r for r in runs):
            raise RuntimeError(f"calibration of {kind} failed: {[r.get('error') for r in runs]}")
        d_steps = steps_pair[1] - steps_pair[0]
        entry = {"runs": runs,
                 "step_s": max((runs[1]["train_loop_s"] - runs[0]["train_loop_s"]) / d_steps, 1e-4),
                 "startup_s": runs[0]["wall_s"] - runs[0]["train_loop_s"]}
        if "cvm_pretraining" in runs[0] and "cvm_pretraining" in runs[1]:
            a, b = runs[0]["cvm_pretraining"], runs[1]["cvm_pretraining"]
            entry["cvm_step_s"] = max((b["seconds"] - a["seconds"]) / max(b["step"] - a["step"], 1), 1e-4)
            entry["startup_s"] -= a["seconds"]
        out["kinds"][kind] = entry
        print(f"    {entry['step_s']:.3f} s/step" + (
            f", CVM {entry['cvm_step_s']:.3f} s/step" if "cvm_step_s" in entry else "")
            + f", start-up {entry['startup_s']:.0f} s", flush=True)
    if "full" in kinds:
        model = os.path.join(work, f"full_{steps_pair[1]}", "final.keras")
        sub = dict(ctx, split=dict(ctx["split"], eval_splits=chunked_split_strings(
            ctx["test_pos"][:3])))
        print("  evaluate.py and nir_usage.py on 3 frames ...", flush=True)
        ev = evaluate(sub, condition, model, os.path.join(work, "eval"),
                      os.path.join(work, "logs", "eval.log"))
        usage = nir_usage(sub, condition, model, os.path.join(work, "usage.json"),
                          os.path.join(work, "logs", "usage.log"))
        if "error" in ev or "error" in usage:
            raise RuntimeError(f"calibration evaluation failed: {ev.get('error')} {usage.get('error')}")
        frame_s = sum(fr["seconds"] for fr in ev["frames"]) / len(ev["frames"])
        out["eval"] = {"frames": len(ev["frames"]), "wall_s": ev["wall_s"], "frame_s": frame_s,
                       "startup_s": ev["wall_s"] - frame_s * len(ev["frames"]),
                       "usage_wall_s": usage["wall_s"]}
    return out


def project(calibration, rows, steps, cvm_steps, num_test):
    """Projected wall seconds of each row from the calibration (estimates)."""
    kinds = calibration["kinds"]
    ev = calibration.get("eval")
    per_row = {}
    for name in rows:
        _, ablation, _ = parse_row(name)
        kind = {"w_nir": "baseline", "wo_cvm": "full"}.get(ablation, ablation)
        if kind not in kinds:
            continue
        k = kinds[kind]
        seconds = k["startup_s"] + steps * k["step_s"]
        if ablation in USES_CVM:
            seconds += cvm_steps * k.get("cvm_step_s", 0.0)
        if ev:
            seconds += ev["startup_s"] + num_test * ev["frame_s"]
            if ablation in NIR_USAGE_ROWS:
                seconds += ev["usage_wall_s"] / ev["frames"] * num_test
        per_row[name] = round(seconds)
    return {"per_row_s": per_row, "total_s": sum(per_row.values()),
            "note": "estimate: w_nir timed as baseline, wo_cvm as full without the CVM phase"}


# ---------------------------------------------------------------------------------------
# Rows and tables


def parse_row(name):
    match = re.fullmatch(r"([a-z_]+)/([a-z0-9_]+)/seed(\d+)", name)
    if not match or match.group(1) not in CONDITIONS or match.group(2) not in ABLATIONS:
        raise app.UsageError(f"bad row {name!r}: <{'|'.join(CONDITIONS)}>/<{'|'.join(ABLATIONS)}>/seed<N>")
    return match.group(1), match.group(2), int(match.group(3))


def row_settings(ctx, name):
    condition, ablation, seed = parse_row(name)
    return {
        "condition": condition, "ablation": ablation, "seed": seed, "steps": ctx["steps"],
        "cvm_steps": ctx["cvm_steps"] if ablation in USES_CVM else None,
        "preset": ctx["preset"], "overrides": model_overrides(
            ctx["params"]["baseline_wide_num_modules"] if ablation == "baseline_wide" else None),
        "batch_size": ctx["batch"], "patch_size": ctx["patch"], "scale": SCALE,
        "learning_rate": FLAGS.learning_rate, "lr_schedule": FLAGS.lr_schedule,
        "train_split": ctx["split"]["train_split"], "eval_splits": ctx["split"]["eval_splits"],
        # Rows measured before train.py chose the CVM patch itself (it was the SR patch) have
        # no such key, so --resume re-trains them.
        **({"cvm_patch_size": FLAGS.cvm_patch_size or "auto"} if ablation in USES_CVM else {}),
        **({"cvm_normalization": FLAGS.cvm_normalization}
           if FLAGS.cvm_normalization and ablation in USES_CVM else {}),
    }


def psnr_of(row):
    ev = row.get("evaluation", {})
    return ev["mean"]["model"]["standard"]["psnr"] if "mean" in ev else None


def summarize(rows_results):
    """Per condition and ablation: mean, min, max over seeds of the evaluated rows."""
    out = {}
    for name, row in rows_results.items():
        condition, ablation, seed = parse_row(name)
        psnr = psnr_of(row)
        if psnr is None:
            continue
        entry = out.setdefault(condition, {}).setdefault(ablation, {"seeds": [], "psnr": [], "ssim": [],
                                                                     "psnr_paper": [], "steps": [],
                                                                     "grey": [], "other": []})
        mean = row["evaluation"]["mean"]["model"]
        entry["seeds"].append(seed)
        entry["psnr"].append(psnr)
        entry["ssim"].append(mean["standard"]["ssim"])
        entry["psnr_paper"].append(mean["paper"]["psnr"])
        entry["steps"].append(row["training"].get("step"))
        usage = row.get("nir_usage", {})
        if usage.get("delta_grey_db") is not None:
            entry["grey"].append(usage["delta_grey_db"])
            entry["other"].append(usage["delta_other_db"])
        entry["bicubic"] = row["evaluation"]["mean"]["bicubic"]["standard"]["psnr"]
    for condition in out.values():
        for entry in condition.values():
            values = entry["psnr"]
            entry.update({"mean": sum(values) / len(values), "min": min(values), "max": max(values)})
    return out


def mean_of(values):
    return sum(values) / len(values) if values else None


def targets(summary):
    out = {}
    for condition, target in TARGETS_DB.items():
        entries = summary.get(condition, {})
        full, base, wide = entries.get("full"), entries.get("baseline"), entries.get("baseline_wide")
        result = {"target_db": target, "full_minus_baseline_db": None, "met": None,
                  "full_minus_baseline_wide_db": None, "beats_baseline_wide": None,
                  "worst_case_full_min_minus_baseline_max_db": None}
        if full and base:
            gain = full["mean"] - base["mean"]
            result.update({"full_minus_baseline_db": gain, "met": gain >= target,
                           "worst_case_full_min_minus_baseline_max_db": full["min"] - base["max"],
                           "seeds_full": full["seeds"], "seeds_baseline": base["seeds"]})
        if full and wide:
            result["full_minus_baseline_wide_db"] = full["mean"] - wide["mean"]
            result["beats_baseline_wide"] = full["mean"] > wide["mean"]
        if result["met"] is None:
            result["verdict"] = "not measured"
        else:
            result["verdict"] = (f"{result['full_minus_baseline_db']:+.2f} dB vs >= +{target} dB: "
                                 f"{'MET' if result['met'] else 'MISSED'}")
            if result["beats_baseline_wide"] is not None:
                result["verdict"] += (f"; vs baseline_wide {result['full_minus_baseline_wide_db']:+.2f} dB"
                                      f" ({'wins' if result['beats_baseline_wide'] else 'LOSES'})")
            else:
                result["verdict"] += "; baseline_wide not measured"
        out[condition] = result
    return out


TABLE_HEADERS = ["row", "seeds", "steps", "PSNR std (mean)", "spread min..max", "SSIM std",
                 "PSNR paper", "gain vs baseline", "NIR->grey", "NIR->other"]


def table(summary, condition):
    entries = summary.get(condition, {})
    if not entries:
        return []
    any_entry = next(iter(entries.values()))
    rows = [["bicubic", "-", "-", bench_util.fmt(any_entry["bicubic"], 2), "", "", "", "", "", ""]]
    base = entries.get("baseline")
    for ablation in ABLATIONS:
        e = entries.get(ablation)
        if not e:
            continue
        gain = "-" if not base else f"{e['mean'] - base['mean']:+.2f}"
        rows.append([ablation, ",".join(map(str, e["seeds"])), ",".join(map(str, e["steps"])),
                     bench_util.fmt(e["mean"], 2),
                     f"{e['min']:.2f}..{e['max']:.2f} (+-{(e['max'] - e['min']) / 2:.2f})",
                     bench_util.fmt(mean_of(e["ssim"]), 4), bench_util.fmt(mean_of(e["psnr_paper"]), 2),
                     gain, bench_util.fmt(mean_of(e["grey"]), 2, " dB"),
                     bench_util.fmt(mean_of(e["other"]), 2, " dB")])
    return rows


def gate_lines(rows_results):
    lines = []
    for name, row in rows_results.items():
        usage = row.get("nir_usage", {})
        for module, g in usage.get("gates", {}).items():
            lines.append([name, module, *(f"{g[k]:.3f}" for k in ("w_s1", "w_s2", "w_c1", "w_c2")),
                          f"{g['nir_term_rms']:.4f}", f"{g['vis_term_rms']:.4f}"])
    return lines


def markdown(data):
    f = data["flags"]
    split = data["split"]
    lines = [
        f"# NIR benefit (x{SCALE}, `{f['preset']}` preset{', SMOKE: figures meaningless' if f['smoke'] else ''})",
        "",
        f"Test: {len(split['test_ids'])} held-out whole frame pairs ({len(split['eval_ids'])} "
        f"evaluated), train: {len(split['train_ids'])}. Split rule (fixed before any result): "
        f"{split['rule']}", "",
        f"Every row: {f['steps']} SR steps, batch {f['batch_size']}, HR patch {f['patch_size']}, "
        f"Adam {f['learning_rate']} ({f['lr_schedule']}), no validation, final step; rows with a "
        f"CVM: {f['cvm_steps']} CVM pre-training steps (if train.py has --cvm_steps: "
        f"{data['train_has_cvm_steps']}). Parameters: full {data['params']['full_sr']} "
        f"(+{data['params']['full_cvm']} CVM), baseline {data['params']['baseline']} "
        f"(T={data['params']['baseline_num_modules']}), baseline_wide "
        f"{data['params']['baseline_wide']} (T={data['params']['baseline_wide_num_modules']}). "
        "`std`: Y (BT.601), 4 pixels shaved; `paper`: RGB, no shave. Spread: min..max over "
        "seeds. NIR->grey / NIR->other: PSNR change when the NIR input is a flat grey image / "
        "another frame's NIR (nir_usage.py).", "",
    ]
    for condition in CONDITIONS:
        rows = table(data["summary"], condition)
        if not rows:
            continue
        lines += [f"## {condition}", "", "| " + " | ".join(TABLE_HEADERS) + " |",
                  "|" + "---|" * len(TABLE_HEADERS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    lines += ["## Targets (full vs baseline, standard PSNR, means over seeds)", ""]
    for condition, t in data["targets"].items():
        worst = t.get("worst_case_full_min_minus_baseline_max_db")
        lines.append(f"- {condition}: {t['verdict']}" + (
            f" (worst seed pair {worst:+.2f} dB)" if worst is not None else ""))
    gates = gate_lines(data["rows_results"])
    if gates:
        heads = ["row", "module", "w_s1", "w_s2", "w_c1", "w_c2", "NIR term RMS", "VIS term RMS"]
        lines += ["", "## CSFT gates (means over test pixels and frames, real NIR)", "",
                  "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(r) + " |" for r in gates]
    lines += ["", "## Per group (standard PSNR, model / bicubic)", ""]
    for name, row in data["rows_results"].items():
        groups = row.get("evaluation", {}).get("groups", {})
        cells = [f"{g} {v['model']['standard']['psnr']:.2f}/{v['bicubic']['standard']['psnr']:.2f}"
                 f" ({v['num_frames']})" for g, v in groups.items()]
        if cells:
            lines.append(f"- {name}: " + "; ".join(cells))
    failed = [n for n, r in data["rows_results"].items() if psnr_of(r) is None]
    if failed:
        lines += ["", f"Failed rows (see the JSON): {', '.join(failed)}"]
    lines += ["", f"Machine: {data['machine']['cpu_model']}, {data['machine']['cpu_affinity']} cores, "
              f"TensorFlow {data['machine']['tensorflow']}; {data['date_utc']}.", ""]
    return "\n".join(lines)


def out_path():
    """--out; a smoke run without --out writes into its work folder, never over the results."""
    if FLAGS.smoke and not FLAGS["out"].present:
        return os.path.join(FLAGS.work_dir + "_smoke", f"{NAME}.json")
    return FLAGS.out


def write(data):
    data["summary"] = summarize(data["rows_results"])
    data["targets"] = targets(data["summary"])
    bench_util.write_json(out_path(), data, quiet=True)
    md_path = os.path.splitext(out_path())[0] + ".md"
    with open(md_path, "w") as f:
        f.write(markdown(data))


# ---------------------------------------------------------------------------------------


def main(argv):
    del argv
    import tensorflow_datasets as tfds

    from cspsr_tf.util.cli import quiet_library_logs

    quiet_library_logs()
    tfds.disable_progress_bar()
    preset, batch, patch, steps, cvm_steps = (FLAGS.preset, FLAGS.batch_size, FLAGS.patch_size,
                                              FLAGS.steps, FLAGS.cvm_steps)
    rows, max_frames, work_dir = FLAGS.rows or ROW_ORDER, FLAGS.max_frames, FLAGS.work_dir
    calibration_steps = CALIBRATION_STEPS
    if FLAGS.smoke:
        preset, batch, patch, steps, cvm_steps = "tiny", 2, 24, 2, 2
        rows, max_frames = FLAGS.rows or SMOKE_ROWS, max_frames or 2
        work_dir, calibration_steps = work_dir + "_smoke", (2, 4)
    for name in rows:
        parse_row(name)
    manual_dir = FLAGS.manual_dir
    if not os.path.isfile(os.path.join(manual_dir, "pairs.csv")):
        raise app.UsageError(f"no pairs.csv in {manual_dir} (the shared samples)")
    data_dir = FLAGS.data_dir or os.path.join(work_dir, "tfds")
    started = time.time()

    print(f"Preparing nirvis_folder in {bench_util.rel(data_dir)} and checking the split ...", flush=True)
    split = define_splits(data_dir, manual_dir, max_frames, rule_dir=FLAGS.split_rule_dir)
    print(f"  train: {len(split['train_ids'])} pairs; test: {len(split['test_ids'])} pairs "
          f"({len(split['eval_ids'])} evaluated, {len(split['eval_splits'])} split strings)")
    for frame_id, near in split["checks"]["nearest_train_frame_by_thumbnail"].items():
        if near["max_correlation"] > 0.95:
            print(f"  note: test frame {frame_id} looks like training frame "
                  f"{near['train_frame']} (thumbnail correlation {near['max_correlation']})")
    test_pos = split["test_positions"]

    params = param_counts(preset)
    print(f"Parameters (SR part): full {params['full_sr']} (+ CVM {params['full_cvm']}), "
          f"baseline {params['baseline']} (T={params['baseline_num_modules']}), baseline_wide "
          f"{params['baseline_wide']} (T={params['baseline_wide_num_modules']}), wo_cvm "
          f"{params['wo_cvm']}, w_nir {params['w_nir']}", flush=True)
    ctx = {"manual_dir": manual_dir, "data_dir": data_dir, "work_dir": work_dir, "split": split,
           "preset": preset, "batch": batch, "patch": patch, "steps": steps,
           "cvm_steps": cvm_steps, "params": params, "test_pos": test_pos}

    flag_values = {
        "rows": rows, "preset": preset, "channels": FLAGS.channels, "num_modules": FLAGS.num_modules,
        "scale": SCALE, "batch_size": batch, "patch_size": patch, "steps": steps,
        "cvm_steps": cvm_steps, "learning_rate": FLAGS.learning_rate,
        "lr_schedule": FLAGS.lr_schedule, "max_frames": max_frames, "smoke": FLAGS.smoke,
        "work_dir": bench_util.rel(work_dir), "data_dir": bench_util.rel(data_dir), "manual_dir": bench_util.rel(manual_dir),
        "split_rule_dir": FLAGS.split_rule_dir and bench_util.rel(FLAGS.split_rule_dir),
        "resume": FLAGS.resume,
    }
    previous = {}
    if FLAGS.resume and os.path.exists(out_path()):
        with open(out_path()) as f:
            previous = json.load(f)
    data = bench_util.header(NAME, flag_values)
    data.update({"split": split, "params": params, "train_has_cvm_steps": "cvm_steps" in train_flags(),
                 "conditions": CONDITIONS, "targets_db": TARGETS_DB,
                 "calibration": previous.get("calibration"), "rows_results": {}})

    if FLAGS.calibrate and not (FLAGS.resume and data["calibration"]):
        print(f"Calibrating ({preset}, batch {batch}, patch {patch}, x{SCALE}) ...", flush=True)
        data["calibration"] = calibrate(ctx, CALIBRATION_KINDS if not FLAGS.smoke else ("full",),
                                        calibration_steps)
    if data["calibration"]:
        data["projection"] = project(data["calibration"], rows, steps, cvm_steps,
                                     len(split["eval_ids"]))
        print(f"Projected: {data['projection']['total_s'] / 3600:.2f} h for {len(rows)} rows "
              f"({', '.join(f'{k} {v / 60:.0f} min' for k, v in data['projection']['per_row_s'].items())})",
              flush=True)
    if FLAGS.calibrate_only:
        write(data)
        print(f"Wrote {out_path()}")
        return

    old_rows = previous.get("rows_results", {})
    if FLAGS.resume:
        # Rows of earlier invocations that this one does not run stay in the results,
        # as long as they were trained with the same settings.
        for name, old in old_rows.items():
            if name not in rows and old.get("settings") == row_settings(ctx, name):
                data["rows_results"][name] = old
        if previous.get("note"):
            data["note"] = previous["note"]
        if previous.get("total_minutes"):
            started -= previous["total_minutes"] * 60
    for name in rows:
        condition, ablation, seed = parse_row(name)
        settings = row_settings(ctx, name)
        old = old_rows.get(name)
        if FLAGS.resume and old and old.get("settings") == settings and psnr_of(old) is not None \
                and (ablation not in NIR_USAGE_ROWS or "error" not in old.get("nir_usage", {"error": 1})):
            print(f"{name}: already done ({psnr_of(old):.2f} dB), skipped")
            data["rows_results"][name] = old
            continue
        tag = f"{condition}_{ablation}_seed{seed}"
        model_dir = os.path.join(work_dir, tag)
        print(f"{name} ({ABLATIONS[ablation]}): training {steps} steps ...", flush=True)
        argv = train_argv(ctx, condition, ablation, seed, steps, model_dir, cvm_steps)
        result = {"description": ABLATIONS[ablation], "settings": settings,
                  "training": train(argv, model_dir, os.path.join(work_dir, "logs", f"train_{tag}.log"),
                                    fresh=not FLAGS.resume)}
        data["rows_results"][name] = result
        if "error" not in result["training"]:
            t = result["training"]
            print(f"  step {t['step']}, {t['wall_s']:.0f} s; evaluating ...", flush=True)
            model_path = os.path.join(model_dir, "final.keras")
            result["evaluation"] = evaluate(ctx, condition, model_path,
                                            os.path.join(work_dir, "eval", tag),
                                            os.path.join(work_dir, "logs", f"eval_{tag}.log"))
            if ablation in NIR_USAGE_ROWS and "error" not in result["evaluation"]:
                result["nir_usage"] = nir_usage(ctx, condition, model_path,
                                                os.path.join(work_dir, "usage", f"{tag}.json"),
                                                os.path.join(work_dir, "logs", f"usage_{tag}.log"))
                usage = result["nir_usage"]
                if "error" not in usage:
                    usage["real_minus_evaluate_py_db"] = (usage["psnr_standard"]["real"]
                                                          - psnr_of(result))
        for part in ("training", "evaluation", "nir_usage"):
            if "error" in result.get(part, {}):
                print(f"  {part} failed (see {result[part]['log']})")
        if psnr_of(result) is not None:
            mean = result["evaluation"]["mean"]
            line = (f"  PSNR std {mean['model']['standard']['psnr']:.2f} dB "
                    f"(bicubic {mean['bicubic']['standard']['psnr']:.2f})")
            usage = result.get("nir_usage", {})
            if "delta_grey_db" in usage:
                line += (f"; NIR->grey {usage['delta_grey_db']:+.2f} dB, NIR->other "
                         f"{usage['delta_other_db']:+.2f} dB")
            print(line, flush=True)
        data["total_minutes"] = round((time.time() - started) / 60, 1)
        write(data)

    data["total_minutes"] = round((time.time() - started) / 60, 1)
    write(data)
    print()
    for condition in CONDITIONS:
        rows_table = table(data["summary"], condition)
        if rows_table:
            print(f"{condition}:")
            bench_util.print_table(TABLE_HEADERS, rows_table)
    for condition, t in data["targets"].items():
        print(f"Target {condition}: {t['verdict']}")
    print(f"Total {data['total_minutes']} min; wrote {out_path()} and "
          f"{os.path.splitext(out_path())[0]}.md")


if __name__ == "__main__":
    app.run(main)
