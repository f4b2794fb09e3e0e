"""One command per table of the paper: train (resumably) and evaluate every row we can run, and
write the table in the paper's layout with the paper's figures beside ours.

    .venv/bin/python benchmarks/paper_tables.py --table=4 \
        --manual_dir=rgb_nir_stereo=/data/rgbnir_stereo --work_dir=runs/paper
    .venv/bin/python benchmarks/paper_tables.py --table=1 --manual_dir=rgb_nir_stereo=...,\
nirscene=...,ranus=... --work_dir=runs/paper
    .venv/bin/python benchmarks/paper_tables.py --smoke --table=all   # dummy data, tiny model

Tables (docs/reproducing_the_paper.md gives the paper's numbers, the time each row takes and
what has been run here):
  1  x2 and x4 on the test splits of rgb_nir_stereo, nirscene and ranus, all trained on
     rgb_nir_stereo (bicubic and CSPSR rows; the SISR rows are the paper's only), plus the
     parameters and GFLOPs of the model (cspsr_tf.model.model_info);
  3  x4 per test video of rgb_nir_stereo (CSPSR; ENLCN's rows are the paper's only);
  4  the ablation rows of Table 4 (configs.ABLATIONS, the paper's eight), x4, per test video;
  5  cross-spectral disparity on SR images of video 20170224_0742 (Bicubic, CSPSR, HR), by the
     fixed matcher of cspsr_tf/evaluate/downstream_disparity.py.
Every (ablation, scale) is trained once under --work_dir/<ablation>_x<scale> and shared by the
tables; running the command again resumes an unfinished training (train.py's checkpoints) and
re-evaluates only what changed. Training follows the paper (batch 32, 120 px patches, Adam
1e-4, --steps, default the paper's 300 epochs of the 4,000 training frames: 37,500 steps).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import fail, quiet_library_logs, quiet_tensorflow, run_main  # noqa: E402

quiet_tensorflow()

from absl import flags, logging  # noqa: E402

from benchmarks import bench_util  # noqa: E402

NAME = "paper_tables"
TABLES = ("1", "3", "4", "5")
TEST_VIDEOS = ("20170224_0742", "20170222_0951", "20170222_1423", "20170223_1639")
TABLE4_ROWS = ("baseline", "w_nir", "w_cvm", "wo_cvm", "wo_csft", "wo_dyconv", "wo_cssc", "full")
TABLE5_VIDEO = "20170224_0742"
# The paper's figures, PSNR/SSIM (Table 1: Bicubic and Our, per dataset and scale; Tables 3-4:
# per test video in TEST_VIDEOS order).
PAPER_TABLE1 = {
    ("rgb_nir_stereo", 2): ("26.484/0.7664", "32.212/0.8584"),
    ("rgb_nir_stereo", 4): ("22.056/0.5628", "27.765/0.7494"),
    ("nirscene", 2): ("32.455/0.9075", "35.177/0.9410"),
    ("nirscene", 4): ("28.276/0.7784", "30.856/0.8454"),
    ("ranus", 2): ("39.169/0.9716", "43.466/0.9885"),
    ("ranus", 4): ("34.815/0.9092", "37.501/0.9380"),
}
PAPER_TABLE1_COST = "51.059 GFLOPs / 1.298 M parameters"
PAPER_TABLE4 = {
    "baseline": ("26.279/0.6407", "28.315/0.7934", "26.901/0.7898", "23.969/0.5942"),
    "w_nir": ("27.160/0.6641", "29.484/0.8107", "28.014/0.8089", "24.937/0.6166"),
    "w_cvm": ("26.974/0.6578", "29.448/0.8101", "27.978/0.8081", "24.762/0.6128"),
    "wo_cvm": ("27.061/0.6646", "26.232/0.7748", "24.430/0.7638", "21.036/0.5529"),
    "wo_csft": ("27.162/0.6660", "29.561/0.8122", "28.117/0.8111", "24.993/0.6200"),
    "wo_dyconv": ("27.377/0.6925", "29.075/0.8124", "27.759/0.8105", "25.451/0.6583"),
    "wo_cssc": ("27.336/0.6821", "29.223/0.8163", "27.993/0.8142", "25.653/0.6598"),
    "full": ("27.615/0.6980", "29.525/0.8188", "28.210/0.8178", "25.708/0.6630"),
}
PAPER_TABLE3_MEAN = "27.765/0.7494"

FLAGS = flags.FLAGS
flags.DEFINE_string("table", "all", f"Which table: one of {', '.join(TABLES)}, or all.")
flags.DEFINE_list("manual_dir", [], "dataset=folder pairs: the downloaded files of each dataset "
                  "(rgb_nir_stereo, nirscene, ranus).")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: <work_dir>/tfds).")
flags.DEFINE_string("work_dir", os.path.join(bench_util.REPO_ROOT, "runs", NAME),
                    "Training folders and evaluations.")
flags.DEFINE_string("preset", "paper", "Model preset (the paper's: T=15, C=64).")
flags.DEFINE_integer("steps", 37500, "SR training steps of every row (the paper: 300 epochs).")
flags.DEFINE_integer("cvm_steps", 500, "CVM pre-training steps of rows with a CVM.")
flags.DEFINE_integer("batch_size", 32, "Training batch (the paper's 32).")
flags.DEFINE_integer("patch_size", 120, "HR patch side (the paper's 120).")
flags.DEFINE_integer("max_frames", None, "Evaluate at most this many frames per split.")
flags.DEFINE_bool("smoke", False, "Tiny preset, 2 steps without the CVM pre-training (train.py's "
                  "tests run that phase), each builder's dummy data, Table 4 with one row (the full "
                  "model, shared with the other tables): checks the script.")
flags.DEFINE_string("out", None, "JSON results (default benchmarks/results/paper_tables[_smoke].json; "
                    "a .md with the tables is written beside it).")


class Runner:
    """Trains and evaluates the (ablation, scale) rows the tables ask for, once each."""

    def __init__(self, work_dir, data_dir, manual_dirs, preset, steps, cvm_steps, batch_size,
                 patch_size, max_frames, smoke):
        self.work_dir, self.data_dir, self.manual_dirs = work_dir, data_dir, manual_dirs
        self.preset, self.steps, self.cvm_steps = preset, steps, cvm_steps
        self.batch_size, self.patch_size, self.max_frames = batch_size, patch_size, max_frames
        self.smoke = smoke
        self.evaluations = {}

    def manual_dir(self, dataset):
        if dataset not in self.manual_dirs:
            raise ValueError(f"--manual_dir has no folder for {dataset} (give {dataset}=<folder>)")
        return self.manual_dirs[dataset]

    def train(self, ablation, scale):
        """The training folder of (ablation, scale), trained (or resumed) to --steps."""
        from cspsr_tf.train import loop, run_config

        model_dir = os.path.join(self.work_dir, f"{ablation}_x{scale}")
        train, model = run_config.build_configs(dict(
            dataset="rgb_nir_stereo", data_dir=self.data_dir,
            manual_dir=self.manual_dir("rgb_nir_stereo"), preset=self.preset,
            ablation=ablation, steps=self.steps, cvm_steps=self.cvm_steps,
            batch_size=self.batch_size, patch_size=self.patch_size, model_dir=model_dir,
            eval_every=0, save_every=max(1, min(500, self.steps)), val_frames=1,
        ), {"scale": scale})
        if not os.path.isfile(os.path.join(model_dir, "final.keras")):
            loop.run_training(train, model)
        return model_dir

    def evaluate(self, ablation, scale, dataset, split="test"):
        """Results of `evaluation.evaluate_dataset` for a row on a dataset (cached on disk)."""
        key = (ablation, scale, dataset, split)
        if key in self.evaluations:
            return self.evaluations[key]
        model_dir = self.train(ablation, scale)
        path = os.path.join(self.work_dir, "eval", f"{ablation}_x{scale}_{dataset}_{split}.json")
        final = os.path.join(model_dir, "final.keras")
        if os.path.isfile(path) and os.path.getmtime(path) > os.path.getmtime(final):
            with open(path) as f:
                results = json.load(f)
        else:
            results = self._evaluate(final, scale, dataset, split)
            bench_util.write_json(path, results, quiet=True)
        self.evaluations[key] = results
        return results

    def _evaluate(self, model_path, scale, dataset, split):
        from cspsr_tf.data import pipeline, sources
        from cspsr_tf.evaluate import evaluation
        from cspsr_tf.model import runtime

        model, config = runtime.load_for_running(model_path)
        raw = sources.load_split(dataset, split, self.data_dir, self.manual_dir(dataset))
        eval_ds = pipeline.make_eval_dataset(raw, scale=scale)
        results = evaluation.evaluate_dataset(
            model, config, eval_ds, scale=scale, max_frames=self.max_frames, save_images=False,
        )
        return {key: results[key] for key in ("mean", "groups", "scale", "precision")}

    def downstream(self, scale, video):
        from cspsr_tf.data import pipeline, sources
        from cspsr_tf.evaluate import downstream_disparity
        from cspsr_tf.model import runtime

        model, config = runtime.load_for_running(
            os.path.join(self.train("full", scale), "final.keras"))
        raw = sources.load_split("rgb_nir_stereo", "test", self.data_dir,
                                 self.manual_dir("rgb_nir_stereo"))
        raw = raw.filter(lambda example: _starts_with(example["id"], video + "/"))
        eval_ds = pipeline.make_eval_dataset(raw, scale=scale)
        return downstream_disparity.evaluate_downstream(
            model, eval_ds, scale, downstream_disparity.default_max_disparity(config, scale),
            max_frames=self.max_frames, model_label="Our",
        )


def _starts_with(text, prefix):
    import tensorflow as tf

    return tf.strings.substr(text, 0, len(prefix)) == prefix


def _cell(metrics):
    """'PSNR/SSIM' of the `paper` protocol (the paper's own: RGB, no border crop)."""
    return f"{metrics['paper']['psnr']:.3f}/{metrics['paper']['ssim']:.4f}"


def _video_cells(results):
    groups = results["groups"]
    return [_cell(groups[v]["model"]) if v in groups else "-" for v in TEST_VIDEOS]


def table1(runner):
    from cspsr_tf.model.configs import get_config
    from cspsr_tf.model.model_info import count_flops, count_parameters

    datasets = ("rgb_nir_stereo",) if runner.smoke else ("rgb_nir_stereo", "nirscene", "ranus")
    scales = (4,) if runner.smoke else (2, 4)
    rows, lines = [], ["## Table 1: CSPSR beside bicubic (PSNR/SSIM, paper protocol)", "",
                       "| Dataset | scale | Bicubic (ours) | CSPSR (ours) | Bicubic (paper) | Our (paper) |",
                       "|---|---:|---|---|---|---|"]
    for dataset in datasets:
        for scale in scales:
            mean = runner.evaluate("full", scale, dataset)["mean"]
            paper = PAPER_TABLE1[(dataset, scale)]
            rows.append({"dataset": dataset, "scale": scale, "bicubic": mean["bicubic"],
                         "cspsr": mean["model"], "paper": paper})
            lines.append(f"| {dataset} | x{scale} | {_cell(mean['bicubic'])} | {_cell(mean['model'])} "
                         f"| {paper[0]} | {paper[1]} |")
    import keras

    from cspsr_tf.model.build import build_cspsr

    # The profiler does not see inside XLA-compiled ops: count the `shift` graph.
    model = build_cspsr(get_config(runner.preset, scale=4, dynamic_conv_implementation="shift"))
    params, _ = count_parameters(model)
    cost = {"params": params, "gflops": count_flops(model, (107, 145)) / 1e9}
    keras.backend.clear_session()
    lines += ["", f"Cost at x4 on one 580x428 frame ({runner.preset} preset): "
              f"{cost['gflops']:.3f} GFLOPs / {cost['params'] / 1e6:.3f} M parameters "
              f"(paper: {PAPER_TABLE1_COST}).", ""]
    return {"rows": rows, "cost": cost}, lines


def table3(runner):
    results = runner.evaluate("full", 4, "rgb_nir_stereo")
    cells = _video_cells(results)
    lines = ["## Table 3: x4 per test video of rgb_nir_stereo (PSNR/SSIM, paper protocol)", "",
             "| Method | " + " | ".join(TEST_VIDEOS) + " | mean |", "|---|" + "---|" * 5,
             f"| CSPSR (ours) | {' | '.join(cells)} | {_cell(results['mean']['model'])} |",
             f"| Ours (paper) | {' | '.join(PAPER_TABLE4['full'])} | {PAPER_TABLE3_MEAN} |", ""]
    return {"videos": dict(zip(TEST_VIDEOS, cells, strict=True)),
            "mean": results["mean"]["model"]}, lines


def table4(runner):
    rows_run = ("full",) if runner.smoke else TABLE4_ROWS
    lines = ["## Table 4: ablations, x4 per test video (PSNR/SSIM, paper protocol; paper's beside)",
             "", "| Row | " + " | ".join(TEST_VIDEOS) + " | paper |", "|---|" + "---|" * 5]
    rows = {}
    for ablation in rows_run:
        cells = _video_cells(runner.evaluate(ablation, 4, "rgb_nir_stereo"))
        rows[ablation] = cells
        lines.append(f"| {ablation} | {' | '.join(cells)} | {' / '.join(PAPER_TABLE4[ablation])} |")
    return {"rows": rows}, lines + [""]


def table5(runner):
    from cspsr_tf.evaluate import downstream_disparity

    results = runner.downstream(4, TABLE5_VIDEO)
    return results, [downstream_disparity.downstream_markdown(results, f"rgb_nir_stereo {TABLE5_VIDEO}, x4")]


BUILDERS = {"1": table1, "3": table3, "4": table4, "5": table5}


def smoke_manual_dirs(work_dir):
    """Copies of the builders' dummy data with every image resized to the RGB-NIR stereo
    frame size (582x429): the 16x12 originals are smaller than a training patch."""
    import shutil

    import cv2

    root = os.path.join(bench_util.REPO_ROOT, "datasets")
    dirs = {}
    for name in ("rgb_nir_stereo", "nirscene", "ranus"):
        target = os.path.join(work_dir, "dummy_data", name)
        if not os.path.isdir(target):
            shutil.copytree(os.path.join(root, name, "dummy_data"), target)
            for folder, _, files in os.walk(target):
                for file in files:
                    path = os.path.join(folder, file)
                    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
                    if image is not None:
                        cv2.imwrite(path, cv2.resize(image, (582, 429), interpolation=cv2.INTER_CUBIC))
        dirs[name] = target
    return dirs


def parse_manual_dirs(pairs):
    dirs = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not folder:
            raise ValueError(f"--manual_dir: {pair!r} is not dataset=folder")
        if not os.path.isdir(folder):
            raise ValueError(f"--manual_dir: {folder} (for {name}) is not a folder")
        dirs[name] = folder
    return dirs


def run(tables, runner, out):
    results, lines = {}, ["# The paper's tables, reproduced", ""]
    for table in tables:
        logging.info("Table %s", table)
        results[table], table_lines = BUILDERS[table](runner)
        lines += table_lines
        bench_util.write_json(out, {"tables": results, "smoke": runner.smoke,
                                    "preset": runner.preset, "steps": runner.steps})
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return results


def main(argv):
    if len(argv) > 1:
        fail(NAME, f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    tables = TABLES if FLAGS.table == "all" else (FLAGS.table,)
    if any(t not in TABLES for t in tables):
        fail(NAME, f"--table={FLAGS.table!r} is not one of: {', '.join(TABLES)}, all")
    smoke = FLAGS.smoke
    work_dir = FLAGS.work_dir + ("_smoke" if smoke else "")
    try:
        manual_dirs = smoke_manual_dirs(work_dir) if smoke else parse_manual_dirs(FLAGS.manual_dir)
    except ValueError as error:
        fail(NAME, str(error))
    runner = Runner(
        work_dir, FLAGS.data_dir or os.path.join(work_dir, "tfds"), manual_dirs,
        "tiny" if smoke else FLAGS.preset, 2 if smoke else FLAGS.steps, 0 if smoke else FLAGS.cvm_steps,
        2 if smoke else FLAGS.batch_size, 32 if smoke else FLAGS.patch_size,
        2 if smoke else FLAGS.max_frames, smoke,
    )
    out = FLAGS.out or bench_util.default_out(NAME + ("_smoke" if smoke else ""))
    from cspsr_tf.data.sources import DataError
    from cspsr_tf.train.run_config import ConfigError

    try:
        run(tables, runner, out)
    except (ValueError, DataError, ConfigError, FileNotFoundError) as error:
        fail(NAME, str(error), getattr(error, "details", ""))
    print(f"Wrote {out} and {os.path.splitext(out)[0]}.md")


if __name__ == "__main__":
    run_main(main, NAME)
