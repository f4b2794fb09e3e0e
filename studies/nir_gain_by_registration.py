"""Is the NIR gain of a trained model limited by pairs that are not registered?

    .venv/bin/python -m datasets.nirvis_folder.register_folder \
        --manual_dir=../shared/data/nirvis_samples --out_dir=runs/nirvis_registered
    .venv/bin/python studies/nir_gain_by_registration.py \
        --registered=runs/nirvis_registered/pairs.csv

Reads the per-frame PSNRs of `benchmarks/nir_benefit.py` rows (--results, its JSON) and the
registration check of every aligned pair (`register_folder`'s pairs.csv: the measured global
shift and `local_spread`, how far the four quadrants' shifts disagree), and compares the gain
of a NIR row over a VIS-only row (mean over the seeds both have, per frame, standard PSNR) on
the test frames that pass the check (|global shift| <= --max_shift and spread <= --max_spread)
and on those that fail it. Stereo frames are left out (their shift is a disparity).
"""

import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from studies import default_out  # noqa: E402

NAME = "nir_gain_by_registration"

FLAGS = flags.FLAGS
flags.DEFINE_string("results", os.path.join(bench_util.RESULTS_DIR, "nir_benefit.json"),
                    "benchmarks/nir_benefit.py results (per-frame PSNRs).")
flags.DEFINE_string("registered", None, "pairs.csv written by register_folder (without drops).")
flags.DEFINE_list("pairs", ["low_light/full:low_light/baseline", "clean/full:clean/baseline",
                            "low_light/w_nir:low_light/baseline"],
                  "condition/row:condition/row pairs, NIR row first.")
flags.DEFINE_float("max_shift", 0.5, "Largest |global shift| (px, either axis) that passes.")
flags.DEFINE_float("max_spread", 1.0, "Largest quadrant spread (px) that passes.")
flags.DEFINE_string("out", default_out(NAME), "JSON results.")


def frame_psnrs(results, row_prefix):
    """{seed row name: {frame id: standard PSNR}} of the rows `<row_prefix>/seed<k>`."""
    out = {}
    for name, row in results["rows_results"].items():
        if name.rsplit("/", 1)[0] == row_prefix and "evaluation" in row:
            out[name] = {f["id"]: f["model"]["standard"]["psnr"] for f in row["evaluation"]["frames"]}
    return out


def registration_check(csv_path, max_shift, max_spread):
    """{id: True (passes) / False} for the aligned rows of register_folder's pairs.csv."""
    from datasets.nirvis_folder.nirvis_folder_dataset_builder import example_id

    passes = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("local_spread"):
                continue  # a stereo row
            shift = max(abs(float(row["shift_y"])), abs(float(row["shift_x"])))
            passes[example_id(row["rgb"])] = shift <= max_shift and float(row["local_spread"]) <= max_spread
    return passes


def main(argv):
    del argv
    if not FLAGS.registered:
        raise app.UsageError("--registered (register_folder's pairs.csv) is required")
    with open(FLAGS.results) as f:
        results = json.load(f)
    passes = registration_check(FLAGS.registered, FLAGS.max_shift, FLAGS.max_spread)
    if not passes:
        raise app.UsageError(f"{FLAGS.registered} has no local_spread column values (not written by register_folder?)")
    out = bench_util.header(NAME, {"results": bench_util.rel(FLAGS.results), "registered": bench_util.rel(FLAGS.registered),
                                   "max_shift": FLAGS.max_shift, "max_spread": FLAGS.max_spread})
    out["aligned_pairs"] = {"checked": len(passes), "failing": sum(not p for p in passes.values())}
    out["comparisons"] = {}
    table = []
    for pair in FLAGS.pairs:
        nir_prefix, _, base_prefix = pair.partition(":")
        nir_rows, base_rows = frame_psnrs(results, nir_prefix), frame_psnrs(results, base_prefix)
        seeds = sorted({n.rsplit("/", 1)[1] for n in nir_rows} & {n.rsplit("/", 1)[1] for n in base_rows})
        if not seeds:
            print(f"skipped {pair}: no seed with both rows in {FLAGS.results}")
            continue
        gains = {True: [], False: []}
        for frame_id in nir_rows[f"{nir_prefix}/{seeds[0]}"]:
            if frame_id not in passes:
                continue
            gain = sum(nir_rows[f"{nir_prefix}/{s}"][frame_id] - base_rows[f"{base_prefix}/{s}"][frame_id]
                       for s in seeds) / len(seeds)
            gains[passes[frame_id]].append(gain)
        entry = {"seeds": seeds}
        for key, label in ((True, "passing"), (False, "failing")):
            values = gains[key]
            entry[label] = {"frames": len(values), "mean_gain_db": sum(values) / len(values) if values else None}
        out["comparisons"][pair] = entry
        table.append([pair, ",".join(seeds), entry["passing"]["frames"],
                      bench_util.fmt(entry["passing"]["mean_gain_db"], 3, " dB"),
                      entry["failing"]["frames"], bench_util.fmt(entry["failing"]["mean_gain_db"], 3, " dB")])
    bench_util.write_json(FLAGS.out, out)
    bench_util.print_table(["NIR row : VIS row", "seeds", "passing frames", "gain", "failing frames", "gain"],
                           table)


if __name__ == "__main__":
    app.run(main)
