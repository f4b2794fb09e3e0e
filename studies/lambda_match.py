"""What the matching term of the joint loss (`train.py --lambda_match`) does to the CVM and the SR.

    .venv/bin/python studies/lambda_match.py                      # ~15 min on 2 cores
    .venv/bin/python studies/lambda_match.py --values=0,0.1,1
    .venv/bin/python studies/lambda_match.py --values=0.1,freeze --cvm_normalization=group

The `make demo` setting: `small` preset, x4, `nirvis_synthetic` (stereo pairs with a known
disparity), batch 8 of 96x96 HR patches, Adam 5e-4 with a cosine decay. Every value of
--values trains one run with the same seed, the same --cvm_steps of CVM pre-training and the
same --steps of joint training, differing only in `lambda_match` (the value `freeze` keeps the
pre-trained CVM fixed in the joint stage: `train.py --freeze_cvm`, no matching term); each is
measured on the
test split: the CVM's disparity error (EPE and share off by > 1 px, LR pixels, valid ground
truth), the same right after the pre-training (shared by every run), and the SR PSNR
(standard protocol) beside bicubic.
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from cspsr_tf.model.configs import CVM_NORMALIZATIONS  # noqa: E402
from studies import default_out  # noqa: E402

NAME = "lambda_match"

FLAGS = flags.FLAGS
flags.DEFINE_string("out", default_out(NAME), "JSON results.")
flags.DEFINE_list("values", ["0", "0.1"], "lambda_match values, one run each; `freeze` for --freeze_cvm.")
flags.DEFINE_integer("cvm_steps", 300, "CVM pre-training steps (the same for every run).")
flags.DEFINE_integer("steps", 600, "Joint SR steps.")
flags.DEFINE_string("work_dir", os.path.join(bench_util.REPO_ROOT, "runs", NAME), "Runs (git-ignored).")
flags.DEFINE_enum("cvm_normalization", None, CVM_NORMALIZATIONS,
                  "train.py --cvm_normalization for every run (default: train.py's).")
flags.DEFINE_bool("smoke", False, "tiny preset, 2 + 2 steps.")


def main(argv):
    del argv
    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.evaluate.disparity_eval import measure_disparity
    from cspsr_tf.evaluate.evaluation import evaluate_dataset
    from cspsr_tf.model import model_io

    preset, cvm_steps, steps = ("tiny", 2, 2) if FLAGS.smoke else ("small", FLAGS.cvm_steps, FLAGS.steps)
    data_dir = os.path.join(FLAGS.work_dir, "tfds")
    test = list(pipeline.make_eval_dataset(sources.load_split("nirvis_synthetic", "test", data_dir), scale=4))
    results = {"machine": bench_util.machine_info(), "preset": preset, "cvm_steps": cvm_steps,
               "steps": steps, "cvm_normalization": FLAGS.cvm_normalization or "train.py default",
               "runs": {}}
    for value in FLAGS.values:
        # Each run in a process of its own (train.py), as a user would start it.
        model_dir = os.path.join(FLAGS.work_dir, f"lambda_{value}")
        command = [bench_util.rel(sys.executable), "train.py",
                   "--dataset=nirvis_synthetic", f"--data_dir={bench_util.rel(data_dir)}", f"--preset={preset}",
                   "--scale=4", "--patch_size=96", "--batch_size=8", "--learning_rate=5e-4",
                   "--lr_schedule=cosine", f"--steps={steps}", f"--cvm_steps={cvm_steps}",
                   *(["--freeze_cvm", "--lambda_match=0"] if value == "freeze"
                     else ["--nofreeze_cvm", f"--lambda_match={value}"]),
                   *([f"--cvm_normalization={FLAGS.cvm_normalization}"] if FLAGS.cvm_normalization else []),
                   "--eval_every=0", f"--save_every={max(steps // 2, 1)}",
                   f"--model_dir={bench_util.rel(model_dir)}"]
        started = time.time()
        proc = subprocess.run(command, capture_output=True, text=True, check=False,
                              cwd=bench_util.REPO_ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"train.py failed for lambda_match={value}: {proc.stderr[-2000:]}")
        seconds = time.time() - started
        train_model_dir = model_dir
        model, config = model_io.load_model(os.path.join(train_model_dir, "final.keras"))
        pretrained, _ = model_io.load_model(os.path.join(train_model_dir, "cvm_pretrain", "final.keras"))
        sr = evaluate_dataset(model, config, test, scale=4, save_images=False)["mean"]
        run = {
            "disparity_after_pretraining": measure_disparity(pretrained.get_layer("cvm"), test, 4),
            "disparity_after_joint": measure_disparity(model.get_layer("cvm"), test, 4),
            "psnr_standard": sr["model"]["standard"]["psnr"],
            "bicubic_psnr_standard": sr["bicubic"]["standard"]["psnr"],
            "seconds": round(seconds, 1),
            "command": " ".join(command),
        }
        for key in ("disparity_after_pretraining", "disparity_after_joint"):
            run[key] = {k: run[key][k] for k in ("epe", "bad1", "frame_epe", "pixels")}
        results["runs"][value] = run
        bench_util.write_json(FLAGS.out, results)
    rows = [[value, bench_util.fmt(r["disparity_after_pretraining"]["epe"]),
             bench_util.fmt(r["disparity_after_joint"]["epe"]),
             bench_util.fmt(100 * r["disparity_after_joint"]["bad1"], 1) + "%",
             bench_util.fmt(r["psnr_standard"], 3), bench_util.fmt(r["bicubic_psnr_standard"], 3)]
            for value, r in results["runs"].items()]
    bench_util.print_table(["lambda_match", "EPE pre-trained", "EPE joint", ">1px joint", "PSNR", "bicubic"], rows)


if __name__ == "__main__":
    app.run(main)
