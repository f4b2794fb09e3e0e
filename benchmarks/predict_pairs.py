"""Frames per second of `predict --pairs` against one `predict` process per pair (issue 30,
item 6).

    .venv/bin/python benchmarks/predict_pairs.py --num_pairs=6
    .venv/bin/python benchmarks/predict_pairs.py --smoke      # 2 tiny pairs, to check the script

1. Writes N synthetic LR stereo pairs (multi-scale texture; the NIR is the luma shifted 3 px
   to the left, as a right-camera view) and their `pairs.csv` into a temporary folder.
2. `pairs`: one child process `python -m cspsr_tf.predict --model=<model> --pairs=<csv>
   --out_dir=<dir>`: Python, TensorFlow and the model start once. Its per-pair seconds are
   read from its progress lines.
3. `one_process_per_pair`: N child processes `python -m cspsr_tf.predict --model=<model>
   --vis --nir --out`, one after the other, each starting Python, TensorFlow and the model.
4. Frames per second of each (N / wall seconds of all its children), their ratio, and a check
   that both wrote the same images (decoded pixels).

The model is the shipped preset `cspsr_small_x4` by default (x4: a 96x128 LR pair gives a
384x512 output). Timings are wall clock on whatever else the machine runs (`machine` records
its load average).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "predict_pairs"

FLAGS = flags.FLAGS
flags.DEFINE_string("out", bench_util.default_out(NAME), "Where to write the JSON results.")
flags.DEFINE_bool("smoke", False, "2 pairs of 24x32 LR: seconds, to check the script.")
flags.DEFINE_string("model", "cspsr_small_x4", "--model of predict (a preset name or a path).")
flags.DEFINE_integer("num_pairs", 6, "How many pairs.")
flags.DEFINE_string("lr_size", "96x128", "LR size HEIGHTxWIDTH of every pair.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic images.")
flags.DEFINE_integer("timeout", 1800, "Seconds one child may run.")

_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] .* -> .* \((\d+)x(\d+), ([\d.]+) s\)$")


def write_pairs(folder, count, height, width, seed):
    """N synthetic stereo pairs and their pairs.csv in `folder`; the CSV's path."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = ["rgb,nir,geometry"]
    for index in range(count):
        layers = []
        for cells in (4, 16, 64):
            coarse = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
            layers.append(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR))
        vis = cv2.addWeighted(cv2.addWeighted(layers[0], 0.5, layers[1], 0.3, 0), 1.0,
                              layers[2], 0.2, 0)
        nir = np.roll(cv2.cvtColor(vis, cv2.COLOR_BGR2GRAY), -3, axis=1)
        name = f"{index:04d}"
        cv2.imwrite(os.path.join(folder, f"{name}_rgb.png"), vis)
        cv2.imwrite(os.path.join(folder, f"{name}_nir.png"), nir)
        lines.append(f"{name}_rgb.png,{name}_nir.png,stereo")
    csv_path = os.path.join(folder, "pairs.csv")
    with open(csv_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return csv_path


def run_predict(args, timeout):
    """(wall seconds, exit code, stdout, stderr) of one `python -m cspsr_tf.predict` child."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cspsr_tf.predict", *args],
                          cwd=bench_util.REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return time.perf_counter() - started, proc.returncode, proc.stdout, proc.stderr


def measure_pairs(model, csv_path, out_dir, count, timeout):
    seconds, code, stdout, stderr = run_predict(
        [f"--model={model}", f"--pairs={csv_path}", f"--out_dir={out_dir}"], timeout)
    per_pair = [float(m.group(5)) for m in map(_PROGRESS.match, stdout.splitlines()) if m]
    return {
        "exit_code": code, "wall_seconds": round(seconds, 3),
        "frames_per_second": round(count / seconds, 4) if code == 0 else None,
        "per_pair_seconds": per_pair,
        "per_pair_median_seconds": statistics.median(per_pair) if per_pair else None,
        "start_and_load_seconds": round(seconds - sum(per_pair), 3) if per_pair else None,
        "stderr_tail": stderr[-1500:] if code else "",
    }


def measure_one_process_per_pair(model, folder, out_dir, count, timeout):
    times, failures = [], []
    for index in range(count):
        name = f"{index:04d}"
        seconds, code, _, stderr = run_predict([
            f"--model={model}", f"--vis={os.path.join(folder, name + '_rgb.png')}",
            f"--nir={os.path.join(folder, name + '_nir.png')}",
            f"--out={os.path.join(out_dir, name + '_rgb.png')}",
        ], timeout)
        times.append(round(seconds, 3))
        if code:
            failures.append({"pair": name, "exit_code": code, "stderr_tail": stderr[-800:]})
        print(f"  one process, pair {index + 1}/{count}: {seconds:.1f} s", flush=True)
    total = sum(times)
    return {
        "wall_seconds": round(total, 3), "per_process_seconds": times,
        "per_process_median_seconds": round(statistics.median(times), 3),
        "frames_per_second": round(count / total, 4) if not failures else None,
        "failures": failures,
    }


def compare_outputs(first, second, count):
    """Whether both folders hold the same decoded images for every pair."""
    import cv2
    import numpy as np

    worst = 0
    for index in range(count):
        name = f"{index:04d}_rgb.png"
        a = cv2.imread(os.path.join(first, name), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(os.path.join(second, name), cv2.IMREAD_UNCHANGED)
        if a is None or b is None or a.shape != b.shape:
            return {"identical": False, "max_abs_difference": None, "missing_or_other": name}
        worst = max(worst, int(np.abs(a.astype(int) - b.astype(int)).max()))
    return {"identical": worst == 0, "max_abs_difference": worst,
            "output_shape": list(a.shape) if count else None}


def main(argv):
    del argv
    count, lr_size = FLAGS.num_pairs, FLAGS.lr_size
    if FLAGS.smoke:
        count, lr_size = 2, "24x32"
    height, width = (int(v) for v in lr_size.lower().split("x"))
    folder = tempfile.mkdtemp(prefix="cspsr_predict_pairs_")
    try:
        print(f"Writing {count} LR pairs of {width}x{height} ...", flush=True)
        csv_path = write_pairs(folder, count, height, width, FLAGS.seed)
        pairs_dir, single_dir = os.path.join(folder, "pairs_out"), os.path.join(folder, "single")
        os.makedirs(single_dir)
        print(f"predict --pairs ({count} pairs, one process) ...", flush=True)
        pairs = measure_pairs(FLAGS.model, csv_path, pairs_dir, count, FLAGS.timeout)
        print(f"predict once per pair ({count} processes) ...", flush=True)
        single = measure_one_process_per_pair(FLAGS.model, folder, single_dir, count,
                                              FLAGS.timeout)
        same = compare_outputs(pairs_dir, single_dir, count)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    speedup = (pairs["frames_per_second"] / single["frames_per_second"]
               if pairs["frames_per_second"] and single["frames_per_second"] else None)
    print()
    print(f"--pairs: {count} pairs in {pairs['wall_seconds']:.1f} s = "
          f"{bench_util.fmt(pairs['frames_per_second'], 3)} frames/s (start and model load "
          f"{bench_util.fmt(pairs['start_and_load_seconds'], 1)} s, median "
          f"{bench_util.fmt(pairs['per_pair_median_seconds'], 2)} s per pair)")
    print(f"one process per pair: {single['wall_seconds']:.1f} s = "
          f"{bench_util.fmt(single['frames_per_second'], 3)} frames/s (median "
          f"{single['per_process_median_seconds']:.1f} s per process)")
    print(f"speed-up {bench_util.fmt(speedup, 2)}x; same outputs: {same['identical']}")

    from cspsr_tf.util.cli import quiet_tensorflow

    quiet_tensorflow()  # machine_info imports TensorFlow: no start-up lines in the log
    data = bench_util.header(NAME, {
        "model": FLAGS.model, "num_pairs": count, "lr_size": [height, width],
        "seed": FLAGS.seed, "smoke": FLAGS.smoke,
    })
    data["pairs"] = pairs
    data["one_process_per_pair"] = single
    data["speedup_frames_per_second"] = round(speedup, 3) if speedup else None
    data["same_outputs"] = same
    data["notes"] = (
        "Wall clock of child processes run one after the other on the same machine. pairs: "
        "one `predict --pairs` process (Python, TensorFlow and the model start once; "
        "per_pair_seconds from its progress lines). one_process_per_pair: one `predict "
        "--vis --nir --out` process per pair, each starting Python, TensorFlow and the model. "
        "Synthetic stereo pairs (multi-scale texture, NIR = luma shifted 3 px). The machine "
        "may be shared: see machine.load_average_1_5_15."
    )
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
