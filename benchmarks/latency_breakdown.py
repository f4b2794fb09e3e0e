"""Where the paper preset's inference time goes: the same model with one part removed at a time.

    .venv/bin/python benchmarks/latency_breakdown.py [--preset=paper --scale=4 --repeats=7]

Measures, in one process with the calls interleaved (so machine noise hits all alike), the
median latency of one 580x428 HR frame (batch 1), in each of --precisions, for: the full
model (default `fused` ops: the dynamic convolution and CSFT's gates XLA-compiled); the same
with the plain-TensorFlow `shift` ops and with the `patches` reference; without the CVM;
without the dynamic convolution (a common conv instead); without CSFT (concatenation + 1x1
conv); and FLOPs of each, by tf.profiler. The difference to the full model of the same
precision is what each part costs in time beyond (or within) its FLOPs.
This is the profile behind the README's note on the missed latency target.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "latency_breakdown"
VARIANTS = {
    "full": {},
    "shift_ops": {"dynamic_conv_implementation": "shift"},
    "patches_dynamic_conv": {"dynamic_conv_implementation": "patches"},
    "no_cvm": {"use_cvm": False},
    "no_dynamic_conv": {"use_dynamic_conv": False},
    "no_csft": {"use_csft": False},
}

FLAGS = flags.FLAGS
flags.DEFINE_string("out", bench_util.default_out(NAME), "Where to write the JSON results.")
flags.DEFINE_bool("smoke", False, "A seconds-long run with the tiny preset.")
flags.DEFINE_string("preset", "paper", "Config preset.")
flags.DEFINE_integer("scale", 4, "SR factor.")
flags.DEFINE_string("hr_size", "428x580", "HR frame size HEIGHTxWIDTH.")
flags.DEFINE_integer("warmup", 2, "Untimed calls per variant.")
flags.DEFINE_integer("repeats", 7, "Timed rounds (each round calls every variant once).")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Precisions to measure every variant in.")


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config
    from cspsr_tf.model.model_info import count_flops

    preset, repeats = ("tiny", 2) if FLAGS.smoke else (FLAGS.preset, FLAGS.repeats)
    hr_h, hr_w = (int(v) for v in FLAGS.hr_size.split("x"))
    lr = (hr_h // FLAGS.scale, hr_w // FLAGS.scale)
    rng = np.random.default_rng(0)
    inputs = {
        "vis_lr": tf.constant(rng.random((1, *lr, 3), dtype=np.float32)),
        "nir_lr": tf.constant(rng.random((1, *lr, 1), dtype=np.float32)),
    }
    functions, flops = {}, {}
    keys = [(precision, name) for precision in FLAGS.precisions for name in VARIANTS]
    for precision, name in keys:
        config = get_config(preset, scale=FLAGS.scale, **VARIANTS[name])
        if name not in flops:
            # The profiler counts the float32 graph, and cannot see into XLA-compiled
            # functions: `fused` is counted as `shift` (the same arithmetic).
            counted = config if config.dynamic_conv_implementation != "fused" else \
                config.replace(dynamic_conv_implementation="shift")
            flops[name] = count_flops(build_cspsr(counted, precision="float32"), lr)
        model = build_cspsr(config, precision=precision)
        functions[precision, name] = tf.function(lambda x, m=model: m(x, training=False))
        for _ in range(FLAGS.warmup):
            bench_util.block(functions[precision, name](inputs))
    times = {key: [] for key in keys}
    for _ in range(repeats):
        for key, fn in functions.items():
            times[key].extend(bench_util.time_calls(lambda f=fn: bench_util.block(f(inputs)), 0, 1))
    rows, results = [], {}
    reference = bench_util.summarize_times(times["float32", "shift_ops"])["median_s"]
    for precision, name in keys:
        median = bench_util.summarize_times(times[precision, name])["median_s"]
        full = bench_util.summarize_times(times[precision, "full"])["median_s"]
        results[f"{precision}/{name}"] = {
            "precision": precision,
            "variant": name,
            "median_s": median,
            "minus_full_s": median - full,
            "ratio_to_float32_shift_ops": median / reference,
            "gflops": flops[name] / 1e9,
            "gflop_per_s": flops[name] / 1e9 / median,
            "times_s": times[precision, name],
        }
        rows.append([precision, name, f"{flops[name] / 1e9:.2f}", f"{median:.3f}",
                     f"{median - full:+.3f}", f"{median / reference:.2f}",
                     f"{flops[name] / 1e9 / median:.1f}"])
    print(f"{preset} x{FLAGS.scale}, LR {lr[0]}x{lr[1]}, batch 1")
    bench_util.print_table(["precision", "variant", "GFLOPs", "median s", "vs full s",
                            "vs float32 shift_ops", "GFLOP/s"], rows)
    data = bench_util.header(NAME, {"preset": preset, "scale": FLAGS.scale, "hr_size": FLAGS.hr_size,
                                    "repeats": repeats, "precisions": FLAGS.precisions,
                                    "smoke": FLAGS.smoke})
    data["results"] = results
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
