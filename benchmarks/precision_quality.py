"""What the compute precision costs in quality: one model's PSNR in float32, bfloat16, float16.

    .venv/bin/python benchmarks/precision_quality.py                     # ~15 min on 2 cores
    .venv/bin/python benchmarks/precision_quality.py --model=runs/x4/best.keras
    .venv/bin/python benchmarks/precision_quality.py --smoke             # a minute or two

Without --model, a `small` model is trained at x4 in the `make demo` setting (embedded
`nirvis_synthetic` data, batch 8 of 96x96 HR patches, Adam 5e-4 with a cosine decay,
--cvm_steps of CVM pre-training, then --steps of SR training, in float32) under --work_dir
(running the script again reuses the trained run). The same weights are then run in each of
--precisions (`cspsr_tf.model.runtime.with_precision`) on the embedded test split and measured as
`evaluate.py` measures them (`evaluation.evaluate_dataset`: 8-bit SR images, standard and
paper protocols), beside:

  delta_psnr_standard_db   PSNR (standard protocol, mean over frames) minus float32's
  max_abs_diff_vis_sr      max |vis_sr - float32's vis_sr| over all frames (float outputs)
  mean_abs_diff_vis_sr     mean |vis_sr - float32's vis_sr| per frame, averaged over the frames
  max_level_diff_8bit      the same on the 8-bit images the PSNR is computed on (grey levels)
  max_abs_diff_disp_l      the same for the left disparity (LR px; float32 itself, moved only by
                           the rounding of the CVM's convolutions)
  median_seconds_per_frame one forward pass per frame (a loaded machine: indicative only)

Target (issue 11): |delta_psnr_standard_db| <= 0.05 dB. Whatever comes out is reported.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import statistics  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "precision_quality"
TARGET_DB = 0.05
PATH_FLAGS = ("out", "model", "work_dir")

FLAGS = flags.FLAGS
flags.DEFINE_string("out", bench_util.default_out(NAME), "JSON results.")
flags.DEFINE_bool("smoke", False, "Tiny preset, 2 + 2 steps, 2 test frames: checks the script.")
flags.DEFINE_string("model", None, "A trained model (.keras with its .config.json, or a training "
                    "directory) to measure instead of training one.")
flags.DEFINE_string("work_dir", os.path.join(bench_util.REPO_ROOT, "runs", NAME), "Run and data (git-ignored).")
flags.DEFINE_string("preset", "small", "Model preset of the trained model.")
flags.DEFINE_integer("scale", 4, "SR factor of the trained model.")
flags.DEFINE_integer("cvm_steps", 300, "CVM pre-training steps.")
flags.DEFINE_integer("steps", 1500, "SR training steps.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("patch_size", 96, "HR patch side.")
flags.DEFINE_float("learning_rate", 5e-4, "Adam learning rate (cosine decay).")
flags.DEFINE_list("precisions", ["float32", "bfloat16", "float16"], "Precisions to measure (float32 first).")
flags.DEFINE_integer("max_frames", None, "Evaluate at most this many test frames.")


def train_model(data_dir, work_dir):
    """Trains (or finds trained) the model; returns (model, config, training info)."""
    from cspsr_tf.model import model_io
    from cspsr_tf.train import loop, run_config

    train, model_config = run_config.build_configs(
        dict(
            dataset="nirvis_synthetic", data_dir=data_dir, preset=FLAGS.preset,
            patch_size=FLAGS.patch_size, batch_size=FLAGS.batch_size,
            learning_rate=FLAGS.learning_rate, lr_schedule="cosine", steps=FLAGS.steps,
            cvm_steps=FLAGS.cvm_steps, eval_every=0, save_every=max(FLAGS.steps // 4, 1),
            log_every=50, model_dir=os.path.join(work_dir, "run"),
        ),
        dict(scale=FLAGS.scale),
    )
    started = time.time()
    summary = loop.run_training(train, model_config)
    model, config = model_io.load_model(os.path.join(train.model_dir, "final.keras"))
    info = {
        "model_dir": bench_util.rel(train.model_dir), "preset": FLAGS.preset,
        "scale": FLAGS.scale, "cvm_steps": FLAGS.cvm_steps, "steps": summary["step"],
        "batch_size": FLAGS.batch_size, "patch_size": FLAGS.patch_size,
        "learning_rate": FLAGS.learning_rate, "training_precision": train.precision,
        "final_losses": summary["losses"], "seconds": round(time.time() - started, 1),
    }
    return model, config, info


def measure(model, config, frames, reference=None):
    """evaluate_dataset's numbers, and the outputs' differences to `reference` (float32)."""
    import numpy as np

    from cspsr_tf.evaluate import evaluation
    from cspsr_tf.infer import tiling

    results = evaluation.evaluate_dataset(model, config, frames, scale=config.scale)
    mean = results["mean"]
    outputs = []
    for inputs, _, _ in frames:
        out = tiling.predict(model, np.asarray(inputs["vis_lr"]), np.asarray(inputs["nir_lr"]),
                             config.scale)
        outputs.append({k: out[k] for k in ("vis_sr", "disp_l") if k in out})
    row = {
        "precision": results["precision"],
        "psnr_standard": mean["model"]["standard"]["psnr"],
        "ssim_standard": mean["model"]["standard"]["ssim"],
        "psnr_paper": mean["model"]["paper"]["psnr"],
        "bicubic_psnr_standard": mean["bicubic"]["standard"]["psnr"],
        "median_seconds_per_frame": round(statistics.median(f["seconds"] for f in results["frames"]), 4),
    }
    if reference is not None:
        ref_outputs, ref_row = reference
        row["delta_psnr_standard_db"] = row["psnr_standard"] - ref_row["psnr_standard"]
        row["max_abs_diff_vis_sr"] = max(
            float(np.abs(o["vis_sr"] - r["vis_sr"]).max()) for o, r in zip(outputs, ref_outputs, strict=True)
        )
        row["mean_abs_diff_vis_sr"] = float(np.mean([
            np.abs(o["vis_sr"] - r["vis_sr"]).mean() for o, r in zip(outputs, ref_outputs, strict=True)
        ]))
        row["max_level_diff_8bit"] = max(
            int(np.abs(evaluation.quantize(o["vis_sr"][0]).astype(int)
                       - evaluation.quantize(r["vis_sr"][0]).astype(int)).max())
            for o, r in zip(outputs, ref_outputs, strict=True)
        )
        if "disp_l" in outputs[0]:
            row["max_abs_diff_disp_l"] = max(
                float(np.abs(o["disp_l"] - r["disp_l"]).max()) for o, r in zip(outputs, ref_outputs, strict=True)
            )
        row["target_met"] = abs(row["delta_psnr_standard_db"]) <= TARGET_DB
    return row, outputs


def main(argv):
    del argv
    import keras

    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.model import model_io
    from cspsr_tf.model.precision import check_precision
    from cspsr_tf.model.runtime import with_precision

    work_dir, out = FLAGS.work_dir, FLAGS.out
    if FLAGS.smoke:
        FLAGS.preset, FLAGS.cvm_steps, FLAGS.steps, FLAGS.patch_size = "tiny", 2, 2, 32
        FLAGS.max_frames = FLAGS.max_frames or 2
        work_dir += "_smoke"
        if not FLAGS["out"].present:  # never over the real results
            out = os.path.join(work_dir, f"{NAME}.json")
    precisions = [check_precision(p) for p in FLAGS.precisions]
    if precisions[0] != "float32":
        raise app.UsageError("--precisions must start with float32 (the reference)")
    policy_before = keras.config.dtype_policy().name
    data = bench_util.header(NAME, {
        f.name: bench_util.rel(f.value) if f.name in PATH_FLAGS and f.value else f.value
        for f in FLAGS.get_key_flags_for_module(sys.argv[0])
    })
    data["flags"].update(out=bench_util.rel(out), work_dir=bench_util.rel(work_dir))
    data_dir = os.path.join(work_dir, "tfds")
    raw = sources.load_split("nirvis_synthetic", "test", data_dir)
    if FLAGS.model:
        model, config = model_io.load_model(FLAGS.model)
        if config is None:
            raise app.UsageError(f"--model {FLAGS.model}: no CSPSR config beside it (.config.json)")
        data["training"] = {"model": bench_util.rel(FLAGS.model)}
    else:
        model, config, data["training"] = train_model(data_dir, work_dir)
    frames = list(pipeline.make_eval_dataset(raw, scale=config.scale).take(FLAGS.max_frames or -1))
    data.update(frames=len(frames), target_db=TARGET_DB, config=config.to_dict(), precisions={})
    reference = None
    for precision in precisions:
        row, outputs = measure(with_precision(model, config, precision), config, frames, reference)
        if reference is None:
            reference = (outputs, row)
        data["precisions"][precision] = row
        bench_util.write_json(out, data, quiet=True)
    data["global_policy_unchanged"] = keras.config.dtype_policy().name == policy_before
    bench_util.write_json(out, data)
    table = [
        [p, bench_util.fmt(r["psnr_standard"], 3), bench_util.fmt(r.get("delta_psnr_standard_db"), 4),
         bench_util.fmt(r.get("max_abs_diff_vis_sr"), 5), str(r.get("max_level_diff_8bit", "-")),
         bench_util.fmt(r.get("max_abs_diff_disp_l"), 6), bench_util.fmt(r["median_seconds_per_frame"], 3)]
        for p, r in data["precisions"].items()
    ]
    bench_util.print_table(["precision", "PSNR std", "delta dB", "max|dSR|", "max d8bit", "max|dDisp|",
                            "s/frame"], table)
    bicubic = data["precisions"]["float32"]["bicubic_psnr_standard"]
    print(f"bicubic {bicubic:.3f} dB; {len(frames)} test frames; target |delta| <= {TARGET_DB} dB: "
          + ", ".join(f"{p} {'met' if r['target_met'] else 'MISSED'}"
                      for p, r in data["precisions"].items() if "target_met" in r))


if __name__ == "__main__":
    app.run(main)
