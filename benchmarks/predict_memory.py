"""Peak memory and overhead of `predict --tile` on a very large pair (issue 9, item 5).

    .venv/bin/python benchmarks/predict_memory.py            # 8000x8000 LR, x2, --tile 256
    .venv/bin/python benchmarks/predict_memory.py --smoke    # 600x600 LR, seconds

1. Writes a synthetic LR pair (multi-scale texture, 8-bit PNG) and a `tiny` preset x2 model
   whose weights are all set to small random values (seeded; `tests/model_helpers.py`), so
   the network body shapes the output, into a temporary folder.
2. Runs `python -m cspsr_tf.predict --tile 256` on it as a child process and reads the
   child's peak resident memory (`ru_maxrss` from wait4, its whole life) and wall time.
   Target: <= 4 GiB.
3. "The same tiles summed": in another child, the model is run once per distinct tile input
   size of the same tile plan (`tiling.TilePlan`), timed (median of a few calls after a
   warm-up), and each median multiplied by how many tiles have that size. Target: the
   whole predict run <= 1.5x that sum (the overhead of reading, stitching and writing).
4. Checks the written PNG: its header size, and that the zlib stream decompresses to
   exactly the expected bytes (streamed, without loading the image).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "predict_memory"
TARGET_PEAK_GIB = 4.0
TARGET_OVERHEAD = 1.5

FLAGS = flags.FLAGS
bench_util.define_common_flags(flags, NAME, jit_default="off")
flags.DEFINE_integer("lr_size", 8000, "Side of the square LR pair.")
flags.DEFINE_integer("scale", 2, "SR factor of the tiny model.")
flags.DEFINE_integer("tile", 256, "--tile of predict.")
flags.DEFINE_integer("seed", 0, "Seed of the weights and of the texture.")
flags.DEFINE_integer("timing_calls", 3, "Timed calls per distinct tile size (after one warm-up).")


def write_pair(folder, side, seed):
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    layers = []
    for cells in (8, 64, 512):
        coarse = rng.integers(0, 256, (cells, cells, 4), dtype=np.uint8)
        layers.append(cv2.resize(coarse, (side, side), interpolation=cv2.INTER_LINEAR))
    image = cv2.addWeighted(layers[0], 0.5, layers[1], 0.3, 0)
    image = cv2.addWeighted(image, 1.0, layers[2], 0.2, 0)
    del layers
    vis, nir = os.path.join(folder, "left.png"), os.path.join(folder, "right.png")
    cv2.imwrite(vis, np.ascontiguousarray(image[..., :3]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(nir, np.ascontiguousarray(image[..., 3]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return vis, nir


def write_model(folder, scale, seed):
    import keras

    from cspsr_tf.model.model_io import save_model
    from tests.model_helpers import tiny_perturbed_model

    keras.utils.set_random_seed(seed)
    model, config = tiny_perturbed_model(scale=scale, seed=seed)
    path = os.path.join(folder, "tiny.keras")
    save_model(model, config, path)
    return path


def run_predict(args):
    """(wall seconds, peak resident bytes, return code, stderr tail) of one predict child."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "cspsr_tf.predict", *args], cwd=bench_util.REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    stderr_lines = []
    for line in process.stderr:  # drained as it comes, so the child never blocks
        stderr_lines = (stderr_lines + [line])[-20:]
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss * 1024, process.returncode, "".join(stderr_lines)


def tile_timing_child(cfg):
    """Median model time per distinct tile input size, and the count of each size."""
    import collections
    import statistics

    import numpy as np
    import tensorflow as tf

    from cspsr_tf.infer import tiling
    from cspsr_tf.model import model_io

    model, _ = model_io.load_model(cfg["model"])
    max_disparity, align = tiling.model_geometry(model)
    plan = tiling.TilePlan(cfg["lr_size"], cfg["lr_size"], cfg["tile"], 8,
                           tiling.DEFAULT_CONTEXT, max_disparity, align)
    counts = collections.Counter(plan.input_shapes())
    rng = np.random.default_rng(0)
    sizes = []
    for (height, width), count in sorted(counts.items()):
        inputs = {"vis_lr": tf.constant(rng.random((1, height, width, 3), np.float32)),
                  "nir_lr": tf.constant(rng.random((1, height, width, 1), np.float32))}
        times = []
        for call in range(cfg["timing_calls"] + 1):
            start = time.perf_counter()
            outputs = model(inputs, training=False)
            np.asarray(outputs["vis_sr"])
            if call:
                times.append(time.perf_counter() - start)
        sizes.append({"input": [height, width], "tiles": count,
                      "median_seconds": statistics.median(times)})
    return {"num_tiles": plan.num_tiles, "sizes": sizes,
            "tiles_summed_seconds": sum(s["tiles"] * s["median_seconds"] for s in sizes)}


def check_png(path, width, height, channels):
    """Header size, and that the IDAT stream inflates to exactly the image's bytes."""
    with open(path, "rb") as f:
        data_bytes, inflater = 0, zlib.decompressobj()
        f.read(8)
        header = None
        while True:
            length, kind = struct.unpack(">I4s", f.read(8))
            chunk = f.read(length)
            f.read(4)
            if kind == b"IHDR":
                header = struct.unpack(">II", chunk[:8])
            elif kind == b"IDAT":
                data_bytes += len(inflater.decompress(chunk))
            elif kind == b"IEND":
                break
        data_bytes += len(inflater.flush())
    expected = height * (1 + width * channels)
    return {"header_wxh": list(header), "inflated_bytes": data_bytes,
            "expected_bytes": expected,
            "ok": header == (width, height) and data_bytes == expected and inflater.eof}


def main(argv):
    del argv
    if FLAGS.child:
        bench_util.emit_child_result(tile_timing_child(json.loads(FLAGS.child)))
        return
    side, tile = FLAGS.lr_size, FLAGS.tile
    if FLAGS.smoke:
        side, tile = 600, 128
    folder = tempfile.mkdtemp(prefix="cspsr_predict_memory_")
    try:
        print(f"Writing a {side}x{side} LR pair and a tiny x{FLAGS.scale} model ...", flush=True)
        vis, nir = write_pair(folder, side, FLAGS.seed)
        model = write_model(folder, FLAGS.scale, FLAGS.seed)
        out = os.path.join(folder, "sr.png")
        args = ["--model", model, "--vis", vis, "--nir", nir, "--out", out,
                "--tile", str(tile)]
        print(f"predict --tile {tile} -> {side * FLAGS.scale}x{side * FLAGS.scale} ...",
              flush=True)
        seconds, peak, code, stderr = run_predict(args)
        png = check_png(out, side * FLAGS.scale, side * FLAGS.scale, 3) if code == 0 else None
        out_mib = os.path.getsize(out) / 2**20 if code == 0 else None
        print("Timing the same tiles one by one ...", flush=True)
        timing = bench_util.run_child(
            __file__, {"model": model, "lr_size": side, "tile": tile,
                       "timing_calls": FLAGS.timing_calls},
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    peak_gib = peak / 2**30
    summed = timing.get("tiles_summed_seconds")
    ratio = seconds / summed if summed else None
    print()
    if code:
        print(f"predict FAILED (exit {code}): {stderr.strip()[-400:]}")
    print(f"predict --tile {tile}, LR {side}x{side} x{FLAGS.scale}: {seconds:.1f} s, peak "
          f"resident {peak_gib:.2f} GiB (target <= {TARGET_PEAK_GIB} GiB: "
          f"{'OK' if code == 0 and peak_gib <= TARGET_PEAK_GIB else 'MISSED'})")
    if summed:
        print(f"same {timing['num_tiles']} tiles summed: {summed:.1f} s; run / tiles = "
              f"{ratio:.2f} (target <= {TARGET_OVERHEAD}: "
              f"{'OK' if ratio <= TARGET_OVERHEAD else 'MISSED'})")
    if png:
        print(f"output PNG {out_mib:.0f} MiB, header and data check: "
              f"{'OK' if png['ok'] else 'FAILED'}")

    data = bench_util.header(NAME, {
        "lr_size": side, "scale": FLAGS.scale, "tile": tile, "preset": "tiny",
        "seed": FLAGS.seed, "timing_calls": FLAGS.timing_calls, "smoke": FLAGS.smoke,
    })
    data["targets"] = {"peak_resident_gib_max": TARGET_PEAK_GIB,
                       "run_over_tiles_summed_max": TARGET_OVERHEAD}
    data["meets_target"] = {
        "peak_memory": code == 0 and peak_gib <= TARGET_PEAK_GIB,
        "overhead": ratio is not None and ratio <= TARGET_OVERHEAD,
    }
    data["predict"] = {"exit_code": code, "seconds": round(seconds, 2),
                       "peak_resident_gib": round(peak_gib, 3), "output_png_mib": out_mib,
                       "png_check": png, "stderr_tail": stderr[-2000:] if code else ""}
    data["tiles"] = timing
    data["run_over_tiles_summed"] = ratio
    data["notes"] = (
        "tiny preset, x2, every weight set to small random values (seeded). Peak: ru_maxrss "
        "of the predict child process (its whole life: TensorFlow, model, input, tiles, "
        "streamed PNG). Tiles summed: median model time per distinct tile input size times "
        "its count, measured in a separate child on random inputs."
    )
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
