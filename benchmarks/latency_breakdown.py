"""Where the paper preset's inference time goes: the same model with one part removed at a time.

    .venv/bin/python benchmarks/latency_breakdown.py [--preset=paper --scale=4 --repeats=7]

Measures, in one process with the calls interleaved (so machine noise hits all alike), the
median latency of one 580x428 HR frame (batch 1) for: the full model; without the CVM;
without the dynamic convolution (a common conv instead); without CSFT (concatenation + 1x1
conv); with the `patches` dynamic-conv path; and FLOPs of each, by tf.profiler. The
difference to the full model is what each part costs in time beyond (or within) its FLOPs.
This is the profile behind the README's note on the missed latency target.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "latency_breakdown"
VARIANTS = {
    "full": {},
    "no_cvm": {"use_cvm": False},
    "no_dynamic_conv": {"use_dynamic_conv": False},
    "no_csft": {"use_csft": False},
    "patches_dynamic_conv": {"dynamic_conv_implementation": "patches"},
}

FLAGS = flags.FLAGS
flags.DEFINE_string("out", bench_util.default_out(NAME), "Where to write the JSON results.")
flags.DEFINE_bool("smoke", False, "A seconds-long run with the tiny preset.")
flags.DEFINE_string("preset", "paper", "Config preset.")
flags.DEFINE_integer("scale", 4, "SR factor.")
flags.DEFINE_string("hr_size", "428x580", "HR frame size HEIGHTxWIDTH.")
flags.DEFINE_integer("warmup", 2, "Untimed calls per variant.")
flags.DEFINE_integer("repeats", 7, "Timed rounds (each round calls every variant once).")


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from cspsr_tf.configs import get_config
    from cspsr_tf.model import build_cspsr
    from cspsr_tf.model_info import count_flops

    preset, repeats = ("tiny", 2) if FLAGS.smoke else (FLAGS.preset, FLAGS.repeats)
    hr_h, hr_w = (int(v) for v in FLAGS.hr_size.split("x"))
    lr = (hr_h // FLAGS.scale, hr_w // FLAGS.scale)
    rng = np.random.default_rng(0)
    inputs = {
        "vis_lr": tf.constant(rng.random((1, *lr, 3), dtype=np.float32)),
        "nir_lr": tf.constant(rng.random((1, *lr, 1), dtype=np.float32)),
    }
    functions, flops = {}, {}
    for name, overrides in VARIANTS.items():
        model = build_cspsr(get_config(preset, scale=FLAGS.scale, **overrides))
        functions[name] = tf.function(lambda x, m=model: m(x, training=False))
        flops[name] = count_flops(model, lr)
        for _ in range(FLAGS.warmup):
            bench_util.block(functions[name](inputs))
    times = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, fn in functions.items():
            times[name].extend(bench_util.time_calls(lambda f=fn: bench_util.block(f(inputs)), 0, 1))
    rows, results = [], {}
    full = bench_util.summarize_times(times["full"])["median_s"]
    for name in VARIANTS:
        median = bench_util.summarize_times(times[name])["median_s"]
        results[name] = {
            "median_s": median,
            "gflops": flops[name] / 1e9,
            "gflop_per_s": flops[name] / 1e9 / median,
            "times_s": times[name],
        }
        rows.append([name, f"{flops[name] / 1e9:.2f}", f"{median:.3f}", f"{median - full:+.3f}",
                     f"{flops[name] / 1e9 / median:.1f}"])
    print(f"{preset} x{FLAGS.scale}, LR {lr[0]}x{lr[1]}, batch 1")
    bench_util.print_table(["variant", "GFLOPs", "median s", "vs full s", "GFLOP/s"], rows)
    data = bench_util.header(NAME, {"preset": preset, "scale": FLAGS.scale, "hr_size": FLAGS.hr_size,
                                    "repeats": repeats, "smoke": FLAGS.smoke})
    data["results"] = results
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
