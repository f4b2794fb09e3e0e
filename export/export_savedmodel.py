"""Exports a trained CSPSR model as a TensorFlow SavedModel for serving.

    .venv/bin/python export/export_savedmodel.py \\
        --model runs/tiny_x2/best.keras --out exported/cspsr_x2/1 [--overwrite]

`--model` is a `.keras` file (with its `.config.json` sidecar when present) or a training
directory (config.json + checkpoints/). The SavedModel has the signatures `serving_default`
(uint8 images) and `serving_float` (float32 in [0, 1]); see cspsr_tf/export/savedmodel_export.py and
export/SERVING.md. TensorFlow Serving expects numbered versions: export to `<dir>/1`.
`--precision bfloat16` (or float16) exports a graph that computes in that precision, with
float32 / uint8 inputs and outputs as always; the precision is recorded in
assets.extra/cspsr_export.json. `--ops` (default fused) chooses how the DMF modules'
element-wise parts run: `fused` graphs hold XLA-compiled functions (fastest; TensorFlow Serving
on CPU needs `--xla_cpu_compilation_enabled=true`), `shift` graphs only plain TensorFlow ops.
`--nir_side=left` serves a rig whose NIR camera is left of the VIS camera: the graph mirrors
both views, runs the model and mirrors the outputs back.

Exit status: 0 on success; 2 with one line on stderr (naming the file) when the model is
missing or unreadable, the target exists without --overwrite, or a file stands where a folder
of --out must go (checked before the model loads).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Run as a script, Python puts export/ (not the repository root) on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging  # noqa: E402

# No TensorFlow before main: a bad flag is refused in a fraction of a second.
from cspsr_tf.model.run_options import NIR_SIDE_HELP, NIR_SIDES, RUN_PRECISIONS  # noqa: E402
from cspsr_tf.util.cli import fail, quiet_library_logs, quiet_tensorflow, run_main  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A .keras file or a training directory.")
flags.DEFINE_string("out", None, "The SavedModel directory to create.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out directory.")
flags.DEFINE_integer(
    "multiple", 1,
    "Pad LR inputs (edge replication) to a multiple of this inside the graph and crop the "
    "outputs back; 1 = no padding (CSPSR takes any size).",
)
flags.DEFINE_enum(
    "geometry", None, ["stereo", "aligned"],
    "Camera rig to serve: stereo (NIR camera to the right; the CVM aligns it) or aligned (a "
    "registered camera: zero disparity). Default: the model's own (stereo unless trained otherwise).",
)
flags.DEFINE_string(
    "precision", None,
    f"Precision the exported graph computes in: {', '.join(RUN_PRECISIONS)} (default float32); "
    "inputs and outputs stay float32 / uint8.",
)
flags.DEFINE_enum(
    "ops", None, ["fused", "shift", "patches"],
    "How the DMF modules' element-wise parts run in the exported graph: fused (XLA-compiled, "
    "fastest; the default; TensorFlow Serving then needs --xla_cpu_compilation_enabled=true on "
    "CPU), shift (plain TensorFlow ops, for servers without XLA) or patches (reference).",
)
flags.DEFINE_enum("nir_side", "right", list(NIR_SIDES),
                  NIR_SIDE_HELP + " left bakes the mirroring into the graph (recorded in its "
                  "metadata; predict and evaluate.py then take left pairs as they are).")
flags.mark_flags_as_required(["model", "out"])


def main(argv):
    if len(argv) > 1:
        fail("export_savedmodel", f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_library_logs()
    if FLAGS.precision is not None and FLAGS.precision not in RUN_PRECISIONS:
        fail("export_savedmodel", f"--precision={FLAGS.precision!r} is not one of: {', '.join(RUN_PRECISIONS)}")
    from cspsr_tf import presets
    from cspsr_tf.util.paths import blocking_file

    blocker = blocking_file(FLAGS.out)
    if blocker:
        fail("export_savedmodel", f"--out {FLAGS.out}: {blocker} is a file, not a folder")
    if not os.path.exists(presets.resolve(FLAGS.model)):
        fail("export_savedmodel", presets.not_found_message(FLAGS.model))
    quiet_tensorflow()
    import tensorflow as tf

    from cspsr_tf.export import savedmodel_export

    try:
        out_dir = savedmodel_export.export_from_path(
            FLAGS.model, FLAGS.out, overwrite=FLAGS.overwrite, multiple=FLAGS.multiple,
            geometry=FLAGS.geometry, precision=FLAGS.precision, ops=FLAGS.ops,
            nir_side=FLAGS.nir_side,
        )
    except savedmodel_export.TargetBlockedError as error:  # "<out>: <file> is a file, not a folder"
        fail("export_savedmodel", f"--out {error}")
    except (OSError, ValueError, tf.errors.OpError) as error:
        # FileNotFoundError / FileExistsError are OSErrors; a corrupt .keras is a ValueError.
        fail("export_savedmodel", " ".join(str(error).split()))
    logging.info("SavedModel written to %s", out_dir)


if __name__ == "__main__":
    run_main(main, "export_savedmodel")
