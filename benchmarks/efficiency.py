"""How well CSPSR uses the machine: achieved GFLOP/s against a plain conv stack of equal cost.

    .venv/bin/python benchmarks/efficiency.py
    .venv/bin/python benchmarks/efficiency.py --smoke

The reference is the cheapest network of the same cost that TensorFlow runs well: a 3x3
convolution 3->64 followed by N plain 3x3 convolutions 64->64 with ReLU (same width as
the paper preset, C = 64), on the same LR input. N is chosen so that the reference's
FLOPs, counted by the same profiler (`cspsr_tf.model.model_info.count_flops`: tf.profiler on the
frozen inference graph, a multiply-add = 2 FLOPs), match the CSPSR preset's.

Both networks run in the same precision (--precisions: float32, bfloat16) as `tf.function`
in the same process, their timed calls interleaved
(A, B, A, B, ...) so that load from other processes hits both alike. Achieved GFLOP/s =
profiler FLOPs / median latency. Target (issue): CSPSR >= 0.7 x the plain stack's GFLOP/s.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from cspsr_tf.model import model_info  # noqa: E402, I001

NAME = "efficiency"
TARGET_RATIO = 0.7
WIDTH = 64

FLAGS = flags.FLAGS
bench_util.define_common_flags(flags, NAME, jit_default="off")
flags.DEFINE_list("precisions", ["float32", "bfloat16"],
                  "Precisions (both networks run in each; ratios compare within a precision).")
flags.DEFINE_list("ops", ["fused", "shift"], "CSPSR's dynamic_conv_implementation values to measure.")
flags.DEFINE_string("preset", "paper", "Config preset to measure: paper, small or tiny.")
flags.DEFINE_integer("scale", 4, "SR factor.")
flags.DEFINE_string("hr_size", "428x580", "HR frame size HEIGHTxWIDTH (divisible by the scale).")
flags.DEFINE_integer("warmup", 3, "Untimed calls of each network after the first one.")
flags.DEFINE_integer("repeats", 10, "Timed calls of each network (interleaved).")


def build_plain_stack(num_layers, width=WIDTH, precision="float32"):
    """conv3x3(3->width) + num_layers x conv3x3(width->width), ReLU; CSPSR's dict inputs."""
    import keras

    from cspsr_tf.model.precision import policy_name

    policy = policy_name(precision)
    vis_lr = keras.Input(shape=(None, None, 3), name="vis_lr")
    nir_lr = keras.Input(shape=(None, None, 1), name="nir_lr")  # unused, same signature
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv0",
                            dtype=policy)(vis_lr)
    for i in range(num_layers):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv{i + 1}",
                                dtype=policy)(x)
    out = keras.layers.Activation("linear", dtype="float32", name="features")(x)
    return keras.Model({"vis_lr": vis_lr, "nir_lr": nir_lr}, {"features": out}, name="plain")


def matching_depth(target_flops, lr_size):
    """The N whose plain stack's profiler FLOPs are closest to `target_flops`."""
    count_flops = model_info.count_flops
    one = count_flops(build_plain_stack(1), lr_size)
    two = count_flops(build_plain_stack(2), lr_size)
    per_layer, base = two - one, one - (two - one)
    n = max(1, round((target_flops - base) / per_layer))
    return n, per_layer, base


def measure(preset, jit, lr_size, warmup, repeats, precision="float32", ops="fused"):
    import numpy as np
    import tensorflow as tf

    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config
    count_flops = model_info.count_flops
    # FLOPs are counted on the float32 graphs (the profiler's counts do not depend on the
    # dtype); both networks then run in `precision`.
    config = get_config(preset, "full", scale=FLAGS.scale, dynamic_conv_implementation="shift")
    cspsr_flops = count_flops(build_cspsr(config, precision="float32"), lr_size)
    n, per_layer, base = matching_depth(cspsr_flops, lr_size)
    plain_flops = count_flops(build_plain_stack(n), lr_size)
    cspsr = build_cspsr(get_config(preset, "full", scale=FLAGS.scale, dynamic_conv_implementation=ops),
                        precision=precision)
    plain = build_plain_stack(n, precision=precision)

    rng = np.random.default_rng(0)
    inputs = {
        "vis_lr": tf.constant(rng.random((1, *lr_size, 3), np.float32)),
        "nir_lr": tf.constant(rng.random((1, *lr_size, 1), np.float32)),
    }
    nets = {"cspsr": cspsr, "plain_stack": plain}
    fns = {
        name: tf.function(lambda x, m=model: m(x, training=False), jit_compile=jit)
        for name, model in nets.items()
    }
    results = {}
    callable_fns = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        try:
            bench_util.block(fn(inputs))
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
            results[name] = {"error": bench_util.error_summary(f"{type(error).__name__}: {error}")}
            continue
        results[name] = {"first_call_s": round(time.perf_counter() - start, 3)}
        callable_fns[name] = fn
    for _ in range(warmup):
        for fn in callable_fns.values():
            bench_util.block(fn(inputs))
    times = {name: [] for name in callable_fns}
    for _ in range(repeats):
        for name, fn in callable_fns.items():
            start = time.perf_counter()
            bench_util.block(fn(inputs))
            times[name].append(time.perf_counter() - start)
    flops = {"cspsr": cspsr_flops, "plain_stack": plain_flops}
    for name in callable_fns:
        stats = bench_util.summarize_times(times[name])
        results[name].update(stats)
        results[name]["gflops_per_s"] = flops[name] / stats["median_s"] / 1e9
    for name in nets:
        results[name]["gflops"] = flops[name] / 1e9
        results[name]["params"] = nets[name].count_params()
    results["plain_stack"]["num_64to64_layers"] = n
    results["plain_stack"]["flops_per_64to64_layer"] = per_layer
    results["plain_stack"]["flops_first_layer"] = base
    ratio = None
    if "gflops_per_s" in results["cspsr"] and "gflops_per_s" in results["plain_stack"]:
        ratio = results["cspsr"]["gflops_per_s"] / results["plain_stack"]["gflops_per_s"]
    return {"jit": jit, "precision": precision, "ops": ops, "networks": results,
            "gflops_per_s_ratio": ratio,
            "meets_target": None if ratio is None else ratio >= TARGET_RATIO}


def main(argv):
    del argv
    preset, hr, warmup, repeats = FLAGS.preset, FLAGS.hr_size, FLAGS.warmup, FLAGS.repeats
    if FLAGS.smoke:
        preset, hr, warmup, repeats = "tiny", "32x48", 1, 2
    hr_h, hr_w = (int(v) for v in hr.lower().split("x"))
    if hr_h % FLAGS.scale or hr_w % FLAGS.scale:
        raise app.UsageError(f"--hr_size {hr} is not divisible by --scale {FLAGS.scale}")
    lr_size = (hr_h // FLAGS.scale, hr_w // FLAGS.scale)
    # The common --mixed_precision flag (float16) is an alias of --precisions=float16.
    precisions = ["float16"] if FLAGS.mixed_precision else FLAGS.precisions
    runs = []
    for precision in precisions:
        for ops in FLAGS.ops:
            for jit in bench_util.jit_values(FLAGS.jit_compile):
                print(f"Measuring {preset} x{FLAGS.scale} ({precision}, {ops} ops, jit={jit}) and "
                      "the plain stack ...", flush=True)
                runs.append(measure(preset, jit, lr_size, warmup, repeats, precision, ops))

    rows = []
    for run in runs:
        for name, r in run["networks"].items():
            extra = f"N={r['num_64to64_layers']} convs 64->64" if name == "plain_stack" else preset
            rows.append([
                name, extra, run["precision"], run["ops"] if name == "cspsr" else "-",
                "on" if run["jit"] else "off", bench_util.fmt(r["gflops"], 2),
                bench_util.fmt(r.get("median_s"), 3) if "error" not in r else "FAILED",
                bench_util.fmt(r.get("gflops_per_s"), 1),
            ])
    print()
    print(f"LR {lr_size[0]}x{lr_size[1]} (HxW), x{FLAGS.scale}, batch 1")
    bench_util.print_table(
        ["network", "config", "precision", "ops", "jit", "GFLOPs", "median s", "GFLOP/s"], rows
    )
    for run in runs:
        ratio = run["gflops_per_s_ratio"]
        verdict = "-" if ratio is None else ("OK" if ratio >= TARGET_RATIO else "MISSED")
        print(f"{run['precision']}, {run['ops']} ops, jit={run['jit']}: CSPSR / plain GFLOP/s = "
              f"{bench_util.fmt(ratio, 3)} "
              f"(target >= {TARGET_RATIO}: {verdict})")
        for name, r in run["networks"].items():
            if "error" in r:
                print(f"  {name} failed: {r['error']}")

    data = bench_util.header(NAME, {
        "preset": preset, "scale": FLAGS.scale, "hr_size": [hr_h, hr_w],
        "lr_size": list(lr_size), "warmup": warmup, "repeats": repeats,
        "jit_compile": FLAGS.jit_compile, "precisions": precisions, "ops": FLAGS.ops,
        "smoke": FLAGS.smoke,
    })
    data["targets"] = {"cspsr_over_plain_gflops_per_s_min": TARGET_RATIO}
    data["notes"] = (
        "FLOPs by tf.profiler (multiply-add = 2) for both networks, including the CVM for "
        "CSPSR. Latency: median of interleaved tf.function calls in one process, outputs "
        "read back to host."
    )
    data["runs"] = runs
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
