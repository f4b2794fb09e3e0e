"""Helpers shared by the benchmark scripts: machine description, peak memory, child processes.

Every script runs its measurements of one configuration in a child process of its own
(`python benchmarks/<name>.py --child=<json>`), so that the child's peak resident memory
(`VmHWM` of /proc/self/status) belongs to that configuration alone. The child prints one
line `BENCH_RESULT <json>` on stdout, which `run_child` parses.

Peak memory is reported two ways:
* `vmhwm_bytes`: the child's whole peak resident set (Python, TensorFlow, the model, the
  run), the figure a user of the tool would see;
* `peak_above_start_bytes`: the peak during the measured runs above the resident set just
  before them. The kernel's peak counter is reset first (writing 5 to
  /proc/self/clear_refs, Linux >= 4.0) so that the TensorFlow import does not mask it.
On a GPU the device's own peak (`tf.config.experimental.get_memory_info`) is added.

This module imports TensorFlow only inside functions, so that a script can call
`quiet_tensorflow()` first.
"""

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
# The shared samples live beside the repository (`../shared` from its root), never at a fixed path.
SAMPLES_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "nirvis_samples")
RESULT_MARKER = "BENCH_RESULT "
GIB = 1024**3
MIB = 1024**2


# ---------------------------------------------------------------------------------------
# Memory


def proc_status():
    """{'VmHWM': bytes, 'VmRSS': bytes, ...} of this process (Linux /proc)."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    values[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return values


def peak_rss_bytes():
    """Peak resident set size of this process (VmHWM), or ru_maxrss where /proc is absent."""
    value = proc_status().get("VmHWM")
    if value is None:
        import resource

        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return value


def rss_bytes():
    return proc_status().get("VmRSS", 0)


def reset_peak_rss():
    """Resets the kernel's peak-RSS counter of this process; True if that worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return proc_status().get("VmHWM", -1) <= proc_status().get("VmRSS", 0) + 4 * MIB


class PeakMemory:
    """Measures the peak host (and GPU) memory of a block of code.

        with PeakMemory() as peak:
            run()
        peak.result()  # dict of bytes
    """

    def __enter__(self):
        import gc

        gc.collect()
        self.peak_before = peak_rss_bytes()
        self.reset_ok = reset_peak_rss()
        self.start_rss = rss_bytes()
        self.gpu = _gpu_device()
        if self.gpu:
            self.gpu_start = _reset_allocator_stats(self.gpu)
            if self.gpu_start is None:
                self.gpu = None
        # TensorFlow's CPU allocator keeps statistics only when it is a BFC allocator
        # (environment TF_CPU_ALLOCATOR_USE_BFC=true, see CPU_ALLOCATOR_STATS_ENV).
        self.cpu_start = _reset_allocator_stats("CPU:0")
        return self

    def __exit__(self, *exc):
        import tensorflow as tf

        self.peak = peak_rss_bytes()
        self.gpu_peak = None
        if self.gpu:
            self.gpu_peak = tf.config.experimental.get_memory_info(self.gpu)["peak"]
        self.cpu_peak = None
        if self.cpu_start is not None:
            self.cpu_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        return False

    def result(self):
        process_peak = max(self.peak, self.peak_before)
        out = {
            # The whole process's peak resident set, start-up included.
            "process_peak_bytes": process_peak,
            "process_peak_gib": round(process_peak / GIB, 3),
            # Peak resident set during the block (start-up transients excluded if reset_ok).
            "vmhwm_bytes": self.peak,
            "vmhwm_gib": round(self.peak / GIB, 3),
            "peak_before_block_bytes": self.peak_before,
            "rss_before_bytes": self.start_rss,
            "peak_reset_ok": self.reset_ok,
        }
        if self.reset_ok:
            above = max(0, self.peak - self.start_rss)
            out["peak_above_start_bytes"] = above
            out["peak_above_start_mib"] = round(above / MIB, 1)
        if self.gpu_peak is not None:
            out["gpu_peak_bytes"] = self.gpu_peak
            out["gpu_peak_above_start_mib"] = round((self.gpu_peak - self.gpu_start) / MIB, 1)
        if self.cpu_peak is not None:
            out["tf_cpu_allocator_peak_above_start_mib"] = round(
                (self.cpu_peak - self.cpu_start) / MIB, 2
            )
        return out

    def op_peak_mib(self):
        """The block's own peak, most precise first: GPU allocator, TF CPU allocator, RSS."""
        result = self.result()
        for key in ("gpu_peak_above_start_mib", "tf_cpu_allocator_peak_above_start_mib",
                    "peak_above_start_mib"):
            if result.get(key) is not None:
                return key, result[key]
        return None, None


def _reset_allocator_stats(device):
    """Resets TF's allocator statistics of `device`; its current bytes, or None if unsupported."""
    import tensorflow as tf

    try:
        tf.config.experimental.reset_memory_stats(device)
        return tf.config.experimental.get_memory_info(device)["current"]
    except (ValueError, RuntimeError):
        return None


def _gpu_device():
    import tensorflow as tf

    return "GPU:0" if tf.config.list_physical_devices("GPU") else None


# ---------------------------------------------------------------------------------------
# Machine


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """The machine and software a figure was measured on."""
    import keras
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (ValueError, RuntimeError):
            details = {}
        gpus.append(details.get("device_name", device.name))
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
    except OSError:
        load = None
    try:
        with open("/proc/meminfo") as f:
            total_mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        total_mem = None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_total_gib": round(total_mem / GIB, 1) if total_mem else None,
        "load_average_1_5_15": load,
        "device": gpus[0] if gpus else f"CPU ({cpu_model()})",
        "gpus": gpus,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "platform": platform.platform(),
    }


def define_common_flags(flags, name, jit_default="both"):
    """Flags every benchmark has: --out, --smoke, --mixed_precision, --jit_compile, --child."""
    flags.DEFINE_string("out", default_out(name), "Where to write the JSON results.")
    flags.DEFINE_bool("smoke", False, "A seconds-long run with tiny sizes, to check the script.")
    flags.DEFINE_bool("mixed_precision", False, "Compute in float16 (keras mixed_float16 policy).")
    flags.DEFINE_enum(
        "jit_compile", jit_default, ["off", "on", "both"],
        "XLA: off, on (tf.function(jit_compile=True)), or both (measure each).",
    )
    flags.DEFINE_string("child", None, "Internal: run one configuration (JSON) and print it.")


def has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


# ---------------------------------------------------------------------------------------
# Timing


def time_calls(fn, warmup, repeats):
    """Seconds of each of `repeats` calls of `fn` after `warmup` untimed calls.

    `fn` must block until its result is ready (e.g. convert an output to numpy).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summarize_times(times):
    """Median, min, max and all the times of a list of seconds."""
    if not times:
        return {"median_s": None, "times_s": []}
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": [round(t, 5) for t in times],
    }


def block(value):
    """Forces a (nested) TF result to be computed: reads one element of every tensor."""
    import tensorflow as tf

    for tensor in tf.nest.flatten(value):
        if hasattr(tensor, "numpy"):
            tf.reshape(tensor, [-1])[:1].numpy()
    return value


# ---------------------------------------------------------------------------------------
# Precision and compilation


def set_mixed_precision(enabled):
    """float16 (True) or float32 (False) as Keras's global policy; see `set_precision`."""
    set_precision("float16" if enabled else "float32")


def set_precision(precision):
    """Sets Keras's global dtype policy for `precision` (float32, bfloat16 or float16).

    For a benchmark child process, which measures one configuration: models built after this
    (`build_cspsr(config)`, no `precision` argument) compute in that precision, with the
    float32 islands of `cspsr_tf/model/precision.py`. Library code passes `precision=` instead.
    """
    import keras

    from cspsr_tf.model.precision import policy_name

    keras.mixed_precision.set_global_policy(policy_name(precision))


def jit_values(mode):
    """'off' -> [False], 'on' -> [True], 'both' -> [False, True]."""
    return {"off": [False], "on": [True], "both": [False, True]}[mode]


# ---------------------------------------------------------------------------------------
# Child processes


# glibc keeps freed blocks of up to 32 MiB for reuse once its dynamic mmap threshold has
# grown, so a second call of an op would show no new resident memory. A fixed threshold makes
# every block above it an mmap that is returned on free: peaks of repeated calls are then the
# op's own. For memory-measuring children only (it makes allocation slower).
FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
# Makes TensorFlow's CPU allocator a BFC allocator, which keeps byte-exact statistics
# (tf.config.experimental.get_memory_info("CPU:0")); otherwise only GPUs have them.
CPU_ALLOCATOR_STATS_ENV = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}


def emit_child_result(result):
    """The child's last act: one marker line with its result as JSON."""
    sys.stdout.flush()
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_child(script, child_config, extra_args=(), timeout=None, env=None):
    """Runs `script --child=<json>` in a fresh interpreter; returns its result dict.

    On failure returns {"error": ..., "stderr_tail": ...} instead of raising, so that one
    configuration that fails (e.g. out of memory, or an op XLA cannot compile) does not
    lose the others.
    """
    argv = [sys.executable, script, f"--child={json.dumps(child_config)}", *extra_args]
    env = {**os.environ, **(env or {})}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env
        )
    except subprocess.TimeoutExpired as error:
        return {"error": f"timed out after {timeout} s", "stderr_tail": _tail(error.stderr)}
    wall = time.perf_counter() - started
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
            result["child_wall_s"] = round(wall, 2)
            return result
    return {
        "error": f"child exited with code {proc.returncode}: {error_summary(proc.stderr)}",
        "stderr_tail": _tail(proc.stderr),
        "stdout_tail": _tail(proc.stdout),
    }


def error_summary(stderr, chars=400):
    """The last 'SomethingError: message' line of a traceback, shortened."""
    unsupported = re.search(r"No registered '(\w+)' OpKernel for (XLA_\w+)", stderr or "")
    if unsupported:
        return f"XLA cannot compile op {unsupported.group(1)} on {unsupported.group(2)}"
    for line in reversed((stderr or "").splitlines()):
        match = re.match(r"^[\w.]*(Error|Exception|Exit)\b.*", line.strip())
        if match:
            return match.group(0)[:chars]
    return "no error message (killed? out of memory?)"


def _tail(text, chars=3000):
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-chars:]


# ---------------------------------------------------------------------------------------
# Output


def rel(path):
    """A path relative to the repository root where possible (results must not name this
    machine's folders); paths far outside it stay absolute."""
    relative = os.path.relpath(os.path.abspath(path), REPO_ROOT)
    return relative if not relative.startswith("../../") else os.path.abspath(path)


def command_line(argv=None):
    """The command as results record it: the script relative to the repository root, and each
    flag's absolute path relative to it, or `<outside>/<name>` where it lies outside the
    repository and its parent folder (a scratch folder of whichever machine ran it)."""
    argv = sys.argv if argv is None else argv

    def portable(path):
        relative = os.path.relpath(os.path.abspath(path), REPO_ROOT)
        return relative if not relative.startswith("../../") else f"<outside>/{os.path.basename(path.rstrip('/'))}"

    parts = [portable(argv[0])]
    for arg in argv[1:]:
        flag, equals, value = arg.partition("=")
        parts.append(f"{flag}={portable(value)}" if equals and os.path.isabs(value) else arg)
    return " ".join(parts)


def default_out(name):
    return os.path.join(RESULTS_DIR, f"{name}.json")


def write_json(path, data, quiet=False):
    """Writes `data` as indented JSON (atomically) and says where (unless quiet)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, allow_nan=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)
    if not quiet:
        print(f"Wrote {path}")


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:
        pass
    raise TypeError(f"Not JSON serialisable: {type(value).__name__}")


def header(name, flags_values, extra=None):
    """The common head of every result file: what, when, on which machine, with which flags."""
    data = {
        "benchmark": name,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command_line(),
        "machine": machine_info(),
        "flags": flags_values,
    }
    if extra:
        data.update(extra)
    return data


def fmt(value, digits=3, unit=""):
    """A number for a printed table ('-' for None)."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


def print_table(headers, rows):
    """A plain fixed-width text table."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
