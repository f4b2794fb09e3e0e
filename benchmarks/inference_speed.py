"""Inference latency and peak memory of CSPSR by runtime, precision, fused ops and XLA.

    .venv/bin/python benchmarks/inference_speed.py            # paper x4, every configuration
    .venv/bin/python benchmarks/inference_speed.py --smoke    # seconds, tiny preset

A configuration is `RUNTIME-PRECISION[-OPS][-xla]`:
* `tf-float32-shift`: TensorFlow, float32, the DMF's element-wise parts as plain TF ops
  (`dynamic_conv_implementation=shift`): the reference, the path before fused ops existed;
* `tf-P-fused`: the dynamic convolution and CSFT's gates XLA-compiled (`fused`, the default);
* `-xla`: the whole forward pass in `tf.function(jit_compile=True)`;
* `tf-bfloat16-...`: Keras mixed_bfloat16 (cspsr_tf/model/precision.py lists the float32 islands);
* `litert-V`: the model converted by `cspsr_tf.export.litert_export` (variant V: float32, float16 or
  dynamic_int8) and run by the LiteRT interpreter with XNNPACK on --litert_threads threads.

Two parts, on one 580x428 (width x height) HR frame's LR pair (x4: 145x107), batch 1:

1. Side by side (the figures the targets are judged on): one child process builds every
   configuration with the same weights (random, with the zero-initialised reconstruction
   convolutions re-drawn so the output is not just bicubic), then calls them round robin,
   --repeats rounds, so that load from other processes hits all alike. Reported: each
   median, its ratio to `tf-float32-shift`, and the max abs difference of vis_sr to it.
2. Alone: a fresh child per configuration for the first call (tracing / compiling) and the
   peak resident memory (VmHWM of a process that did only that configuration); absolute
   latencies swing 2-3x with the load of these shared machines, so they are context only.

Targets (issue 11; paper preset, x4, 580x428): best configuration <= 0.5x the float32
TensorFlow latency (within the quality bounds of benchmarks/precision_quality.py); peak
resident memory <= 2 GiB.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from cspsr_tf.model.model_info import parse_size  # noqa: E402

NAME = "inference_speed"
REFERENCE = "tf-float32-shift"
CONFIGS = [
    REFERENCE, "tf-float32-shift-xla", "tf-float32-fused", "tf-bfloat16-shift",
    "tf-bfloat16-fused", "tf-bfloat16-fused-xla", "litert-float32", "litert-float16",
    "litert-dynamic_int8",
]
TARGET_RATIO = 0.5
TARGET_PEAK_GIB = 2.0

FLAGS = flags.FLAGS
flags.DEFINE_string("out", bench_util.default_out(NAME), "Where to write the JSON results.")
flags.DEFINE_bool("smoke", False, "A seconds-long run with tiny sizes, to check the script.")
flags.DEFINE_string("child", None, "Internal: run one part (JSON) and print its result.")
flags.DEFINE_string("preset", "paper", "Config preset.")
flags.DEFINE_integer("scale", 4, "SR factor.")
flags.DEFINE_list("configs", CONFIGS, "Configurations to measure (RUNTIME-PRECISION[-OPS][-xla]).")
flags.DEFINE_string("hr_size", "428x580", "HR frame size HEIGHTxWIDTH (divisible by the scale).")
flags.DEFINE_integer("warmup", 2, "Untimed calls of each configuration after the first one.")
flags.DEFINE_integer("repeats", 9, "Timed rounds (side by side) or calls (alone); medians are reported.")
flags.DEFINE_integer("litert_threads", 2, "LiteRT interpreter threads (XNNPACK).")
flags.DEFINE_bool("alone", True, "Also measure each configuration alone (first call, peak memory).")
flags.DEFINE_integer("child_timeout", 1800, "Seconds allowed for one child process.")


def parse_config(name):
    """'tf-bfloat16-fused-xla' -> dict(runtime, precision, ops, xla); raises ValueError."""
    parts = name.split("-")
    runtime = parts[0]
    if runtime == "litert" and len(parts) == 2:
        return {"name": name, "runtime": runtime, "variant": parts[1]}
    xla = parts[-1] == "xla"
    if xla:
        parts = parts[:-1]
    if runtime != "tf" or len(parts) != 3 or parts[1] not in ("float32", "bfloat16", "float16") \
            or parts[2] not in ("shift", "fused", "patches"):
        raise ValueError(f"unknown configuration {name!r} (e.g. tf-bfloat16-fused, litert-float32)")
    return {"name": name, "runtime": runtime, "precision": parts[1], "ops": parts[2], "xla": xla}


def make_inputs(lr_h, lr_w):
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "vis_lr": rng.random((1, lr_h, lr_w, 3), np.float32),
        "nir_lr": rng.random((1, lr_h, lr_w, 1), np.float32),
    }


def reference_weights(config):
    """Weights of a float32 model of `config`, with the all-zero kernels re-drawn (small)."""
    import numpy as np

    from cspsr_tf.model.build import build_cspsr

    model = build_cspsr(config, precision="float32")
    rng = np.random.default_rng(1)
    weights = []
    for w in model.get_weights():
        if w.ndim == 4 and not w.any():
            w = rng.normal(0.0, 0.01, w.shape).astype(w.dtype)
        weights.append(w)
    return weights


def build_callable(cfg, config, weights, inputs, scratch):
    """A no-argument function that runs configuration `cfg` once and returns vis_sr (numpy)."""
    import tensorflow as tf

    from cspsr_tf.model.build import build_cspsr

    if cfg["runtime"] == "litert":
        from cspsr_tf.export import litert_export

        model = build_cspsr(config.replace(dynamic_conv_implementation="shift"),
                            precision="float32")
        model.set_weights(weights)
        path = os.path.join(scratch, f"{cfg['name']}.tflite")
        litert_export.export_litert(model, path, inputs["vis_lr"].shape[1:3], variant=cfg["variant"])
        runner = litert_export.LiteRTRunner(path, num_threads=cfg["threads"])
        return lambda: runner(inputs["vis_lr"], inputs["nir_lr"])["vis_sr"]
    model = build_cspsr(config.replace(dynamic_conv_implementation=cfg["ops"]),
                        precision=cfg["precision"])
    model.set_weights(weights)
    tensors = {k: tf.constant(v) for k, v in inputs.items()}
    forward = tf.function(lambda x: model(x, training=False)["vis_sr"], jit_compile=cfg["xla"])
    return lambda: forward(tensors).numpy()


def child_side_by_side(job):
    """Child: every configuration in one process, calls interleaved."""
    import numpy as np

    from cspsr_tf.model.configs import get_config

    config = get_config(job["preset"], "full", scale=job["scale"])
    lr_h, lr_w = (v // job["scale"] for v in job["hr_size"])
    inputs = make_inputs(lr_h, lr_w)
    weights = reference_weights(config)
    calls, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="cspsr_speed_") as scratch:
        for name in job["configs"]:
            cfg = {**parse_config(name), "threads": job["litert_threads"]}
            try:
                calls[name] = build_callable(cfg, config, weights, inputs, scratch)
                start = time.perf_counter()
                out = calls[name]()
                results[name] = {**cfg, "first_call_s": round(time.perf_counter() - start, 3),
                                 "output": out}
            except Exception as error:  # One failing configuration must not lose the others.
                calls.pop(name, None)
                results[name] = {**cfg, "error": f"{type(error).__name__}: {str(error)[:400]}"}
                print(f"  {name}: failed: {results[name]['error']}", flush=True)
        for _ in range(job["warmup"]):
            for call in calls.values():
                call()
        times = {name: [] for name in calls}
        for _ in range(job["repeats"]):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    reference = results.get(REFERENCE, {}).get("output")
    for name, r in results.items():
        if name in times:
            r.update(bench_util.summarize_times(times[name]))
        out = r.pop("output", None)
        if out is not None and reference is not None:
            r["max_abs_diff_vs_reference"] = float(np.abs(out.astype(np.float64) - reference).max())
            r["finite"] = bool(np.isfinite(out).all())
    ref_median = results.get(REFERENCE, {}).get("median_s")
    for r in results.values():
        if r.get("median_s") and ref_median:
            r["ratio_to_reference"] = r["median_s"] / ref_median
    return {"results": list(results.values()), "lr_size": [lr_h, lr_w],
            "machine": bench_util.machine_info()}


def child_alone(job):
    """Child: one configuration; first call and peak resident memory."""
    from cspsr_tf.model.configs import get_config

    config = get_config(job["preset"], "full", scale=job["scale"])
    lr_h, lr_w = (v // job["scale"] for v in job["hr_size"])
    inputs = make_inputs(lr_h, lr_w)
    cfg = {**parse_config(job["config"]), "threads": job["litert_threads"]}
    with tempfile.TemporaryDirectory(prefix="cspsr_speed_") as scratch:
        with bench_util.PeakMemory() as memory:
            weights = reference_weights(config)
            call = build_callable(cfg, config, weights, inputs, scratch)
            start = time.perf_counter()
            call()
            first = time.perf_counter() - start
            times = bench_util.time_calls(call, job["warmup"], job["repeats"])
    return {**cfg, "first_call_s": round(first, 3), **bench_util.summarize_times(times),
            "memory": memory.result()}


def main(argv):
    del argv
    if FLAGS.child:
        job = json.loads(FLAGS.child)
        part = child_side_by_side if job["part"] == "side_by_side" else child_alone
        bench_util.emit_child_result(part(job))
        return
    preset, hr_size, warmup, repeats = FLAGS.preset, parse_size(FLAGS.hr_size), FLAGS.warmup, FLAGS.repeats
    configs = FLAGS.configs
    if FLAGS.smoke:
        preset, hr_size, warmup, repeats = "tiny", (32, 48), 1, 2
    for name in configs:
        try:
            parse_config(name)
        except ValueError as error:
            raise app.UsageError(str(error)) from None
    if REFERENCE not in configs:
        raise app.UsageError(f"--configs must include the reference {REFERENCE}")
    if hr_size[0] % FLAGS.scale or hr_size[1] % FLAGS.scale:
        raise app.UsageError(f"--hr_size {hr_size} is not divisible by scale {FLAGS.scale}")

    data = bench_util.header(NAME, {
        "preset": preset, "scale": FLAGS.scale, "configs": configs, "hr_size": list(hr_size),
        "warmup": warmup, "repeats": repeats, "litert_threads": FLAGS.litert_threads,
        "alone": FLAGS.alone, "smoke": FLAGS.smoke,
    })
    data["targets"] = {
        "what": f"{preset} preset, x{FLAGS.scale}, one {hr_size[1]}x{hr_size[0]} frame, batch 1",
        "best_ratio_to_float32_tf_max": TARGET_RATIO,
        "peak_resident_gib_max": TARGET_PEAK_GIB,
    }
    data["notes"] = (
        "Random weights (zero-initialised kernels re-drawn). side_by_side: one process, calls "
        "interleaved round robin; ratio_to_reference = median / median of tf-float32-shift. "
        "alone: one child process per configuration; memory.process_peak_gib is its VmHWM "
        "(TensorFlow import and, for LiteRT, the conversion included)."
    )
    data["complete"] = False
    job = {"preset": preset, "scale": FLAGS.scale, "hr_size": list(hr_size), "warmup": warmup,
           "repeats": repeats, "litert_threads": FLAGS.litert_threads}
    print(f"Side by side: {len(configs)} configurations, {repeats} rounds ...", flush=True)
    side = bench_util.run_child(__file__, {**job, "part": "side_by_side", "configs": configs},
                                timeout=FLAGS.child_timeout)
    data["side_by_side"] = side
    bench_util.write_json(FLAGS.out, data, quiet=True)
    if "error" in side:
        print(f"  failed: {side['error']}")
    data["alone"] = []
    if FLAGS.alone:
        for name in configs:
            print(f"Alone: {name} ...", flush=True)
            result = bench_util.run_child(__file__, {**job, "part": "alone", "config": name},
                                          timeout=FLAGS.child_timeout)
            data["alone"].append({"name": name, **result})
            bench_util.write_json(FLAGS.out, data, quiet=True)

    alone = {r["name"]: r for r in data["alone"]}
    rows = []
    for r in side.get("results", []):
        a = alone.get(r["name"], {})
        ok = "error" not in r
        rows.append([
            r["name"], bench_util.fmt(r.get("median_s"), 3) if ok else "FAILED",
            bench_util.fmt(r.get("ratio_to_reference"), 2),
            bench_util.fmt(r.get("max_abs_diff_vs_reference"), 5),
            bench_util.fmt(a.get("median_s"), 3),
            bench_util.fmt(a.get("first_call_s"), 1),
            bench_util.fmt(a["memory"]["process_peak_gib"], 2) if "memory" in a else "-",
        ])
    candidates = [r for r in side.get("results", []) if r.get("ratio_to_reference")
                  and r["name"] != REFERENCE and r.get("finite", False)]
    if candidates:
        best = min(candidates, key=lambda r: r["ratio_to_reference"])
        peak = alone.get(best["name"], {}).get("memory", {}).get("process_peak_gib")
        data["best"] = {
            "name": best["name"], "ratio_to_reference": best["ratio_to_reference"],
            "meets_ratio_target": best["ratio_to_reference"] <= TARGET_RATIO,
            "peak_resident_gib": peak,
            "meets_memory_target": None if peak is None else peak <= TARGET_PEAK_GIB,
        }
    print()
    print(f"Inference, {preset} x{FLAGS.scale}, batch 1, HR {hr_size[1]}x{hr_size[0]} (WxH), "
          f"device {data['machine']['device']}, load {data['machine']['load_average_1_5_15']}")
    bench_util.print_table(
        ["configuration", "median s (side by side)", "ratio", "max |diff|", "median s (alone)",
         "first call s", "peak GiB"], rows,
    )
    if "best" in data:
        b = data["best"]
        print(f"Best: {b['name']} at {b['ratio_to_reference']:.2f}x the float32 TF latency "
              f"(target <= {TARGET_RATIO}: {'met' if b['meets_ratio_target'] else 'MISSED'}); "
              f"peak {b['peak_resident_gib']} GiB (target <= {TARGET_PEAK_GIB})")
    data["complete"] = True
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
