"""Exports a trained CSPSR model as a LiteRT (TensorFlow Lite) flatbuffer.

    .venv/bin/python export/export_litert.py \\
        --model runs/tiny_x2/best.keras --out cspsr_x2.tflite \\
        [--variant float32|float16|dynamic_int8] [--lr_size HxW|dynamic] \\
        [--geometry stereo|aligned] [--overwrite]

`--model` is a `.keras` file (with its `.config.json` sidecar when present) or a training
directory (config.json + checkpoints/); a SavedModel export is refused (convert the model it
came from). The file uses LiteRT builtin ops only (runs on the plain `ai-edge-litert` runtime,
XNNPACK on CPU) and has one signature, `serving_default`: float32 `vis_lr` [1, h, w, 3] and
`nir_lr` [1, h, w, 1] in [0, 1] -> `vis_sr` [1, h*s, w*s, 3], plus `disp_l`, `disp_r`
[1, h, w, 1] for models with a CVM. Run it with `cspsr_tf.export.litert_export.LiteRTRunner`.

The input size is FIXED at --lr_size: LiteRT cannot resize a fixed-size file
(resize_tensor_input fails in the XNNPACK delegate). `--lr_size dynamic` converts for any size
(resized at run time), with or without the CVM. See cspsr_tf/export/litert_export.py.

Exit status: 0 on success; 2 with one line on stderr when the model is missing, unreadable or
does not convert, the target exists without --overwrite, or a file stands where a folder of
--out must go (nothing is written then; the target is checked before the conversion).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Run as a script, Python puts export/ (not the repository root) on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging  # noqa: E402

from cspsr_tf.util.cli import fail, quiet_library_logs, quiet_tensorflow, run_main  # noqa: E402

PROGRAM = "export_litert"
VARIANTS = ("float32", "float16", "dynamic_int8")  # litert_export.VARIANTS (checked there)
FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A .keras file or a training directory (not a SavedModel).")
flags.DEFINE_string("out", None, "The .tflite file to write.")
flags.DEFINE_enum(
    "variant", "float32", list(VARIANTS),
    "float32; float16 (float16 weights, half the file); dynamic_int8 (dynamic-range "
    "quantisation: int8 weights, a quarter of the file).",
)
flags.DEFINE_string(
    "lr_size", None,
    "LR input size HxW (batch 1). The file only takes this size: LiteRT cannot resize a "
    "fixed-size model. Default: the LR size of a 428x580 frame at the model's scale (107x145 "
    "at x4). 'dynamic': any size, resized at run time.",
)
flags.DEFINE_enum(
    "geometry", None, ["stereo", "aligned"],
    "Camera rig to serve: stereo (NIR camera to the right; the CVM aligns it) or aligned (a "
    "registered camera: zero disparity). Default: the model's own.",
)
flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")
flags.DEFINE_enum("nir_side", "right", ["right", "left"],
                  "Side of the NIR camera, seen from behind the cameras: right (the models' rig) "
                  "or left (the file mirrors both views left-right, runs the model and mirrors "
                  "its outputs back).")
flags.mark_flags_as_required(["model", "out"])


def main(argv):
    if len(argv) > 1:
        fail(PROGRAM, f"unexpected arguments: {' '.join(argv[1:])}")
    # The cheap refusals come before TensorFlow starts (seconds); export_from_path checks
    # them again.
    if os.path.lexists(FLAGS.out) and not FLAGS.overwrite:
        fail(PROGRAM, "Export target already exists (use overwrite to replace it): "
             f"{os.path.abspath(FLAGS.out)}")
    above = os.path.dirname(os.path.abspath(FLAGS.out))
    while not os.path.lexists(above):  # the nearest existing folder above --out
        above = os.path.dirname(above)
    if not os.path.isdir(above):  # (litert_export.check_target says the same, after TF starts)
        fail(PROGRAM, f"--out {FLAGS.out}: {above} is a file, not a folder")
    from cspsr_tf import presets

    model = presets.resolve(FLAGS.model)
    if not os.path.exists(model):
        fail(PROGRAM, presets.not_found_message(FLAGS.model))
    if os.path.isfile(os.path.join(model, "saved_model.pb")):
        fail(PROGRAM, f"{FLAGS.model} is a SavedModel export, which cannot be converted to "
             "LiteRT; give the .keras file or training directory it was exported from")
    quiet_tensorflow()
    import tensorflow as tf

    from cspsr_tf.export import litert_export

    quiet_library_logs()
    try:
        lr_size = None if FLAGS.lr_size is None else litert_export.parse_lr_size(FLAGS.lr_size)
        path, lr_size, scale = litert_export.export_from_path(
            FLAGS.model, FLAGS.out, lr_size=lr_size, variant=FLAGS.variant,
            geometry=FLAGS.geometry, overwrite=FLAGS.overwrite, nir_side=FLAGS.nir_side,
        )
    except litert_export.TargetBlockedError as error:  # "<out>: <file> is a file, not a folder"
        fail(PROGRAM, f"--out {error}")
    except (OSError, ValueError, tf.errors.OpError) as error:
        # FileNotFoundError / FileExistsError are OSErrors; a corrupt .keras, a SavedModel or
        # a failed conversion are ValueErrors.
        fail(PROGRAM, " ".join(str(error).split()))
    size = lr_size if isinstance(lr_size, str) else f"{lr_size[0]}x{lr_size[1]}"
    logging.info("LiteRT model (%s, x%d, LR %s, NIR camera on the %s) written to %s",
                 FLAGS.variant, scale, size, FLAGS.nir_side, path)


if __name__ == "__main__":
    run_main(main, "export_litert")
