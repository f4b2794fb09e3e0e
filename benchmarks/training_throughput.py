"""Training throughput (samples per second) of CSPSR at the paper's patch size.

    .venv/bin/python benchmarks/training_throughput.py                  # CPU: batch 4
    .venv/bin/python benchmarks/training_throughput.py --batch_size=8
    .venv/bin/python benchmarks/training_throughput.py --smoke

For every (preset, jit_compile) one fresh child process builds the model under the default
tf.distribute strategy and times the same step as `cspsr_tf/train/loop.py`: the model in
training mode, `cspsr_tf.train.losses.cspsr_loss_per_example` (Eq. 3, lambda from the config),
`tf.nn.compute_average_loss` over the global batch, Adam (paper settings; wrapped in a
LossScaleOptimizer with --mixed_precision), `strategy.run` of the replica step inside a
`tf.function` (the replica step itself compiled with XLA under jit_compile).

Data: random tensors of the paper's training shapes (120x120 HR patches, x4: 30x30 LR),
made once, so the figure is the model's step alone, without the tf.data input pipeline.
Reported: median step time after warm-up, samples/s = batch / median step time, and the
child's peak resident memory. The batch size is a flag (default 32 on a GPU as in the
paper, 4 on a CPU) and is recorded.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import json  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "training_throughput"
GPU_BATCH, CPU_BATCH = 32, 4

FLAGS = flags.FLAGS
bench_util.define_common_flags(flags, NAME, jit_default="off")
flags.DEFINE_list("presets", ["paper", "small"], "Config presets to measure.")
flags.DEFINE_integer("scale", 4, "SR factor.")
flags.DEFINE_integer("patch_size", 120, "HR patch side (paper: 120); a multiple of --scale.")
flags.DEFINE_integer("batch_size", None, f"Global batch (default {GPU_BATCH} on a GPU, {CPU_BATCH} on a CPU).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after the first (tracing) step.")
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_integer("child_timeout", 1800, "Seconds allowed for one configuration.")


def run_one(cfg):
    """Child: times the training step of one configuration."""
    import keras
    import numpy as np
    import tensorflow as tf

    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config
    from cspsr_tf.train.losses import cspsr_loss_per_example

    bench_util.set_mixed_precision(cfg["mixed_precision"])
    keras.utils.set_random_seed(0)
    config = get_config(cfg["preset"], "full", scale=cfg["scale"])
    batch, hr, scale = cfg["batch_size"], cfg["patch_size"], cfg["scale"]
    lr = hr // scale
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = build_cspsr(config)
        optimizer = keras.optimizers.Adam(1e-4, beta_1=0.9, beta_2=0.999)
        if cfg["mixed_precision"]:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        variables = model.trainable_variables
        optimizer.build(variables)

    rng = np.random.default_rng(0)
    inputs = {
        "vis_lr": tf.constant(rng.random((batch, lr, lr, 3), np.float32)),
        "nir_lr": tf.constant(rng.random((batch, lr, lr, 1), np.float32)),
    }
    targets = {
        "vis_hr": tf.constant(rng.random((batch, hr, hr, 3), np.float32)),
        "nir_hr": tf.constant(rng.random((batch, hr, hr, 1), np.float32)),
    }

    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            per_example = cspsr_loss_per_example(outputs, targets, scale, config.lambda_cssc)
            loss = tf.nn.compute_average_loss(per_example["total"], global_batch_size=batch)
            scaled = optimizer.scale_loss(loss) if cfg["mixed_precision"] else loss
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    replica_fn = tf.function(replica_step, jit_compile=True) if cfg["jit"] else replica_step

    @tf.function
    def train_step(inputs, targets):
        loss = strategy.run(replica_fn, args=(inputs, targets))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)

    losses = []

    def step():
        losses.append(float(train_step(inputs, targets)))

    with bench_util.PeakMemory() as memory:
        start = time.perf_counter()
        step()
        first = time.perf_counter() - start
        times = bench_util.time_calls(step, cfg["warmup"], cfg["steps"])
    stats = bench_util.summarize_times(times)
    return {
        **cfg,
        "lr_patch": lr,
        "params": model.count_params(),
        "first_step_s": round(first, 3),
        **stats,
        "samples_per_s": batch / stats["median_s"],
        "samples_per_s_mean": batch * len(times) / sum(times),
        "losses_finite": all(np.isfinite(losses)),
        "memory": memory.result(),
        "strategy": type(strategy).__name__,
        "device": bench_util.machine_info()["device"],
    }


def main(argv):
    del argv
    if FLAGS.child:
        bench_util.emit_child_result(run_one(json.loads(FLAGS.child)))
        return
    presets, patch, warmup, steps = FLAGS.presets, FLAGS.patch_size, FLAGS.warmup, FLAGS.steps
    batch = FLAGS.batch_size or (GPU_BATCH if bench_util.has_gpu() else CPU_BATCH)
    if FLAGS.smoke:
        presets, patch, warmup, steps, batch = ["tiny"], 24, 1, 2, FLAGS.batch_size or 2
    if patch % FLAGS.scale:
        raise app.UsageError(f"--patch_size {patch} is not a multiple of --scale {FLAGS.scale}")

    data = bench_util.header(NAME, {
        "presets": presets, "scale": FLAGS.scale, "patch_size": patch, "batch_size": batch,
        "batch_size_from_flag": FLAGS.batch_size is not None, "warmup": warmup, "steps": steps,
        "jit_compile": FLAGS.jit_compile, "mixed_precision": FLAGS.mixed_precision,
        "smoke": FLAGS.smoke,
    })
    data["notes"] = (
        "Step as in cspsr_tf/train/loop.py (default strategy, cspsr_loss_per_example, Adam), "
        "random constant data: no input pipeline. samples_per_s = batch / median step time."
    )
    results = data["results"] = []
    data["complete"] = False
    for preset in presets:
        for jit in bench_util.jit_values(FLAGS.jit_compile):
            cfg = {"preset": preset, "scale": FLAGS.scale, "patch_size": patch,
                   "batch_size": batch, "jit": jit, "mixed_precision": FLAGS.mixed_precision,
                   "warmup": warmup, "steps": steps}
            print(f"Measuring {preset} batch {batch} jit={jit} ...", flush=True)
            result = bench_util.run_child(__file__, cfg, timeout=FLAGS.child_timeout)
            results.append({**cfg, **result})
            if "error" in result:
                print(f"  failed: {result['error']}")
            else:
                print(f"  {result['samples_per_s']:.2f} samples/s", flush=True)
            bench_util.write_json(FLAGS.out, data, quiet=True)

    rows = []
    for r in results:
        ok = "error" not in r
        rows.append([
            r["preset"], r["batch_size"], "on" if r["jit"] else "off",
            bench_util.fmt(r.get("first_step_s"), 2),
            bench_util.fmt(r.get("median_s"), 3) if ok else "FAILED",
            bench_util.fmt(r.get("samples_per_s"), 2),
            bench_util.fmt(r["memory"]["process_peak_gib"], 2) if ok else "-",
        ])
    print()
    print(f"Training step, x{FLAGS.scale}, HR patch {patch} (LR {patch // FLAGS.scale}), "
          f"mixed_precision={FLAGS.mixed_precision}, random data, device "
          f"{data['machine']['device']}")
    bench_util.print_table(
        ["preset", "batch", "jit", "first s", "step s", "samples/s", "peak GiB"], rows
    )
    data["complete"] = True
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
