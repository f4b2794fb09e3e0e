"""Training in bfloat16 against float32: step throughput side by side, and the loss curves.

    .venv/bin/python benchmarks/precision_training.py          # ~20-30 min on 2 loaded cores
    .venv/bin/python benchmarks/precision_training.py --smoke  # a minute or two

1. Throughput (`small` preset, x4, batch 16 of 96x96 HR patches, random data): one child
   process builds the training step of each configuration (precision x ops; the step of
   benchmarks/training_throughput.py: model in training mode, Eq. 3 loss, Adam, loss scaling
   for float16 only) and times them round robin, so that load from other processes hits all
   alike. Reported: median step time, samples/s and the ratio to float32 with the same ops
   (`fused`, the default) and to float32 with the plain-TensorFlow `shift` ops (the path
   before fused ops). Also measured without the CVM, to show what it costs.
2. Loss curves: `train.py` on the embedded `nirvis_synthetic` data, the same recipe for every
   run (batch 16, 96x96, Adam 5e-4 cosine, --steps, no CVM pre-training, no validation), in
   float32 with --seeds and in bfloat16 with the same seeds. The logged total loss (every 10
   steps) is averaged over windows of 50 steps; the float32 seeds' min..max per window is the
   seed-to-seed spread, and each bfloat16 run is checked against it.

Targets (issue 11): bfloat16 throughput >= 1.5x float32; the bfloat16 loss curve over the first
300 steps within the seed-to-seed spread of float32.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "precision_training"
TARGET_SPEEDUP = 1.5
STEP_CONFIGS = [
    ("float32", "shift", True), ("float32", "fused", True), ("bfloat16", "fused", True),
    ("bfloat16", "shift", True), ("float32", "fused", False), ("bfloat16", "fused", False),
]
WINDOW = 50
LOG_LINE = re.compile(r"step (\d+)/\d+: total=([0-9.eE+-]+)")

FLAGS = flags.FLAGS
flags.DEFINE_string("out", bench_util.default_out(NAME), "JSON results.")
flags.DEFINE_bool("smoke", False, "Tiny sizes and few steps: checks the script.")
flags.DEFINE_string("child", None, "Internal: the throughput part, in a child process.")
flags.DEFINE_string("preset", "small", "Model preset.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("patch_size", 96, "HR patch side (x4).")
flags.DEFINE_integer("rounds", 8, "Timed rounds of the throughput part.")
flags.DEFINE_integer("steps", 300, "Training steps of each loss-curve run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the loss-curve runs (each precision).")
flags.DEFINE_string("work_dir", os.path.join(bench_util.REPO_ROOT, "runs", NAME), "Runs (git-ignored).")
flags.DEFINE_bool("curves", True, "Run the loss-curve part.")


def child_throughput(job):
    import keras
    import numpy as np
    import tensorflow as tf

    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config
    from cspsr_tf.train.losses import cspsr_loss_per_example

    batch, hr, scale = job["batch_size"], job["patch_size"], 4
    lr = hr // scale
    rng = np.random.default_rng(0)
    inputs = {"vis_lr": tf.constant(rng.random((batch, lr, lr, 3), np.float32)),
              "nir_lr": tf.constant(rng.random((batch, lr, lr, 1), np.float32))}
    targets = {"vis_hr": tf.constant(rng.random((batch, hr, hr, 3), np.float32)),
               "nir_hr": tf.constant(rng.random((batch, hr, hr, 1), np.float32))}
    steps = {}
    for precision, ops, use_cvm in job["configs"]:
        keras.utils.set_random_seed(0)
        config = get_config(job["preset"], "full" if use_cvm else "wo_cvm", scale=scale,
                            dynamic_conv_implementation=ops)
        model = build_cspsr(config, precision=precision)
        if use_cvm:
            # As the recipe trains (train.py --freeze_cvm, the default): the pre-trained CVM
            # runs forward only; its gradient is neither built nor applied.
            model.get_layer("cvm").trainable = False
        optimizer = keras.optimizers.Adam(1e-4)
        if precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)

        @tf.function
        def step(model=model, optimizer=optimizer, config=config, scaled=precision == "float16"):
            with tf.GradientTape() as tape:
                outputs = model(inputs, training=True)
                loss = tf.reduce_mean(
                    cspsr_loss_per_example(outputs, targets, scale, config.lambda_cssc)["total"])
                scaled_loss = optimizer.scale_loss(loss) if scaled else loss
            grads = tape.gradient(scaled_loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        key = f"{precision}-{ops}" + ("" if use_cvm else "-no_cvm")
        steps[key] = step
        step()  # trace
        step()
    times = {key: [] for key in steps}
    for _ in range(job["rounds"]):
        for key, step in steps.items():
            start = time.perf_counter()
            float(step())
            times[key].append(time.perf_counter() - start)
    results = {}
    for key in steps:
        stats = bench_util.summarize_times(times[key])
        results[key] = {**stats, "samples_per_s": batch / stats["median_s"]}
    for key, r in results.items():
        suffix = "" if key.endswith("-fused") or key.endswith("-shift") else "-no_cvm"
        for ref in (f"float32-fused{suffix}", f"float32-shift{suffix}"):
            if ref in results:
                r[f"speedup_vs_{ref}"] = results[ref]["median_s"] / r["median_s"]
    return {"results": results}


def loss_curve(log_path):
    """[(step, total loss)] from a train.py log."""
    points = []
    with open(log_path) as f:
        for line in f:
            match = LOG_LINE.search(line)
            if match:
                points.append((int(match.group(1)), float(match.group(2))))
    return points


def window_of(steps):
    """WINDOW steps, or half the run for a short one (--smoke)."""
    return WINDOW if steps >= 2 * WINDOW else max(10, steps // 2)


def windows(points, steps):
    """Mean total loss per window of `window_of(steps)` steps: {end step: mean}."""
    out = {}
    window = window_of(steps)
    for end in range(window, steps + 1, window):
        values = [v for s, v in points if end - window < s <= end]
        if values:
            out[end] = sum(values) / len(values)
    return out


def run_curve(precision, seed, steps, data_dir, preset, batch, patch):
    model_dir = os.path.join(FLAGS.work_dir, f"{precision}_seed{seed}")
    log_path = model_dir + ".log"
    if os.path.isdir(model_dir):
        import shutil

        shutil.rmtree(model_dir)
    argv = [sys.executable, os.path.join(bench_util.REPO_ROOT, "train.py"),
            "--dataset=nirvis_synthetic", f"--data_dir={data_dir}", f"--preset={preset}",
            "--scale=4", f"--batch_size={batch}", f"--patch_size={patch}", f"--steps={steps}",
            "--cvm_steps=0", "--learning_rate=5e-4", "--lr_schedule=cosine", "--eval_every=0",
            f"--save_every={steps}", "--log_every=10", f"--seed={seed}",
            f"--precision={precision}", f"--model_dir={model_dir}"]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=bench_util.REPO_ROOT)
    result = {"precision": precision, "seed": seed, "seconds": round(time.perf_counter() - started, 1),
              "log": bench_util.rel(log_path)}
    if proc.returncode:
        result["error"] = f"train.py exited with {proc.returncode} (see the log)"
        return result
    result["curve"] = loss_curve(log_path)
    result["windows"] = windows(result["curve"], steps)
    return result


def compare_curves(runs, steps):
    """Per window: the float32 seeds' min..max and where each bfloat16 run lies."""
    f32 = [r["windows"] for r in runs if r["precision"] == "float32" and "windows" in r]
    low = [r for r in runs if r["precision"] != "float32" and "windows" in r]
    rows = []
    window = window_of(steps)
    for end in range(window, steps + 1, window):
        values = [w[end] for w in f32 if end in w]
        if len(values) < 2:
            continue
        lo, hi = min(values), max(values)
        row = {"end_step": end, "float32_min": lo, "float32_max": hi,
               "float32_mean": sum(values) / len(values)}
        for r in low:
            v = r["windows"].get(end)
            row[f"{r['precision']}_seed{r['seed']}"] = v
        rows.append(row)
    verdicts = {}
    for r in low:
        key = f"{r['precision']}_seed{r['seed']}"
        inside = [lo_hi for lo_hi in rows if lo_hi.get(key) is not None]
        within = [row["float32_min"] <= row[key] <= row["float32_max"] for row in inside]
        verdicts[key] = {"windows_within_float32_spread": sum(within), "windows": len(within)}
    means = [row for row in rows]
    for precision in sorted({r["precision"] for r in low}):
        keys = [f"{precision}_seed{r['seed']}" for r in low if r["precision"] == precision]
        inside = 0
        for row in means:
            values = [row[k] for k in keys if row.get(k) is not None]
            if values:
                mean = sum(values) / len(values)
                row[f"{precision}_mean"] = mean
                inside += row["float32_min"] <= mean <= row["float32_max"]
        verdicts[f"{precision}_mean"] = {"windows_within_float32_spread": inside, "windows": len(means)}
    return rows, verdicts


def main(argv):
    del argv
    if FLAGS.child:
        bench_util.emit_child_result(child_throughput(json.loads(FLAGS.child)))
        return
    preset, batch, patch, rounds, steps = (FLAGS.preset, FLAGS.batch_size, FLAGS.patch_size,
                                           FLAGS.rounds, FLAGS.steps)
    seeds = [int(s) for s in FLAGS.seeds]
    if FLAGS.smoke:
        preset, batch, patch, rounds, steps, seeds = "tiny", 2, 24, 2, 20, [0, 1]
    data = bench_util.header(NAME, {"preset": preset, "batch_size": batch, "patch_size": patch,
                                    "rounds": rounds, "steps": steps, "seeds": seeds,
                                    "smoke": FLAGS.smoke,
                                    "work_dir": bench_util.rel(FLAGS.work_dir)})
    data["targets"] = {"bfloat16_speedup_min": TARGET_SPEEDUP,
                       "loss_curve": f"bfloat16 within float32's seed spread, windows of {WINDOW} steps"}
    print(f"Throughput: {len(STEP_CONFIGS)} training steps side by side, {rounds} rounds ...", flush=True)
    job = {"preset": preset, "batch_size": batch, "patch_size": patch, "rounds": rounds,
           "configs": STEP_CONFIGS}
    data["throughput"] = bench_util.run_child(__file__, job, timeout=3600)
    bench_util.write_json(FLAGS.out, data, quiet=True)
    if "error" in data["throughput"]:
        print(f"  failed: {data['throughput']['error']}")
    else:
        rows = []
        for key, r in data["throughput"]["results"].items():
            rows.append([key, bench_util.fmt(r["median_s"], 3), bench_util.fmt(r["samples_per_s"], 1),
                         bench_util.fmt(r.get("speedup_vs_float32-fused", r.get("speedup_vs_float32-fused-no_cvm")), 2),
                         bench_util.fmt(r.get("speedup_vs_float32-shift"), 2)])
        bench_util.print_table(["configuration", "step s", "samples/s", "vs float32 fused",
                                "vs float32 shift"], rows)

    if FLAGS.curves:
        os.makedirs(FLAGS.work_dir, exist_ok=True)
        data_dir = os.path.join(FLAGS.work_dir, "tfds")
        runs = data["curves"] = []
        for seed in seeds:
            for precision in ("float32", "bfloat16"):
                print(f"Loss curve: {precision}, seed {seed}, {steps} steps ...", flush=True)
                runs.append(run_curve(precision, seed, steps, data_dir, preset, batch, patch))
                if "error" in runs[-1]:
                    print(f"  failed: {runs[-1]['error']} ({runs[-1]['log']})")
                bench_util.write_json(FLAGS.out, data, quiet=True)
        rows, verdicts = compare_curves(runs, steps)
        data["curve_windows"], data["curve_verdicts"] = rows, verdicts
        for key, v in verdicts.items():
            print(f"  {key}: {v['windows_within_float32_spread']}/{v['windows']} windows within "
                  "float32's seed spread")
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
