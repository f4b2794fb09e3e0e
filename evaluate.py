"""Evaluate a trained CSPSR model on whole frames, beside bicubic, under both protocols.

    python evaluate.py --model=runs/small_x4/best.keras --dataset=nirvis_synthetic \
        --split=test --out_dir=results/small_x4

--model takes a `.keras` file or a training directory (its latest checkpoint). --dataset and
--split take comma-separated lists; each (dataset, split) gets a sub-folder of --out_dir with
results.json, results.md, SR images, disparity maps and comparison figures, and
--out_dir/summary.md gathers the overall tables. --precision (default auto: bfloat16 on hardware
that computes it natively, float32 elsewhere; cspsr_tf/model/runtime.py) sets what the model
computes in. --downstream=disparity adds the paper's Table 5 for each split
(docs/reproducing_the_paper.md). --nir_side=left evaluates a rig whose NIR camera is left of
the VIS camera (each frame mirrored, run, and mirrored back). Bad settings print one line and
exit 2.
"""

import json
import os

from absl import flags, logging

from cspsr_tf.model.run_options import (
    NIR_SIDE_HELP,
    NIR_SIDES,
    RUN_PRECISIONS,
    check_nir_side,
    define_speed_flags,
)
from cspsr_tf.util.cli import (
    fail,
    quiet_dataset_progress,
    quiet_library_logs,
    quiet_tensorflow,
    quiet_tfds_notices,
    run_main,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A .keras model, a training directory (latest checkpoint) or an exported SavedModel.")
flags.DEFINE_string("dataset", "nirvis_synthetic", "Dataset builder(s) of datasets/, comma-separated.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default ~/tensorflow_datasets).")
flags.DEFINE_string("manual_dir", None, "Folder with the manually downloaded files of a manual dataset.")
flags.DEFINE_string("split", "test", "Split(s) to evaluate, comma-separated (TFDS slicing allowed).")
flags.DEFINE_string("out_dir", "results", "Output folder for tables, images and figures.")
flags.DEFINE_integer("tile", None, "LR tile size for tiled inference of large frames (default: whole frames).")
flags.DEFINE_integer("tile_overlap", 8, "Overlap of neighbouring tiles, LR pixels.")
flags.DEFINE_bool("self_ensemble", False, "Average with the vertically flipped pass (geometry-safe).")
flags.DEFINE_integer("max_frames", None, "Evaluate at most this many frames per split.")
flags.DEFINE_bool("save_images", True, "Write SR images, disparity maps and comparison figures.")
flags.DEFINE_string("degradation", "none", "Degradation of the LR VIS input: none, noise, low_light, over_exposure; parameters after a colon, e.g. low_light:gain=0.1.")
flags.DEFINE_enum("downstream", "none", ["none", "disparity"], "Also score a downstream task: disparity = the paper's Table 5, the disparity of bicubic / the model's SR / HR against the HR NIR by a fixed matcher, RMSE per material on keypoints (rgb_nir_stereo), EPE on dense ground truth (nirvis_synthetic).")
flags.DEFINE_integer("downstream_max_disparity", None, "Disparity range of that matcher, HR px (default: the model's max_disparity x scale; 64 without a CVM).")
flags.DEFINE_enum("nir_side", None, list(NIR_SIDES), NIR_SIDE_HELP + " Default: the model's own (right; a SavedModel exported with --nir_side: that side).")
define_speed_flags(flags)


def check_arguments(out_dir, tile=None, tile_overlap=8, max_frames=None):
    """Raises ValueError (one line, naming the flag) for settings that would fail later.

    Checked before the model and the data load and before any folder is made.
    """
    from cspsr_tf.util.paths import blocking_file

    if tile is not None and tile < 1:
        raise ValueError(f"--tile must be >= 1 (LR pixels), got {tile}")
    if tile_overlap < 0:
        raise ValueError(f"--tile_overlap must be >= 0, got {tile_overlap}")
    if tile is not None and tile_overlap >= tile:
        raise ValueError(f"--tile_overlap={tile_overlap} must be smaller than --tile={tile}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max_frames must be >= 1, got {max_frames}")
    blocker = blocking_file(out_dir)
    if blocker:
        raise ValueError(f"--out_dir={out_dir}: {blocker} is a file, not a folder")


def split_label(dataset, split):
    """The sub-folder of --out_dir for a (dataset, split): `nirvis_synthetic_test`,
    `nirscene_train_-4` for `train[:4]`."""
    return f"{dataset}_{split}".replace("[", "_").replace("]", "").replace(":", "-")


def evaluate(model_path, datasets, splits, out_dir, data_dir=None, manual_dir=None, tile=None,
             tile_overlap=8, self_ensemble=False, max_frames=None, save_images=True,
             degradation="none", precision=None, ops=None, downstream="none",
             downstream_max_disparity=None, nir_side=None):
    """Evaluates one model on every (dataset, split); returns {name: results}.

    `downstream="disparity"` also writes the paper's Table 5 for each split
    (`<label>/downstream_disparity.{json,md}`, `evaluate.downstream_disparity`), in
    `results[label]["downstream_disparity"]`.

    `precision`: None (float32; an exported SavedModel: its own), `float32`, `bfloat16` or
    `float16`. `ops`: None (`fused`; an exported SavedModel: its own), `fused`, `shift` or
    `patches` (both applied by `runtime.load_for_running`). `nir_side`: None (the model's own
    rig), `right` or `left` (`runtime.needs_mirroring`: each frame is mirrored in, the outputs
    mirrored back; not with `downstream`, whose datasets are NIR-right rigs).

    Bad settings raise ValueError (a `DataError` for the data) before anything is written; a
    failure during the evaluation removes the folders this call made (`out_dir` itself when it
    made it), so only complete results are left.
    """
    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.infer import tiling
    from cspsr_tf.model import runtime

    runtime.check_run_options(precision, ops)
    check_arguments(out_dir, tile, tile_overlap, max_frames)
    if downstream not in ("none", "disparity"):
        raise ValueError(f"--downstream={downstream!r} is not one of: none, disparity")
    if nir_side is not None:
        check_nir_side(nir_side, as_flag=True)
    if nir_side == "left" and downstream != "none":
        raise ValueError("--downstream scores NIR-right rigs only (the rig of rgb_nir_stereo and "
                         "nirvis_synthetic); leave out --nir_side=left")
    if downstream_max_disparity is not None and downstream_max_disparity < 1:
        raise ValueError(f"--downstream_max_disparity must be >= 1, got {downstream_max_disparity}")
    for name in datasets:
        if name not in sources.DATASETS:
            raise sources.DataError(
                f"unknown dataset {name!r}; choose one of {', '.join(sources.DATASETS)}"
            )
    for label in (split_label(name, split) for name in datasets for split in splits):
        blocker = sources.blocking_file(os.path.join(out_dir, label))
        if blocker:
            raise ValueError(f"--out_dir={out_dir}: {blocker} is a file, not a folder")
    model, config = runtime.load_for_running(model_path, precision=precision, ops=ops)
    run_side = "left" if runtime.needs_mirroring(model, nir_side) else "right"
    scale = tiling.model_scale(model, config)
    # Every (dataset, split) is opened before any is evaluated, so that a bad one (an unknown
    # split, an empty or broken dataset) fails before anything is written.
    jobs = []
    for name in datasets:
        for split in splits:
            raw = sources.load_split(name, split, data_dir, manual_dir)
            eval_ds = pipeline.make_eval_dataset(
                raw, scale=scale, degradation=None if degradation == "none" else degradation
            )
            jobs.append((split_label(name, split), eval_ds))
    parents = []  # the folders above out_dir that do not exist yet, nearest first
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.lexists(parent):
        parents.append(parent)
        parent = os.path.dirname(parent)
    made = [path for path in [os.path.join(out_dir, label) for label, _ in jobs] + [out_dir]
            if not os.path.lexists(path)]
    try:
        results = _evaluate_jobs(jobs, model, config, scale, model_path, out_dir, tile=tile,
                                 overlap=tile_overlap, self_ensemble=self_ensemble,
                                 save_images=save_images, max_frames=max_frames,
                                 nir_side=run_side)
        if downstream == "disparity":
            _downstream_jobs(jobs, results, model, config, scale, out_dir, tile, max_frames,
                             downstream_max_disparity)
        return results
    except BaseException:
        import contextlib
        import shutil

        for path in made:  # out_dir last: it holds the others
            shutil.rmtree(path, ignore_errors=True)
        for path in parents:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only if empty
        raise


def _evaluate_jobs(jobs, model, config, scale, model_path, out_dir, **options):
    """Evaluates each (label, dataset) into `out_dir/label`; writes `out_dir/summary.md`."""
    from cspsr_tf.evaluate import evaluation
    from cspsr_tf.model.precision import model_precision

    all_results = {}
    for label, eval_ds in jobs:
        results = evaluation.evaluate_dataset(
            model, config, eval_ds, scale=scale, out_dir=os.path.join(out_dir, label),
            model_name=os.path.basename(os.path.normpath(model_path)), **options,
        )
        all_results[label] = results
        mean = results["mean"]
        logging.info(
            "%s: model %.3f dB / bicubic %.3f dB (standard protocol, %d frames)",
            label, mean["model"]["standard"]["psnr"], mean["bicubic"]["standard"]["psnr"],
            mean["num_frames"],
        )
    lines = [f"# Evaluation of `{model_path}` (x{scale}, {model_precision(model)})", ""]
    for label, results in all_results.items():
        lines += [f"## {label}", "", evaluation.results_markdown(results), ""]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    return all_results


def _downstream_jobs(jobs, results, model, config, scale, out_dir, tile, max_frames, max_disparity):
    """The paper's Table 5 for each (label, dataset), beside its SR results and in summary.md."""
    from cspsr_tf.evaluate import downstream_disparity
    from cspsr_tf.util import atomic_files

    if max_disparity is None:
        max_disparity = downstream_disparity.default_max_disparity(config, scale)
    lines = []
    for label, eval_ds in jobs:
        table = downstream_disparity.evaluate_downstream(
            model, eval_ds, scale, max_disparity, tile=tile, max_frames=max_frames)
        results[label]["downstream_disparity"] = table
        markdown = downstream_disparity.downstream_markdown(table, label)
        atomic_files.write_text(os.path.join(out_dir, label, "downstream_disparity.json"),
                                json.dumps(table, indent=2) + "\n")
        atomic_files.write_text(os.path.join(out_dir, label, "downstream_disparity.md"), markdown)
        lines.append(markdown)
    with open(os.path.join(out_dir, "summary.md"), "a") as f:
        f.write("\n" + "\n".join(lines))


def check_flags_before_loading():
    """The one-line refusals that need neither TensorFlow nor the model nor the data."""
    from cspsr_tf import presets
    from cspsr_tf.data.dataset_names import DATASETS
    from cspsr_tf.data.degradation_specs import resolve_degradation

    if not FLAGS.model:
        fail("evaluate.py", "--model is required (a .keras file or a training directory)")
    if FLAGS.precision is not None and FLAGS.precision not in RUN_PRECISIONS:
        fail("evaluate.py", f"--precision={FLAGS.precision!r} is not one of: {', '.join(RUN_PRECISIONS)}")
    try:
        resolve_degradation(FLAGS.degradation)
    except ValueError as error:
        fail("evaluate.py", f"--degradation={FLAGS.degradation}: {error}")
    unknown = [name for name in FLAGS.dataset.split(",") if name and name not in DATASETS]
    if unknown:
        fail("evaluate.py", f"unknown dataset {unknown[0]!r}; choose one of {', '.join(DATASETS)}")
    try:
        check_arguments(FLAGS.out_dir, FLAGS.tile, FLAGS.tile_overlap, FLAGS.max_frames)
    except ValueError as error:
        fail("evaluate.py", str(error))
    if not os.path.exists(presets.resolve(FLAGS.model)):
        fail("evaluate.py", presets.not_found_message(FLAGS.model))


def main(argv):
    if len(argv) > 1:
        fail("evaluate.py", f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    check_flags_before_loading()
    quiet_tensorflow()  # only now: the checks above answer in a fraction of a second
    quiet_library_logs()
    quiet_dataset_progress()
    quiet_tfds_notices()
    from cspsr_tf.data.sources import DataError

    try:
        results = evaluate(
            FLAGS.model, [d for d in FLAGS.dataset.split(",") if d],
            [s for s in FLAGS.split.split(",") if s], FLAGS.out_dir, FLAGS.data_dir,
            FLAGS.manual_dir, FLAGS.tile, FLAGS.tile_overlap, FLAGS.self_ensemble,
            FLAGS.max_frames, FLAGS.save_images, FLAGS.degradation, FLAGS.precision, FLAGS.ops,
            FLAGS.downstream, FLAGS.downstream_max_disparity, FLAGS.nir_side,
        )
    except (DataError, OSError, ValueError) as error:
        # OSError: FileNotFoundError (the model), and what writing the results may meet (a
        # full disk, no permission); one line like every other error.
        fail("evaluate.py", str(error), getattr(error, "details", ""))
    print(json.dumps({label: r["mean"] for label, r in results.items()}, indent=1))
    for label, r in results.items():
        if "downstream_disparity" in r:
            print(f"Downstream disparity of {label}: {FLAGS.out_dir}/{label}/downstream_disparity.md")
    print(f"Tables and images in {FLAGS.out_dir} (summary.md)")


if __name__ == "__main__":
    run_main(main, "evaluate.py")
