"""Inference latency, throughput and peak memory of CSPSR on one frame.

    .venv/bin/python benchmarks/inference_speed.py            # paper + small, x4 + x2
    .venv/bin/python benchmarks/inference_speed.py --smoke    # seconds, tiny preset

For every (preset, scale, jit_compile) one fresh child process builds the model (random
weights), runs `tf.function(model, jit_compile=...)` on one 580x428 (width x height) HR
frame's LR pair (x4: 145x107, x2: 290x214), batch 1, and reports:

* the first call (tracing, plus XLA compilation with jit_compile),
* the median latency of `--repeats` calls after `--warmup` calls (the output is read back
  to host memory, so the time is end to end),
* output megapixels per second (HR pixels / median latency),
* the child's peak resident memory (VmHWM; its whole life, TensorFlow import included),
  and the peak during the timed calls alone.

Targets (issue): paper preset, x4, one 580x428 frame: median latency <= 1.0 s and peak
resident memory <= 2 GiB on the 2-core CPU machine.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import json  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from cspsr_tf.model_info import parse_size  # noqa: E402

NAME = "inference_speed"
TARGET_LATENCY_S = 1.0
TARGET_PEAK_GIB = 2.0

FLAGS = flags.FLAGS
bench_util.define_common_flags(flags, NAME, jit_default="both")
flags.DEFINE_list("presets", ["paper", "small"], "Config presets to measure.")
flags.DEFINE_list("scales", ["4", "2"], "SR factors to measure.")
flags.DEFINE_string("hr_size", "428x580", "HR frame size HEIGHTxWIDTH (divisible by each scale).")
flags.DEFINE_integer("batch", 1, "Frames per call.")
flags.DEFINE_integer("warmup", 3, "Untimed calls after the first one.")
flags.DEFINE_integer("repeats", 10, "Timed calls; the median is reported.")
flags.DEFINE_integer("child_timeout", 1800, "Seconds allowed for one configuration.")


def run_one(cfg):
    """Child: measures one configuration; returns a dict."""
    import numpy as np
    import tensorflow as tf

    from cspsr_tf.configs import get_config
    from cspsr_tf.model import build_cspsr

    bench_util.set_mixed_precision(cfg["mixed_precision"])
    config = get_config(cfg["preset"], "full", scale=cfg["scale"])
    model = build_cspsr(config)
    hr_h, hr_w = cfg["hr_size"]
    lr_h, lr_w = hr_h // cfg["scale"], hr_w // cfg["scale"]
    rng = np.random.default_rng(0)
    inputs = {
        "vis_lr": tf.constant(rng.random((cfg["batch"], lr_h, lr_w, 3), np.float32)),
        "nir_lr": tf.constant(rng.random((cfg["batch"], lr_h, lr_w, 1), np.float32)),
    }
    forward = tf.function(lambda x: model(x, training=False), jit_compile=cfg["jit"])

    def call():
        return bench_util.block(forward(inputs))

    with bench_util.PeakMemory() as memory:
        start = time.perf_counter()
        call()
        first = time.perf_counter() - start
        times = bench_util.time_calls(call, cfg["warmup"], cfg["repeats"])
    stats = bench_util.summarize_times(times)
    out_pixels = cfg["batch"] * lr_h * cfg["scale"] * lr_w * cfg["scale"]
    return {
        **cfg,
        "lr_size": [lr_h, lr_w],
        "params": model.count_params(),
        "first_call_s": round(first, 3),
        **stats,
        "output_megapixels_per_s": out_pixels / stats["median_s"] / 1e6,
        "memory": memory.result(),
        "device": bench_util.machine_info()["device"],
    }


def main(argv):
    del argv
    if FLAGS.child:
        bench_util.emit_child_result(run_one(json.loads(FLAGS.child)))
        return
    presets, scales = FLAGS.presets, [int(s) for s in FLAGS.scales]
    hr_size, warmup, repeats = parse_size(FLAGS.hr_size), FLAGS.warmup, FLAGS.repeats
    if FLAGS.smoke:
        presets, hr_size, warmup, repeats = ["tiny"], (32, 48), 1, 2
    for scale in scales:
        if hr_size[0] % scale or hr_size[1] % scale:
            raise app.UsageError(f"--hr_size {hr_size} is not divisible by scale {scale}")

    data = bench_util.header(NAME, {
        "presets": presets, "scales": scales, "hr_size": list(hr_size), "batch": FLAGS.batch,
        "warmup": warmup, "repeats": repeats, "jit_compile": FLAGS.jit_compile,
        "mixed_precision": FLAGS.mixed_precision, "smoke": FLAGS.smoke,
    })
    data["targets"] = {
        "what": "paper preset, x4, one 580x428 frame, batch 1, on the 2-core CPU machine",
        "median_latency_s_max": TARGET_LATENCY_S,
        "peak_resident_gib_max": TARGET_PEAK_GIB,
        "peak_memory_figure": "memory.process_peak_gib: VmHWM of a child process that did "
                              "only this configuration (TensorFlow import included)",
    }
    data["notes"] = (
        "Random weights. One child process per configuration. Latency = median wall time of "
        "a tf.function call whose outputs are read back to host memory. Output megapixels per "
        "second count HR pixels of vis_sr."
    )
    results = data["results"] = []
    data["complete"] = False
    for preset in presets:
        for scale in scales:
            for jit in bench_util.jit_values(FLAGS.jit_compile):
                cfg = {
                    "preset": preset, "scale": scale, "hr_size": list(hr_size), "jit": jit,
                    "mixed_precision": FLAGS.mixed_precision, "batch": FLAGS.batch,
                    "warmup": warmup, "repeats": repeats,
                }
                print(f"Measuring {preset} x{scale} jit={jit} ...", flush=True)
                result = bench_util.run_child(__file__, cfg, timeout=FLAGS.child_timeout)
                results.append({**cfg, **result})
                if "error" in result:
                    print(f"  failed: {result['error']}")
                else:
                    print(f"  median {result['median_s']:.4f} s, peak "
                          f"{result['memory']['process_peak_gib']:.2f} GiB", flush=True)
                # Partial results survive an interrupted run (e.g. gpu.sh's timeouts).
                bench_util.write_json(FLAGS.out, data, quiet=True)

    rows = []
    for r in results:
        ok = "error" not in r
        target = ""
        if ok and r["preset"] == "paper" and r["scale"] == 4:
            lat_ok = r["median_s"] <= TARGET_LATENCY_S
            mem_ok = r["memory"]["process_peak_gib"] <= TARGET_PEAK_GIB
            r["meets_target"] = {"latency": lat_ok, "peak_memory": mem_ok}
            target = f"latency {'OK' if lat_ok else 'MISSED'}, memory {'OK' if mem_ok else 'MISSED'}"
        rows.append([
            r["preset"], f"x{r['scale']}", "on" if r["jit"] else "off",
            "x".join(str(v) for v in r.get("lr_size", [])) or "-",
            bench_util.fmt(r.get("first_call_s"), 2),
            bench_util.fmt(r.get("median_s"), 3) if ok else "FAILED",
            bench_util.fmt(r.get("output_megapixels_per_s"), 3),
            bench_util.fmt(r["memory"]["process_peak_gib"], 2) if ok else "-",
            target,
        ])
    print()
    print(f"Inference, batch {FLAGS.batch}, HR {hr_size[1]}x{hr_size[0]} (WxH), "
          f"mixed_precision={FLAGS.mixed_precision}, device {data['machine']['device']}")
    bench_util.print_table(
        ["preset", "scale", "jit", "LR HxW", "first s", "median s", "out MP/s", "peak GiB",
         f"target (paper x4: <= {TARGET_LATENCY_S} s, <= {TARGET_PEAK_GIB} GiB)"],
        rows,
    )
    data["complete"] = True
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
