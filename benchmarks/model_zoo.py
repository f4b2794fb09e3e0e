"""The model zoo's table: every shipped preset and its VIS-only partner, in each condition.

    .venv/bin/python benchmarks/model_zoo.py                   # the shipped weights (one seed)
    .venv/bin/python benchmarks/model_zoo.py \
        --models=cspsr_small_x4:1=runs/zoo_train2/blind_full_seed1/final.keras,vis_only_small_x4:1=runs/zoo_train2/blind_baseline_seed1/final.keras
    .venv/bin/python benchmarks/model_zoo.py --write_docs      # also the README's and cards' tables

Frames: the 43 held-out test pairs of `benchmarks/sample_split.py`'s rule on the shared samples
(never trained on), read as `evaluate.py` reads them (`nir_usage.load_frames`: registered
pairs run with zero disparity, the stereo pair through the CVM). Conditions: `clean` (bicubic
LR, the paper's protocol), `low_light` (gain 0.25 with shot and read noise) and
`over_exposure` (x2, clipped), each applied to the LR VIS only, with `evaluate.py`'s noise
draws. Standard protocol: BT.601 Y, `scale` pixels shaved, SR quantised to 8 bits; the mean
over frames, then over seeds. For `over_exposure` also the PSNR of the pixels whose LR VIS
kept all three channels unclipped, pooled over frames (`nir_gain_by_saturation.py`).

`results/model_zoo.json`: `rows`, one per (NIR preset, condition), with `preset`,
`condition`, `seeds`, `psnr_std` (the preset's model, mean over seeds), `psnr_std_vis_only`
(its partner), `psnr_std_bicubic`, per-seed values, the NIR gain, the unclipped-region gain
(over-exposure), and `condition_specific`: the committed `nir_benefit*.json` rows of the same
architecture trained on that condition alone, for comparison. The shipped weights are seed
`SHIPPED_SEED`; further seeds, trained with the same command (the card's), are passed by
--models (which can also replace the shipped file of a seed, to score a candidate).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import json  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "model_zoo"
CONDITIONS = {"clean": "none", "low_light": "low_light", "over_exposure": "over_exposure"}
# NIR preset -> its VIS-only partner (trained the same way, without the NIR).
PARTNERS = {"cspsr_small_x4": "vis_only_small_x4", "cspsr_small_x2": "vis_only_small_x2"}
SHIPPED_SEED = 0
# Committed rows trained on one condition alone, with the architecture of each preset:
# (results file, row name prefix) per condition.
CONDITION_SPECIFIC = {
    "cspsr_small_x4": {
        "clean": ("nir_benefit.json", "clean/full/"),
        "low_light": ("nir_benefit.json", "low_light/full/"),
        "over_exposure": ("nir_benefit_over_exposure.json", "over_exposure/full/"),
    },
    "vis_only_small_x4": {
        "clean": ("nir_benefit.json", "clean/baseline/"),
        "low_light": ("nir_benefit.json", "low_light/baseline/"),
        "over_exposure": ("nir_benefit_over_exposure.json", "over_exposure/baseline/"),
    },
}
README_BEGIN = "<!-- model_zoo table: written by benchmarks/model_zoo.py --write_docs -->"
README_END = "<!-- end of model_zoo table -->"

FLAGS = flags.FLAGS


def parse_models(text):
    """`preset:seed=path,...` -> {preset: {seed: path}}; UsageError naming a bad item."""
    models = {}
    for item in [part for part in (text or "").split(",") if part]:
        head, equals, path = item.partition("=")
        preset, colon, seed = head.partition(":")
        if not equals or not colon or not seed.isdigit():
            raise app.UsageError(f"--models item {item!r}: expected preset:seed=path")
        if preset not in set(PARTNERS) | set(PARTNERS.values()):
            raise app.UsageError(f"--models item {item!r}: unknown preset {preset!r}")
        if not os.path.exists(path):  # a .keras file or a training directory
            raise app.UsageError(f"--models item {item!r}: nothing at {path}")
        models.setdefault(preset, {})[int(seed)] = path
    return models


def score_model(model_path, frames):
    """Mean standard PSNR over frames, and the unclipped region's pooled squared error."""
    from benchmarks.nir_gain_by_saturation import measure_model, pooled_psnr

    totals, mean_psnr = measure_model(model_path, frames)
    unclipped = totals["unclipped"]
    return {"psnr_std": mean_psnr, "psnr_std_unclipped": pooled_psnr(*unclipped)}


def score_bicubic(frames, scale):
    """Mean standard PSNR of the bicubic upscale (quantised like the models' SR)."""
    from benchmarks.nir_gain_by_saturation import clip_regions, pooled_psnr, region_errors
    from cspsr_tf.evaluate.evaluation import quantize
    from cspsr_tf.ops.resize import bicubic_upscale

    psnrs = []
    for _, vis_lr, _, hr, _ in frames:
        sr = quantize(np.asarray(bicubic_upscale(vis_lr, scale))[0])
        errors = region_errors(sr, hr, clip_regions(vis_lr, scale), scale)
        psnrs.append(pooled_psnr(sum(e[0] for e in errors.values()), sum(e[1] for e in errors.values())))
    return float(np.mean(psnrs))


def condition_specific(preset, condition):
    """The committed single-condition rows of this architecture: mean, seeds, file."""
    source = CONDITION_SPECIFIC.get(preset, {}).get(condition)
    if source is None:
        return None
    name, prefix = source
    path = os.path.join(bench_util.REPO_ROOT, "benchmarks", "results", name)
    with open(path) as f:
        rows = json.load(f)["rows_results"]
    values = {row: r["evaluation"]["mean"]["model"]["standard"]["psnr"]
              for row, r in rows.items() if row.startswith(prefix) and "evaluation" in r}
    if not values:
        return None
    return {"psnr_std": float(np.mean(list(values.values()))), "rows": sorted(values),
            "file": f"benchmarks/results/{name}", "steps": rows[sorted(values)[0]]["settings"]["steps"]}


def zoo_rows(scores, bicubic, scales=None):
    """The JSON rows from {preset: {seed: {condition: score}}}, {scale: {condition: bicubic}}
    and {preset: scale} (default: every preset x4)."""
    rows = []
    for preset, partner in PARTNERS.items():
        scale = (scales or {}).get(preset, 4)
        for condition in CONDITIONS:
            own = {s: v[condition] for s, v in scores.get(preset, {}).items()}
            vis = {s: v[condition] for s, v in scores.get(partner, {}).items()}
            if not own:
                continue
            both = sorted(set(own) & set(vis))
            row = {
                "preset": preset, "vis_only_preset": partner, "scale": scale, "condition": condition,
                "degradation": CONDITIONS[condition], "seeds": sorted(own),
                "psnr_std": float(np.mean([own[s]["psnr_std"] for s in own])),
                "psnr_std_per_seed": {str(s): own[s]["psnr_std"] for s in sorted(own)},
                "seeds_vis_only": sorted(vis),
                "psnr_std_vis_only": float(np.mean([vis[s]["psnr_std"] for s in vis])) if vis else None,
                "psnr_std_vis_only_per_seed": {str(s): vis[s]["psnr_std"] for s in sorted(vis)},
                "psnr_std_bicubic": bicubic[scale][condition],
            }
            # The NIR's gain over seeds both models have (each seed trained the same way).
            row["nir_gain_db"] = float(np.mean([own[s]["psnr_std"] - vis[s]["psnr_std"]
                                                for s in both])) if both else None
            row["gain_over_bicubic_db"] = row["psnr_std"] - bicubic[scale][condition]
            if condition == "over_exposure":
                row["psnr_std_unclipped"] = float(np.mean([own[s]["psnr_std_unclipped"] for s in own]))
                row["nir_gain_unclipped_db"] = float(np.mean(
                    [own[s]["psnr_std_unclipped"] - vis[s]["psnr_std_unclipped"] for s in both]
                )) if both else None
            row["condition_specific"] = condition_specific(preset, condition)
            row["condition_specific_vis_only"] = condition_specific(partner, condition)
            rows.append(row)
    return rows


def _fmt(value, signed=False):
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def markdown_table(rows):
    """The README's and the cards' table (standard PSNR, dB) from the JSON's rows."""
    lines = ["| preset | condition | seeds | bicubic | VIS-only | this model | NIR gain | "
             "trained on that condition alone |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        alone = row.get("condition_specific")
        lines.append(
            f"| `{row['preset']}` | {row['condition']} | {','.join(map(str, row['seeds']))} | "
            f"{_fmt(row['psnr_std_bicubic'])} | {_fmt(row['psnr_std_vis_only'])} | "
            f"{_fmt(row['psnr_std'])} | {_fmt(row['nir_gain_db'], True)} | "
            f"{_fmt(alone['psnr_std']) if alone else '-'} |")
    return "\n".join(lines)


def replace_between_markers(text, table, where):
    """`text` with the part between the README_BEGIN / README_END markers set to `table`."""
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{where} lacks the model_zoo table markers")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}"


def doc_tables(rows):
    """{file: its table}: README.md shows every row, each NIR preset's card its own rows."""
    from cspsr_tf import presets

    tables = {os.path.join(bench_util.REPO_ROOT, "README.md"): markdown_table(rows)}
    for name in PARTNERS:
        own = [row for row in rows if row["preset"] == name]
        tables[os.path.join(presets.preset_dir(name), presets.CARD_FILE)] = markdown_table(own)
    return tables


def write_docs(rows):
    """Writes the tables into README.md and each NIR preset's MODEL_CARD.md."""
    for path, table in doc_tables(rows).items():
        with open(path) as f:
            text = f.read()
        new = replace_between_markers(text, table, bench_util.rel(path))
        if new != text:
            with open(path, "w") as f:
                f.write(new)
            print(f"table written into {bench_util.rel(path)}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from benchmarks.nir_usage import load_frames
    from benchmarks.sample_split import define_splits
    from cspsr_tf import presets

    if FLAGS.docs_only:
        with open(FLAGS.out) as f:
            write_docs(json.load(f)["rows"])
        return
    given = parse_models(FLAGS.models)
    chosen = FLAGS.presets or list(PARTNERS)
    unknown = sorted(set(chosen) - set(PARTNERS))
    if unknown:
        raise app.UsageError(f"--presets: {', '.join(unknown)} is not one of {', '.join(PARTNERS)}")
    models = {}
    for preset in chosen:
        for name in (preset, PARTNERS[preset]):
            models[name] = {SHIPPED_SEED: presets.weights_path(name), **given.get(name, {})}
    split = define_splits(FLAGS.data_dir, FLAGS.manual_dir, max_frames=FLAGS.max_frames)
    out = bench_util.header(NAME, {"manual_dir": bench_util.rel(FLAGS.manual_dir),
                                   "models": FLAGS.models, "presets": FLAGS.presets,
                                   "max_frames": FLAGS.max_frames})
    out["split"] = {"rule": split["rule"], "eval_splits": split["eval_splits"],
                    "num_test_frames": len(split["eval_ids"])}
    out["models"] = {name: {str(s): bench_util.rel(p) for s, p in seeds.items()}
                     for name, seeds in models.items()}
    scales = {name: presets.scale(name) for name in models}
    scores, bicubic = {}, {}
    for scale, condition in ((s, c) for s in sorted(set(scales.values())) for c in CONDITIONS):
        frames = load_frames("nirvis_folder", split["eval_splits"], FLAGS.data_dir,
                             FLAGS.manual_dir, scale, CONDITIONS[condition])
        bicubic.setdefault(scale, {})[condition] = score_bicubic(frames, scale)
        print(f"x{scale} {condition}: {len(frames)} frames, bicubic "
              f"{bicubic[scale][condition]:.2f} dB", flush=True)
        for name, seeds in models.items():
            if scales[name] != scale:
                continue
            for seed, path in seeds.items():
                score = score_model(path, frames)
                scores.setdefault(name, {}).setdefault(seed, {})[condition] = score
                print(f"  {name} seed {seed}: {score['psnr_std']:.2f} dB", flush=True)
    out["rows"] = zoo_rows(scores, bicubic, scales)
    bench_util.write_json(FLAGS.out, out)
    print(markdown_table(out["rows"]))
    if FLAGS.write_docs:
        write_docs(out["rows"])


if __name__ == "__main__":
    flags.DEFINE_string("out", os.path.join(bench_util.REPO_ROOT, "benchmarks", "results", f"{NAME}.json"),
                        "JSON results.")
    flags.DEFINE_string("models", None, "Models of further seeds, or in place of the shipped "
                        "file of a seed: preset:seed=path,...")
    flags.DEFINE_string("manual_dir", bench_util.SAMPLES_DIR, "The shared sample pairs (pairs.csv).")
    flags.DEFINE_string("data_dir", os.path.join(bench_util.REPO_ROOT, "runs", NAME, "tfds"),
                        "TFDS data directory (built on first use).")
    flags.DEFINE_integer("max_frames", None, "Only the first N test frames (smoke runs).")
    flags.DEFINE_list("presets", None, "Score only these NIR presets (and their VIS-only partners); "
                      "default: all. To score a candidate, with --models and another --out.")
    flags.DEFINE_bool("write_docs", False, "Also write the table into README.md and the cards.")
    flags.DEFINE_bool("docs_only", False, "Only write the table of --out into README.md and the cards.")
    app.run(main)
