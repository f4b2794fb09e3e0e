"""Examples/s of `nirvis_folder` generation in process against Apache Beam (FnApiRunner).

    .venv/bin/python benchmarks/beam_generation.py            # 2000 pairs of 96x72
    .venv/bin/python benchmarks/beam_generation.py --smoke    # 40 pairs, seconds

1. Writes `--pairs` synthetic pairs (smooth random RGB and NIR PNGs, seeded) and their
   `pairs.csv` into a temporary folder.
2. Builds `nirvis_folder` from it once per configuration, each in a child process of its own
   (the same start for every configuration: nothing imported or cached before): `in_process`
   (the default build, no Beam), `beam_in_memory` (Beam's FnApiRunner, one in-process worker:
   what the DirectRunner falls back to when it cannot fetch its Prism binary) and
   `beam_multi_processing` (FnApiRunner with `--beam_workers` worker processes). Statistics are
   skipped (`ComputeStatsMode.SKIP`) in all. Measured: the wall time of
   `download_and_prepare` alone (imports and the folder scan before it excluded, the Beam
   pipeline's start included), examples/s = pairs / that time, and the child's peak resident
   memory (its own process: Beam's worker processes are not counted); each child checks that
   its build holds `--pairs` examples.

Requires apache_beam (`pip install -r requirements-beam.txt`); Beam configurations fail
one by one (reported, not raised) without it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "beam_generation"
CONFIGS = ("in_process", "beam_in_memory", "beam_multi_processing")

FLAGS = flags.FLAGS
bench_util.define_common_flags(flags, NAME, jit_default="off")
flags.DEFINE_integer("pairs", 2000, "Synthetic pairs in the folder.")
flags.DEFINE_integer("width", 96, "Width of each synthetic image.")
flags.DEFINE_integer("height", 72, "Height of each synthetic image.")
flags.DEFINE_integer("beam_workers", 2, "Worker processes of `beam_multi_processing`.")
flags.DEFINE_list("configs", list(CONFIGS), f"Configurations to run, of {CONFIGS}.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic images.")
flags.DEFINE_integer("child_timeout", 1800, "Seconds allowed for one configuration.")


def write_folder(folder, pairs, width, height, seed):
    """`pairs` RGB/NIR PNG pairs (smooth random content) and a pairs.csv listing them."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = ["rgb,nir,geometry"]
    for i in range(pairs):
        sub = f"scene{i // 500:02d}"  # a few sub-folders, as a real collection has
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        coarse = rng.integers(0, 256, (6, 8, 4), dtype=np.uint8)
        image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
        noise = rng.integers(0, 8, image.shape, dtype=np.uint8)  # some texture to compress
        image = cv2.add(image, noise)
        rgb, nir = f"{sub}/{i:05d}_rgb.png", f"{sub}/{i:05d}_nir.png"
        assert cv2.imwrite(os.path.join(folder, rgb), np.ascontiguousarray(image[..., :3]))
        assert cv2.imwrite(os.path.join(folder, nir), np.ascontiguousarray(image[..., 3]))
        rows.append(f"{rgb},{nir},{'aligned' if i % 2 else 'stereo'}")
    with open(os.path.join(folder, "pairs.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")


def beam_flags(config, workers):
    if config == "beam_in_memory":
        return ["--runner=FnApiRunner", "--direct_running_mode=in_memory",
                "--direct_num_workers=1"]
    if config == "beam_multi_processing":
        return ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={workers}"]
    return None


def build_child(cfg):
    """Builds nirvis_folder once in this process; time, examples/s, peak memory."""
    import tensorflow as tf  # noqa: F401  (imported before the timer: TFDS writes with it)
    import tensorflow_datasets as tfds

    import datasets.nirvis_folder  # noqa: F401  (registers the builder)
    from datasets.nirvis_folder import nirvis_folder_dataset_builder as module

    options = None
    flags_list = beam_flags(cfg["config"], cfg["workers"])
    if flags_list is not None:
        import apache_beam as beam

        options = beam.options.pipeline_options.PipelineOptions(flags_list)
    builder = module.Builder(data_dir=cfg["data_dir"])
    download_config = tfds.download.DownloadConfig(
        manual_dir=cfg["manual_dir"],
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
        beam_options=options,
    )
    start = time.perf_counter()
    builder.download_and_prepare(download_config=download_config)
    seconds = time.perf_counter() - start
    examples = builder.info.splits["train"].num_examples
    if examples != cfg["pairs"]:
        raise RuntimeError(f"built {examples} examples, expected {cfg['pairs']}")
    return {
        "config": cfg["config"],
        "beam_flags": flags_list,
        "examples": examples,
        "shards": builder.info.splits["train"].num_shards,
        "seconds": round(seconds, 3),
        "examples_per_s": round(examples / seconds, 1),
        "peak_rss_gib": round(bench_util.peak_rss_bytes() / bench_util.GIB, 3),
    }


def main(argv):
    del argv
    if FLAGS.child:
        bench_util.emit_child_result(build_child(json.loads(FLAGS.child)))
        return
    unknown = set(FLAGS.configs) - set(CONFIGS)
    if unknown:
        raise app.UsageError(f"unknown --configs {sorted(unknown)}; use {CONFIGS}")
    pairs = 40 if FLAGS.smoke else FLAGS.pairs
    folder = tempfile.mkdtemp(prefix="cspsr_beam_generation_")
    results = []
    try:
        manual_dir = os.path.join(folder, "pairs")
        print(f"Writing {pairs} pairs of {FLAGS.width}x{FLAGS.height} ...", flush=True)
        write_folder(manual_dir, pairs, FLAGS.width, FLAGS.height, FLAGS.seed)
        for config in FLAGS.configs:
            print(f"Building nirvis_folder: {config} ...", flush=True)
            result = bench_util.run_child(
                __file__,
                {"config": config, "pairs": pairs, "workers": FLAGS.beam_workers,
                 "manual_dir": manual_dir, "data_dir": os.path.join(folder, f"data_{config}")},
                timeout=FLAGS.child_timeout,
            )
            result.setdefault("config", config)
            results.append(result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    base = next((r for r in results if r["config"] == "in_process" and "error" not in r), None)
    for r in results:
        if base and "error" not in r:
            r["speed_vs_in_process"] = round(r["examples_per_s"] / base["examples_per_s"], 3)
    print()
    bench_util.print_table(
        ["config", "seconds", "examples/s", "x in_process", "peak GiB"],
        [[r["config"], r.get("seconds", "-"), r.get("examples_per_s", r.get("error", "-")),
          r.get("speed_vs_in_process", "-"), r.get("peak_rss_gib", "-")] for r in results],
    )
    data = bench_util.header(NAME, {
        "pairs": pairs, "width": FLAGS.width, "height": FLAGS.height,
        "beam_workers": FLAGS.beam_workers, "configs": FLAGS.configs, "seed": FLAGS.seed,
        "smoke": FLAGS.smoke,
    }, extra={"dataset": "nirvis_folder", "compute_stats": "skip", "results": results})
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
