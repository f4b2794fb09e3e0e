"""Per-pixel dynamic convolution: time and peak memory of each implementation.

    .venv/bin/python benchmarks/dynamic_conv.py
    .venv/bin/python benchmarks/dynamic_conv.py --smoke

`cspsr_tf.model.layers.dynamic_conv.apply_per_pixel_kernels` filters [B, H, W, C] features with
one k x k kernel per pixel (shared by the channels). Implementations compared:

* `patches`  (the layer's reference): tf.image.extract_patches, materialises [B,H,W,k*k*C];
* `shift`    (the layer's default): sum of the k*k shifted copies of the zero-padded input;
* `shift_addn` (benchmark only): `shift` with one tf.add_n instead of a chain of adds;
* `shift_custom_grad` (benchmark only): `shift`'s forward (the same ops in the same order)
  with a hand-written gradient that is itself a shift-and-sum (features) and k*k channel
  reductions (kernels), instead of autodiff's k*k StridedSliceGrad full-size tensors;
* `depthwise` (benchmark only): the k*k shifted copies built by one tf.nn.depthwise_conv2d
  with a one-hot (identity) filter bank [k, k, C, k*k], then multiplied and summed over taps.

For each input size (default: C=64, k=3, batch 1 of 107x145 and batch 32 of 30x30) and each
of forward and forward+backward (gradients w.r.t. features and kernels of
sum(out * upstream)), the timed calls of all implementations are interleaved in this
process (same load for all); the medians are reported. Peak memory: one child process per
implementation; the figure is the peak of TensorFlow's own allocator during the calls above
what it held before them (byte-exact: on a GPU its allocator statistics, on a CPU those of
the BFC allocator that TF_CPU_ALLOCATOR_USE_BFC=true selects in the children). The
resident-set peak above the resident set just before the calls is recorded too (glibc's
mmap threshold fixed so that freed buffers are returned); it carries some MiB of noise
(thread arenas, the executor), too much for these sizes. Note that the graph executor may
run independent ops (e.g. the k*k shifted products of `shift`) at the same time, so the
peak can exceed a sequential count of live tensors.
Every implementation is compared with `shift` (max |difference|, bitwise equality).

Targets (issue): the default path (`shift`) >= 2x faster than `patches` for inference, no
slower for training (forward+backward), and at most a third of its peak memory.
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

NAME = "dynamic_conv"
IMPLEMENTATIONS = ("patches", "shift", "fused", "shift_addn", "shift_custom_grad", "depthwise")
MODES = ("forward", "forward_backward")
TARGETS = {"forward_speedup_min": 2.0, "forward_backward_speedup_min": 1.0,
           "peak_memory_fraction_max": 1.0 / 3.0}

FLAGS = flags.FLAGS
bench_util.define_common_flags(flags, NAME, jit_default="off")
flags.DEFINE_list("sizes", ["1x107x145", "32x30x30"], "Inputs as BATCHxHEIGHTxWIDTH.")
flags.DEFINE_integer("channels", 64, "Feature channels C.")
flags.DEFINE_integer("kernel_size", 3, "Kernel size k.")
flags.DEFINE_list("implementations", list(IMPLEMENTATIONS), "Implementations to compare.")
flags.DEFINE_integer("warmup", 3, "Untimed calls of each implementation.")
flags.DEFINE_integer("repeats", 20, "Timed calls of each implementation (interleaved).")
flags.DEFINE_integer("memory_calls", 3, "Calls per measurement in the memory children.")
flags.DEFINE_bool("memory", True, "Measure peak memory (one child process per implementation).")


def make_impl(name, k):
    """A function (features, kernels) -> out for one implementation."""
    import numpy as np
    import tensorflow as tf

    from cspsr_tf.model.layers.dynamic_conv import apply_per_pixel_kernels

    if name in ("patches", "shift", "fused"):  # fused: the shift-and-sum compiled by XLA
        return lambda f, w: apply_per_pixel_kernels(f, w, k, name)
    if name == "shift_addn":
        def shift_addn(features, kernels):
            r = k // 2
            height, width = tf.shape(features)[1], tf.shape(features)[2]
            padded = tf.pad(features, [[0, 0], [r, r], [r, r], [0, 0]])
            terms = []
            for u in range(k):
                for v in range(k):
                    tap = u * k + v
                    terms.append(padded[:, u : u + height, v : v + width, :]
                                 * kernels[..., tap : tap + 1])
            return tf.add_n(terms)
        return shift_addn
    if name == "shift_custom_grad":
        def shifted(x, height, width, u, v):
            return x[:, u : u + height, v : v + width, :]

        def shift_sum(x, w, offsets, r, height, width):
            # Sum over taps t of shifted(pad(x), offset_t) * shifted(pad(w), offset_t)[t].
            px = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]])
            pw = w if offsets is None else tf.pad(w, [[0, 0], [r, r], [r, r], [0, 0]])
            out = None
            for u in range(k):
                for v in range(k):
                    tap = u * k + v
                    if offsets is None:  # forward: kernels unshifted, as in `shift`
                        term = shifted(px, height, width, u, v) * w[..., tap : tap + 1]
                    else:
                        du, dv = offsets(u, v)
                        term = (shifted(px, height, width, du, dv)
                                * shifted(pw, height, width, du, dv)[..., tap : tap + 1])
                    out = term if out is None else out + term
            return out

        @tf.custom_gradient
        def shift_custom_grad(features, kernels):
            r = k // 2
            height, width = tf.shape(features)[1], tf.shape(features)[2]
            out = shift_sum(features, kernels, None, r, height, width)

            def grad(upstream):
                # d features(p) = sum_t upstream(p - d_t) * kernels_t(p - d_t): the same
                # shift-and-sum with the opposite offsets (2r - u, 2r - v).
                d_features = shift_sum(upstream, kernels, lambda u, v: (2 * r - u, 2 * r - v),
                                       r, height, width)
                # d kernels_t(p) = sum_c upstream(p, c) * features(p + d_t, c).
                padded = tf.pad(features, [[0, 0], [r, r], [r, r], [0, 0]])
                d_kernels = tf.stack(
                    [tf.reduce_sum(upstream * padded[:, u : u + height, v : v + width, :], -1)
                     for u in range(k) for v in range(k)],
                    axis=-1,
                )
                return d_features, d_kernels

            return out, grad
        return shift_custom_grad
    if name == "depthwise":
        def depthwise(features, kernels):
            channels = features.shape[-1]
            eye = np.eye(k * k, dtype=np.float32).reshape(k, k, 1, k * k)
            bank = tf.constant(np.tile(eye, (1, 1, channels, 1)), dtype=features.dtype)
            # Output channel c * k*k + tap holds features(c) shifted by tap.
            shifted = tf.nn.depthwise_conv2d(features, bank, [1, 1, 1, 1], "SAME")
            shape = tf.shape(features)
            shifted = tf.reshape(shifted, [shape[0], shape[1], shape[2], channels, k * k])
            return tf.reduce_sum(shifted * kernels[:, :, :, tf.newaxis, :], axis=-1)
        return depthwise
    raise ValueError(f"unknown implementation {name!r}")


def parse_size(text):
    batch, height, width = (int(v) for v in text.lower().split("x"))
    return batch, height, width


def make_inputs(size, channels, k, dtype, seed=0):
    import numpy as np
    import tensorflow as tf

    batch, height, width = size
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
    logits = rng.standard_normal((batch, height, width, k * k)).astype(np.float32)
    kernels = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    upstream = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
    return tuple(tf.constant(a, dtype=dtype) for a in (features, kernels, upstream))


def make_fn(impl, mode, jit):
    import tensorflow as tf

    if mode == "forward":
        def forward(features, kernels, upstream):
            del upstream
            return impl(features, kernels)
        return tf.function(forward, jit_compile=jit)

    def forward_backward(features, kernels, upstream):
        with tf.GradientTape() as tape:
            tape.watch([features, kernels])
            loss = tf.reduce_sum(tf.cast(impl(features, kernels) * upstream, tf.float32))
        return tape.gradient(loss, [features, kernels])
    return tf.function(forward_backward, jit_compile=jit)


def child_memory(cfg):
    """Child: peak memory of one implementation for every (size, mode, jit)."""
    import tensorflow as tf

    dtype = tf.float16 if cfg["mixed_precision"] else tf.float32
    impl = make_impl(cfg["implementation"], cfg["kernel_size"])
    out = []
    for size in cfg["sizes"]:
        inputs = make_inputs(size, cfg["channels"], cfg["kernel_size"], dtype)
        for mode in MODES:
            for jit in cfg["jits"]:
                fn = make_fn(impl, mode, jit)
                try:
                    bench_util.block(fn(*inputs))  # trace (and compile) outside the measurement
                except (tf.errors.OpError, ValueError) as error:
                    out.append({"size": size, "mode": mode, "jit": jit,
                                "error": f"{type(error).__name__}: {str(error)[:300]}"})
                    continue
                with bench_util.PeakMemory() as memory:
                    for _ in range(cfg["memory_calls"]):
                        bench_util.block(fn(*inputs))
                source, peak = memory.op_peak_mib()
                out.append({"size": size, "mode": mode, "jit": jit, "op_peak_mib": peak,
                            "op_peak_source": source, **memory.result()})
    return {"implementation": cfg["implementation"], "measurements": out}


def time_all(size, mode, jit, names, channels, k, dtype, warmup, repeats):
    """Interleaved timing of every implementation; plus agreement with `shift`."""
    import numpy as np
    import tensorflow as tf

    inputs = make_inputs(size, channels, k, dtype)
    fns = {name: make_fn(make_impl(name, k), mode, jit) for name in names}
    results, outputs = {}, {}
    for name, fn in list(fns.items()):
        start = time.perf_counter()
        try:
            value = bench_util.block(fn(*inputs))
        except (tf.errors.OpError, ValueError) as error:
            results[name] = {"error": bench_util.error_summary(f"{type(error).__name__}: {error}")}
            del fns[name]
            continue
        results[name] = {"first_call_s": round(time.perf_counter() - start, 4)}
        outputs[name] = [np.asarray(v) for v in (value if isinstance(value, list) else [value])]
    for _ in range(warmup):
        for fn in fns.values():
            bench_util.block(fn(*inputs))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            bench_util.block(fn(*inputs))
            times[name].append(time.perf_counter() - start)
    reference = "shift" if "shift" in outputs else next(iter(outputs), None)
    for name in fns:
        results[name].update(bench_util.summarize_times(times[name]))
        diffs = [float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                 for a, b in zip(outputs[name], outputs[reference], strict=True)]
        results[name]["max_abs_diff_vs_" + reference] = max(diffs)
        results[name]["bitwise_equal_to_" + reference] = all(
            np.array_equal(a, b) for a, b in zip(outputs[name], outputs[reference], strict=True)
        )
    if "patches" in fns:
        for name in fns:
            results[name]["speedup_vs_patches"] = (
                results["patches"]["median_s"] / results[name]["median_s"]
            )
    return results


def main(argv):
    del argv
    import tensorflow as tf

    # Every implementation x mode is its own tf.function: the retracing warning is expected.
    tf.get_logger().setLevel("ERROR")
    if FLAGS.child:
        bench_util.emit_child_result(child_memory(json.loads(FLAGS.child)))
        return
    names = list(FLAGS.implementations)
    unknown = set(names) - set(IMPLEMENTATIONS)
    if unknown:
        raise app.UsageError(f"unknown implementations {sorted(unknown)}")
    sizes = [parse_size(s) for s in FLAGS.sizes]
    channels, k = FLAGS.channels, FLAGS.kernel_size
    warmup, repeats, memory_calls = FLAGS.warmup, FLAGS.repeats, FLAGS.memory_calls
    if FLAGS.smoke:
        sizes, channels, warmup, repeats, memory_calls = [(1, 12, 16), (4, 6, 6)], 8, 1, 3, 1
    dtype = tf.float16 if FLAGS.mixed_precision else tf.float32
    jits = bench_util.jit_values(FLAGS.jit_compile)

    data = bench_util.header(NAME, {
        "sizes": [list(s) for s in sizes], "channels": channels, "kernel_size": k,
        "implementations": names, "warmup": warmup, "repeats": repeats,
        "memory_calls": memory_calls, "jit_compile": FLAGS.jit_compile,
        "mixed_precision": FLAGS.mixed_precision, "smoke": FLAGS.smoke,
    })
    data["targets"] = {**TARGETS, "what": "the default `shift` path against `patches`"}
    data["notes"] = (
        "Times: medians of interleaved tf.function calls in one process; forward_backward "
        "includes the forward pass. peak_memory_mib: the op's peak in a child process per "
        "implementation, above what was allocated before the calls (inputs excluded): "
        "TensorFlow's allocator statistics (GPU, or CPU with TF_CPU_ALLOCATOR_USE_BFC=true), "
        "else the resident-set peak (op_peak_source says which)."
    )
    timing = data["timing"] = []
    memory = data["memory_children"] = {}
    data["complete"] = False
    for size in sizes:
        for mode in MODES:
            for jit in jits:
                print(f"Timing {mode} on {'x'.join(map(str, size))}, jit={jit} ...", flush=True)
                timing.append({
                    "size": list(size), "mode": mode, "jit": jit,
                    "implementations": time_all(size, mode, jit, names, channels, k, dtype,
                                                warmup, repeats),
                })
                bench_util.write_json(FLAGS.out, data, quiet=True)

    if FLAGS.memory:
        for name in names:
            print(f"Peak memory of {name} (child process) ...", flush=True)
            cfg = {"implementation": name, "sizes": [list(s) for s in sizes],
                   "channels": channels, "kernel_size": k, "jits": jits,
                   "mixed_precision": FLAGS.mixed_precision, "memory_calls": memory_calls}
            memory[name] = bench_util.run_child(
                __file__, cfg,
                env={**bench_util.FIXED_MMAP_ENV, **bench_util.CPU_ALLOCATOR_STATS_ENV},
            )
            if "error" in memory[name]:
                print(f"  failed: {memory[name]['error']}")
            bench_util.write_json(FLAGS.out, data, quiet=True)

    def peak_of(name, size, mode, jit):
        for m in memory.get(name, {}).get("measurements", []):
            if m["size"] == list(size) and m["mode"] == mode and m["jit"] == jit:
                return m.get("op_peak_mib")
        return None

    rows, verdicts = [], []
    for entry in timing:
        size, mode, jit = entry["size"], entry["mode"], entry["jit"]
        patches_peak = peak_of("patches", size, mode, jit)
        for name, r in entry["implementations"].items():
            if "error" in r:
                rows.append(["x".join(map(str, size)), mode, "on" if jit else "off", name,
                             "FAILED", "", "", "", "", ""])
                continue
            peak = peak_of(name, size, mode, jit)
            r["peak_memory_mib"] = peak
            if patches_peak:
                r["peak_memory_fraction_of_patches"] = None if peak is None else peak / patches_peak
            rows.append([
                "x".join(map(str, size)), mode, "on" if jit else "off", name,
                bench_util.fmt(r["median_s"] * 1e3, 3), bench_util.fmt(r.get("speedup_vs_patches"), 2),
                bench_util.fmt(peak, 1), bench_util.fmt(r.get("peak_memory_fraction_of_patches"), 2),
                f"{r[next(key for key in r if key.startswith('max_abs_diff'))]:.1e}",
                "yes" if r[next(key for key in r if key.startswith("bitwise"))] else "no",
            ])
        timed = {n: r for n, r in entry["implementations"].items() if "median_s" in r}
        if timed:
            fastest = min(timed, key=lambda n: timed[n]["median_s"])
            entry["fastest"] = fastest
            equal = next((v for key, v in timed[fastest].items() if key.startswith("bitwise")), None)
            verdicts.append(
                f"{'x'.join(map(str, size))} {mode} jit={jit}: fastest {fastest} "
                f"({timed[fastest]['median_s'] * 1e3:.3f} ms; bitwise equal to shift: "
                f"{'yes' if equal else 'no'})"
            )
        shift = entry["implementations"].get("shift", {})
        if "speedup_vs_patches" in shift:
            need = TARGETS[f"{mode}_speedup_min"]
            speed_ok = shift["speedup_vs_patches"] >= need
            fraction = shift.get("peak_memory_fraction_of_patches")
            mem_ok = None if fraction is None else fraction <= TARGETS["peak_memory_fraction_max"]
            entry["shift_meets_target"] = {"speed": speed_ok, "peak_memory": mem_ok}
            verdicts.append(
                f"{'x'.join(map(str, size))} {mode} jit={jit}: shift {shift['speedup_vs_patches']:.2f}x "
                f"patches (need >= {need}: {'OK' if speed_ok else 'MISSED'}), memory "
                f"{bench_util.fmt(fraction, 2)} of patches (need <= 0.33: "
                f"{'-' if mem_ok is None else ('OK' if mem_ok else 'MISSED')})"
            )
    print()
    print(f"Per-pixel dynamic convolution, C={channels}, k={k}, dtype={dtype.name}")
    bench_util.print_table(
        ["BxHxW", "mode", "jit", "impl", "median ms", "x patches", "peak MiB", "mem/patches",
         "max|d| vs shift", "bitwise=shift"],
        rows,
    )
    print()
    for line in verdicts:
        print(line)

    data["complete"] = True
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
