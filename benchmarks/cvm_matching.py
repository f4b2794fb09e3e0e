"""Does the CVM learn disparity? End-point error before and after its matching-loss training.

    .venv/bin/python benchmarks/cvm_matching.py             # ~15 min on 2 cores
    .venv/bin/python benchmarks/cvm_matching.py --smoke     # a minute

The CVM of the `small` preset at x4 is trained alone (`--stage=cvm`, the first phase of every
SR run, `cspsr_tf.train.loop.pretrain_cvm`) on the training pairs of the shared samples: their
registered pairs become stereo pairs with a known random piecewise-planar disparity
(`cspsr_tf.data.stereo_synthesis`, up to --synthetic_max_disparity LR px, default train.py's:
the model's max_disparity), and the real stereo
frames (no ground truth) contribute the label-free terms only. It is measured on

  warped   the held-out registered pairs (the test split of benchmarks/sample_split.py's rule,
           by id), each moved into a virtual right camera by a fixed disparity field of up
           to --eval_max_disparity LR px (8);
  synthetic the `nirvis_synthetic` test split (scikit-image photos with a synthetic right
           view, and the Middlebury Motorcycle pair's real disparity);

as end-point error (mean |d - d_gt| over valid pixels, LR pixels), the share of pixels off
by more than 1 px and the bias (mean signed error d - d_gt); and on

  real_stereo the held-out real stereo pairs with a disparity range measured by hand
           (`REFERENCE_DISPARITY_HR`, from ../shared/data/nirvis_samples/SOURCE.md: the SANet
           indoor pair, 40-52 HR px): median predicted disparity and share of pixels inside
           the range widened by 1 LR px (no per-pixel ground truth; a rough check that a
           matcher trained on warped registered pairs carries over to a real rig).

Rows:

  constant      the best single disparity for all pixels (the median ground truth of the
                evaluation set: an oracle no matcher should lose to)
  untrained     the CVM as built (its cost volume's local soft-argmin, no learning)
  default       trained with the default recipe (label-free + supervised where known)
  label_free    trained with the label-free terms only (--cvm_supervision=0)

--lr_schedule and --cvm_normalization change the recipe of the trained rows (defaults: train.py's).
--measure=name=path/final.keras,... measures the CVMs of saved models instead of training.

Target (issue): EPE <= 1.0 LR px at x4. Whatever comes out is reported.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from benchmarks.sample_split import define_splits  # noqa: E402
from cspsr_tf.model.configs import CVM_NORMALIZATIONS  # noqa: E402  (no TensorFlow import)

NAME = "cvm_matching"
# Disparity ranges (HR px) of real stereo pairs, measured by gradient cross-correlation on
# horizontal bands (../shared/data/nirvis_samples/SOURCE.md, section 2).
REFERENCE_DISPARITY_HR = {"sanet_own_rgbnir_stereo/lustrouselixir_SANet/Ours/01_target": (40.0, 52.0)}
TARGET_EPE = 1.0
PATH_FLAGS = ("out", "manual_dir", "work_dir")

FLAGS = flags.FLAGS
flags.DEFINE_string("out", bench_util.default_out(NAME), "JSON results (a .md table is written beside it).")
flags.DEFINE_bool("smoke", False, "A short run (tiny preset, 3 steps, 2 frames) to check the script.")
flags.DEFINE_string("preset", "small", "Model preset.")
flags.DEFINE_integer("scale", 4, "SR factor.")
flags.DEFINE_integer("steps", 1500, "CVM training steps per trained row.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_enum("cvm_normalization", None, list(CVM_NORMALIZATIONS),
                  "Normalisation of the CVM's convolutions (default: the preset's).")
flags.DEFINE_enum("lr_schedule", None, ["constant", "cosine"],
                  "Learning-rate schedule of the trained rows (default: train.py's --cvm_lr_schedule).")
flags.DEFINE_integer("patch_size", 192, "HR patch side (48 LR px at x4).")
flags.DEFINE_float("synthetic_max_disparity", None,
                   "Largest synthetic disparity of the trained rows, LR px (default: train.py's).")
flags.DEFINE_float("eval_max_disparity", 8.0,
                   "Largest disparity of the fixed fields that move the held-out pairs, LR px.")
flags.DEFINE_list("rows", ["default", "label_free"], "Trained rows.")
flags.DEFINE_string("manual_dir", bench_util.SAMPLES_DIR, "Shared samples folder (pairs.csv).")
flags.DEFINE_string("work_dir", os.path.join(bench_util.REPO_ROOT, "runs", NAME), "Runs (git-ignored).")
flags.DEFINE_integer("max_frames", None, "Evaluate at most this many frames per set.")
flags.DEFINE_list("measure", [], "Instead of training: measure the CVMs of these saved models "
                  "(name=path/to/final.keras, comma-separated), e.g. earlier rows.")


def evaluation_sets(data_dir, manual_dir, scale, max_disparity_hr, max_frames):
    from cspsr_tf.data import pipeline, sources

    splits = define_splits(data_dir, manual_dir)
    held_out = sources.load_split("nirvis_folder", splits["test_split"], data_dir, manual_dir)
    # Only the registered pairs get a known disparity; the real stereo test frames have none.
    warped = pipeline.make_eval_dataset(
        held_out, scale=scale, synthetic_stereo_max_disparity=max_disparity_hr, seed=2026
    )
    synthetic = pipeline.make_eval_dataset(sources.load_split("nirvis_synthetic", "test", data_dir), scale=scale)
    sets = {"warped": list(warped.take(max_frames or -1)), "synthetic": list(synthetic.take(max_frames or -1))}
    real = [frame for frame in pipeline.make_eval_dataset(held_out, scale=scale)
            if _frame_id(frame) in REFERENCE_DISPARITY_HR]
    if real:
        sets["real_stereo"] = real
    return sets, splits


def _frame_id(frame):
    import numpy as np

    value = np.asarray(frame[2]["id"]).reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def real_stereo_result(cvm, frames, scale):
    """Median disparity (LR px) and share inside the reference range +- 1 LR px, per frame."""
    import numpy as np

    result = {"frames": []}
    for frame in frames:
        inputs = frame[0]
        low, high = (v / scale for v in REFERENCE_DISPARITY_HR[_frame_id(frame)])
        disparity = np.asarray(cvm((inputs["vis_lr"], inputs["nir_lr"]), training=False)["disp_l"])
        inside = float(((disparity >= low - 1) & (disparity <= high + 1)).mean())
        result["frames"].append({"id": _frame_id(frame), "median": float(np.median(disparity)),
                                 "in_range": inside, "range_lr": [low, high]})
    result["median"] = float(np.mean([f["median"] for f in result["frames"]]))
    result["in_range"] = float(np.mean([f["in_range"] for f in result["frames"]]))
    return result


def constant_row(sets, scale):
    import numpy as np

    from cspsr_tf.evaluate.disparity_eval import disparity_errors
    from cspsr_tf.ops.warp import disparity_to_lr

    row = {}
    for name, frames in sets.items():
        if name == "real_stereo":
            continue
        gts, valids = [], []
        for _, targets, _ in frames:
            if "disparity_hr" not in targets:
                continue
            gt, valid = disparity_to_lr(targets["disparity_hr"], targets["disparity_valid_hr"], scale)
            gts.append(gt.numpy().ravel())
            valids.append(valid.numpy().ravel())
        gt, valid = np.concatenate(gts), np.concatenate(valids)
        median = float(np.median(gt[valid > 0.5]))
        errors = disparity_errors(np.full_like(gt, median), gt, valid)
        row[name] = {**errors, "constant": median}
    return row


def measured_row(cvm, sets, scale):
    from cspsr_tf.evaluate.disparity_eval import measure_disparity

    row = {}
    for name, frames in sets.items():
        if name == "real_stereo":
            row[name] = real_stereo_result(cvm, frames, scale)
            continue
        result = measure_disparity(cvm, frames, scale)
        row[name] = {k: result[k] for k in ("epe", "bad1", "bias", "frame_epe", "pixels")}
    return row


def model_overrides():
    overrides = dict(scale=FLAGS.scale)
    if FLAGS.cvm_normalization:
        overrides["cvm_normalization"] = FLAGS.cvm_normalization
    return overrides


def train_row(name, splits, data_dir, manual_dir):
    from cspsr_tf.model import model_io
    from cspsr_tf.train import loop, run_config

    overrides = dict(
        dataset="nirvis_folder", data_dir=data_dir, manual_dir=manual_dir,
        train_split=splits["train_split"], preset=FLAGS.preset, stage="cvm", steps=FLAGS.steps,
        batch_size=FLAGS.batch_size, patch_size=FLAGS.patch_size, cvm_patch_size=FLAGS.patch_size,
        eval_every=0,
        learning_rate=run_config.TrainConfig.cvm_learning_rate,
        lr_schedule=FLAGS.lr_schedule or run_config.TrainConfig.cvm_lr_schedule,
        synthetic_max_disparity=FLAGS.synthetic_max_disparity,
        model_dir=os.path.join(FLAGS.work_dir, name), save_every=max(FLAGS.steps // 4, 1),
    )
    if name == "label_free":
        overrides["cvm_supervision"] = 0.0
    train, model_config = run_config.build_configs(overrides, model_overrides())
    started = time.time()
    summary = loop.run_training(train, model_config)
    model, _ = model_io.load_model(os.path.join(train.model_dir, "final.keras"))
    return model.get_layer("cvm"), {"steps": summary["step"], "train_seconds": round(time.time() - started, 1),
                                    "final_losses": summary["losses"]}


def print_rows(results, sets):
    def cell(row, s):
        if s not in row:
            return "-"
        if s == "real_stereo":
            return bench_util.fmt(row[s]["median"]) + " / " + bench_util.fmt(100 * row[s]["in_range"], 1) + "%"
        return (bench_util.fmt(row[s]["epe"]) + " / " + bench_util.fmt(100 * row[s]["bad1"], 1) + "%"
                + ("" if row[s].get("bias") is None else " / " + f"{row[s]['bias']:+.2f}"))

    table = [[name] + [cell(row, s) for s in sets] for name, row in results["rows"].items()]
    bench_util.print_table(
        ["row"] + [f"{s} median / in range" if s == "real_stereo" else f"{s} EPE / >1px / bias"
                   for s in sets], table)


def main(argv):
    del argv
    import keras

    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config

    if FLAGS.smoke:
        FLAGS.preset, FLAGS.steps, FLAGS.max_frames, FLAGS.patch_size = "tiny", 3, 2, 64
        FLAGS.rows = ["default"]
    if not os.path.isfile(os.path.join(FLAGS.manual_dir, "pairs.csv")):
        raise app.UsageError(f"{FLAGS.manual_dir} has no pairs.csv: the shared samples are needed")
    bench_util.header(NAME, {k: FLAGS[k].value for k in ("preset", "scale", "steps", "batch_size", "patch_size")})
    data_dir = os.path.join(FLAGS.work_dir, "tfds")
    max_hr = FLAGS.eval_max_disparity * FLAGS.scale
    sets, splits = evaluation_sets(data_dir, FLAGS.manual_dir, FLAGS.scale, max_hr, FLAGS.max_frames)
    results = {"machine": bench_util.machine_info(), "split_rule": splits["rule"],
               "flags": {f.name: bench_util.rel(f.value) if f.name in PATH_FLAGS else f.value
                         for f in FLAGS.get_key_flags_for_module(sys.argv[0])},
               "sets": {k: len(v) for k, v in sets.items()}, "rows": {}}
    results["rows"]["constant"] = constant_row(sets, FLAGS.scale)
    if FLAGS.measure:
        from cspsr_tf.model import model_io

        if "untrained" not in [item.partition("=")[0] for item in FLAGS.measure]:
            keras.utils.set_random_seed(0)
            untrained = build_cspsr(get_config(FLAGS.preset, **model_overrides())).get_layer("cvm")
            results["rows"]["untrained"] = measured_row(untrained, sets, FLAGS.scale)

        for item in FLAGS.measure:
            name, _, path = item.partition("=")
            if not path:
                raise app.UsageError(f"--measure takes name=path items; got {item!r}")
            model, config = model_io.load_model(path)
            results["rows"][name] = {**measured_row(model.get_layer("cvm"), sets, FLAGS.scale),
                                     "model": bench_util.rel(path),
                                     "cvm_normalization": getattr(config, "cvm_normalization", None)}
        bench_util.write_json(FLAGS.out, results)
        print_rows(results, sets)
        return
    keras.utils.set_random_seed(0)
    untrained = build_cspsr(get_config(FLAGS.preset, **model_overrides())).get_layer("cvm")
    results["rows"]["untrained"] = measured_row(untrained, sets, FLAGS.scale)
    bench_util.write_json(FLAGS.out, results)
    for name in FLAGS.rows:
        cvm, info = train_row(name, splits, data_dir, FLAGS.manual_dir)
        results["rows"][name] = {**measured_row(cvm, sets, FLAGS.scale), **info}
        bench_util.write_json(FLAGS.out, results)
    print_rows(results, sets)
    best = results["rows"].get("default", {}).get("warped", {}).get("epe")
    if best is not None:
        verdict = "met" if best <= TARGET_EPE else "MISSED"
        print(f"Target EPE <= {TARGET_EPE} LR px on the warped held-out pairs: {best:.3f} ({verdict})")


if __name__ == "__main__":
    app.run(main)
