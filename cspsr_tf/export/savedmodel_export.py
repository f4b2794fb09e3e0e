"""Exporting a CSPSR model as a self-contained TensorFlow SavedModel for serving.

The SavedModel holds the model's weights and its traced graph (the custom layers included),
so TensorFlow Serving, `saved_model_cli` or `tf.saved_model.load` use it without this
project's code or Keras. Its signatures take an LR pair of any batch size and any height and
width:

- `serving_default`: `vis_lr` uint8 [B, H, W, 3] (RGB, 0-255) and `nir_lr` uint8
  [B, H, W, 1]; returns `vis_sr` uint8 [B, H*s, W*s, 3] (rounded, clipped to 0..255).
- `serving_float`: the same with float32 images in [0, 1]; `vis_sr` is float32 and not
  clipped (exactly the Keras model's output). Inputs outside [-0.1, 1.1] fail with
  `FLOAT_RANGE_MESSAGE` (0-255 data given as floats).

Models with a cross-view matching module also return `disp_l` and `disp_r`, float32
[B, H, W, 1], the left / right disparities in LR pixels.

The graph computes in the precision of the exported model (`export_from_path(...,
precision="bfloat16")`, `runtime.with_precision`): bfloat16 / float16 inside, with the
float32 islands of `precision.py`; the signatures' inputs and outputs are float32 / uint8 in
every precision. The precision is recorded in the metadata file (`"precision"`); it is baked
into the graph, so changing it means exporting again.
"""

import json
import os

import tensorflow as tf
from absl import logging

from cspsr_tf.data import sources
from cspsr_tf.model import model_io
from cspsr_tf.model.precision import model_precision
from cspsr_tf.model.run_options import check_nir_side
from cspsr_tf.util import scratch_dirs

# Re-exported: the metadata file and the scale probe live in model_io, which reads them.
METADATA_FILE = model_io.METADATA_FILE
infer_scale = model_io.infer_scale

SERVING_DEFAULT = "serving_default"
SERVING_FLOAT = "serving_float"
INPUT_NAMES = model_io.INPUT_NAMES
DISPARITY_OUTPUTS = ("disp_l", "disp_r")

SIZE_MISMATCH_MESSAGE = "vis_lr and nir_lr must have the same height and width"
BATCH_MISMATCH_MESSAGE = "vis_lr and nir_lr must have the same batch size"
EMPTY_IMAGE_MESSAGE = "vis_lr and nir_lr must be at least 1x1 pixels"
VIS_CHANNELS_MESSAGE = "vis_lr must have 3 channels (RGB)"
NIR_CHANNELS_MESSAGE = "nir_lr must have 1 channel"
# serving_float takes images in [0, 1]. Values outside by more than FLOAT_RANGE_TOLERANCE
# are refused: 0-255 data fed to it (e.g. a uint8 array cast by saved_model_cli) would
# otherwise give garbage silently. The tolerance lets through the overshoot of resampling a
# [0, 1] image at a step edge: at most 0.07 for bicubic (a = -0.5), about 0.08 for Lanczos3
# downscaling (measured with tf.image.resize).
FLOAT_RANGE_TOLERANCE = 0.1
FLOAT_RANGE_MESSAGE = (
    "serving_float takes float32 images in [0, 1] (uint8 values divided by 255); use "
    "serving_default for uint8 images in 0..255"
)


def _input_signature(dtype):
    return [
        tf.TensorSpec([None, None, None, 3], dtype, name="vis_lr"),
        tf.TensorSpec([None, None, None, 1], dtype, name="nir_lr"),
    ]


def replicate_pad_to_multiple(images, multiple):
    """Pads [B, H, W, C] at the bottom and right by edge replication to a multiple of `multiple`.

    Gathering with clamped indices replicates the last row / column any number of times
    (tf.pad's REFLECT / SYMMETRIC modes fail when the pad exceeds the image).
    """
    if multiple <= 1:
        return images
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    padded_h = (height + multiple - 1) // multiple * multiple
    padded_w = (width + multiple - 1) // multiple * multiple
    images = tf.gather(images, tf.minimum(tf.range(padded_h), height - 1), axis=1)
    return tf.gather(images, tf.minimum(tf.range(padded_w), width - 1), axis=2)


def _checked_pair(vis_lr, nir_lr):
    """The inputs, gated on assertions that name the problem.

    The identities depend on the assertions, so a mismatched pair fails here with a readable
    message instead of deep inside the model (e.g. in a concat of the CVM). The channel checks
    are not redundant with the input signature: a signature called from Python or TF Serving
    does not check its inputs' static shapes.
    """
    vis_shape, nir_shape = tf.shape(vis_lr), tf.shape(nir_lr)
    checks = [
        tf.debugging.assert_equal(vis_shape[3], 3, message=VIS_CHANNELS_MESSAGE),
        tf.debugging.assert_equal(nir_shape[3], 1, message=NIR_CHANNELS_MESSAGE),
        tf.debugging.assert_equal(vis_shape[0], nir_shape[0], message=BATCH_MISMATCH_MESSAGE),
        tf.debugging.assert_equal(vis_shape[1:3], nir_shape[1:3], message=SIZE_MISMATCH_MESSAGE),
        tf.debugging.assert_positive(vis_shape[1:3], message=EMPTY_IMAGE_MESSAGE),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(vis_lr), tf.identity(nir_lr)


def _checked_range(vis_lr, nir_lr):
    """The float inputs, gated on their values lying in [0, 1] (within the tolerance)."""
    low, high = -FLOAT_RANGE_TOLERANCE, 1.0 + FLOAT_RANGE_TOLERANCE
    checks = []
    for image in (vis_lr, nir_lr):
        # min/max of an empty image are +inf/-inf and pass; `_checked_pair` reports it.
        checks.append(tf.debugging.assert_greater_equal(
            tf.reduce_min(image), low, message=FLOAT_RANGE_MESSAGE))
        checks.append(tf.debugging.assert_less_equal(
            tf.reduce_max(image), high, message=FLOAT_RANGE_MESSAGE))
    with tf.control_dependencies(checks):
        return tf.identity(vis_lr), tf.identity(nir_lr)


class CSPSRServingModule(tf.Module):
    """A tf.Module wrapping a CSPSR Keras model with the serving functions.

    Args:
        model: a CSPSR Keras model (dict inputs `vis_lr`, `nir_lr`; dict outputs with
            `vis_sr` and, with a CVM, `disp_l` and `disp_r`).
        scale: int, the model's SR factor s.
        multiple: int, default 1; pad the LR inputs by edge replication to a multiple of
            this inside the graph and crop the outputs back. 1 (no padding) suits CSPSR,
            which takes any size (its CVM pads internally); a larger value is for models
            that need it. Padding changes the outputs near the bottom and right borders.
        mirror: bool, default False; for a rig whose NIR camera is on the left: mirror both
            views left-right inside the graph, run, and mirror every output back.

    Attributes:
        serve_uint8, serve_float: the tf.functions behind `serving_default` and
            `serving_float` (also callable after `tf.saved_model.load`); traced here.
        scale: an int32 variable holding s (`loaded.scale.numpy()`).
        graph_variables: the tf.Variables the traced functions read.
    """

    def __init__(self, model, scale, multiple=1, name=None, mirror=False):
        super().__init__(name=name)
        self._mirror = bool(mirror)
        if int(multiple) < 1:
            raise ValueError(f"multiple must be >= 1. Received: multiple={multiple}")
        self.model = model
        self._scale = int(scale)
        self._multiple = int(multiple)
        self.scale = tf.Variable(self._scale, dtype=tf.int32, trainable=False, name="scale")
        # autograph=False: no Python control flow over tensors here or in the model, and
        # converting the model's source took seconds of every export.
        self.serve_uint8 = tf.function(
            self._serve_uint8, input_signature=_input_signature(tf.uint8), autograph=False
        )
        self.serve_float = tf.function(
            self._serve_float, input_signature=_input_signature(tf.float32), autograph=False
        )
        # Track the tf.Variables the traced graph reads, not only the Keras model. Keras 3
        # variables wrap a tf.Variable; tracked only through the model, the SavedModel
        # restores the wrappers, which TF1-style loaders (saved_model_cli run, TensorFlow
        # Serving) cannot match to the graph: "Could not find variable ...". Keras's own
        # ExportArchive does the same (see also tensorflow/tensorflow#72963).
        concrete = [f.get_concrete_function() for f in (self.serve_uint8, self.serve_float)]
        self.graph_variables = list({id(v): v for c in concrete for v in c.variables}.values())

    def signatures(self):
        """The `signatures` argument of tf.saved_model.save."""
        return {SERVING_DEFAULT: self.serve_uint8, SERVING_FLOAT: self.serve_float}

    def _predict(self, vis_lr, nir_lr):
        """float32 [0, 1] inputs -> dict of float32 outputs, cropped to the input size."""
        vis_lr, nir_lr = _checked_pair(vis_lr, nir_lr)
        height, width = tf.shape(vis_lr)[1], tf.shape(vis_lr)[2]
        if self._mirror:
            vis_lr, nir_lr = tf.reverse(vis_lr, axis=[2]), tf.reverse(nir_lr, axis=[2])
        vis_lr = replicate_pad_to_multiple(vis_lr, self._multiple)
        nir_lr = replicate_pad_to_multiple(nir_lr, self._multiple)
        outputs = self.model({"vis_lr": vis_lr, "nir_lr": nir_lr}, training=False)
        s = self._scale
        result = {"vis_sr": tf.cast(outputs["vis_sr"], tf.float32)[:, : height * s, : width * s]}
        for key in DISPARITY_OUTPUTS:
            if key in outputs:
                result[key] = tf.cast(outputs[key], tf.float32)[:, :height, :width]
        if self._mirror:
            result = {key: tf.reverse(value, axis=[2]) for key, value in result.items()}
        return result

    def _serve_float(self, vis_lr, nir_lr):
        return self._predict(*_checked_range(vis_lr, nir_lr))

    def _serve_uint8(self, vis_lr, nir_lr):
        # Calling the float tf.function (not _predict) traces the model once for both.
        result = self.serve_float(
            tf.cast(vis_lr, tf.float32) / 255.0, tf.cast(nir_lr, tf.float32) / 255.0
        )
        vis_sr = tf.clip_by_value(tf.round(result["vis_sr"] * 255.0), 0.0, 255.0)
        result["vis_sr"] = tf.cast(vis_sr, tf.uint8)
        return result


def check_target(out_dir, overwrite=False):
    """A cheap early check of the export target, before the (slow) load and export.

    Raises:
        FileExistsError: `out_dir` exists and `overwrite` is False.
        TargetBlockedError (a NotADirectoryError): a file stands where a folder above
            `out_dir` must go; the message is `<out_dir>: <that file> is a file, not a folder`
            (the command line puts `--out ` before it).
    """
    if os.path.lexists(out_dir) and not overwrite:
        raise FileExistsError(
            "Export target already exists (use overwrite to replace it): "
            f"{os.path.abspath(out_dir)}"
        )
    check_parent(out_dir)


class TargetBlockedError(NotADirectoryError):
    """A file stands where a folder above the export target must go; `str(error)` is
    `<target>: <that file> is a file, not a folder`."""


def check_parent(path):
    """Raises TargetBlockedError when a file stands where a folder above `path` must go."""
    blocker = sources.blocking_file(os.path.dirname(os.path.abspath(path)))
    if blocker:
        raise TargetBlockedError(f"{path}: {blocker} is a file, not a folder")


def export_savedmodel(model, config, out_dir, overwrite=False, multiple=1, nir_side="right"):
    """Exports `model` as a SavedModel at `out_dir`, atomically.

    The SavedModel is written to a temporary directory beside `out_dir` (same parent, so the
    final rename stays on one file system) and renamed into place; on any failure the
    temporary directory is removed and `out_dir` is untouched. With `overwrite`, an existing
    `out_dir` is moved aside, replaced, then deleted (and restored if the rename fails).

    Args:
        model: a CSPSR Keras model (built: call it once or load it), in the precision the
            export should compute in (`runtime.with_precision`); recorded in the metadata.
        config: its `CSPSRConfig`, or None (then the scale is measured, nothing checked).
        out_dir: the SavedModel directory to create.
        overwrite: bool, default False; replace an existing `out_dir`.
        multiple: int, default 1; see `CSPSRServingModule`.
        nir_side: `right` (default; the model's rig) or `left`: the graph mirrors both views
            and its outputs (`CSPSRServingModule`'s `mirror`); recorded in the metadata.

    Returns:
        The absolute path of the SavedModel directory.

    Raises:
        FileExistsError: `out_dir` exists and `overwrite` is False.
        ValueError: the model is not a CSPSR model, or disagrees with `config`.
    """
    check_nir_side(nir_side)
    out_dir = os.path.abspath(out_dir)
    check_target(out_dir, overwrite)
    scale = infer_scale(model, config)
    module = CSPSRServingModule(model, scale, multiple=multiple, mirror=nir_side == "left")
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    # Temporary directories of earlier exports to this target that were killed (kill -9,
    # power loss) are removed; those of a live export hold a lock and are kept.
    scratch_dirs.remove_stale(parent, _scratch_prefix(name))
    with scratch_dirs.locked_scratch_dir(parent, _scratch_prefix(name)) as tmp_dir:
        # mkdtemp makes the directory private (0700); give it the mode of an ordinary new
        # directory, so that a server running as another user can read the export.
        os.chmod(tmp_dir, 0o777 & ~_current_umask())
        tf.saved_model.save(module, tmp_dir, signatures=module.signatures())
        _write_metadata(tmp_dir, module, config, scale, multiple, nir_side)
        _give_folders_the_umask_mode(tmp_dir)
        scratch_dirs.move_into_place(tmp_dir, out_dir, overwrite)
    logging.info("Exported SavedModel (x%d, %s) to %s", scale, sorted(module.signatures()), out_dir)
    return out_dir


def export_from_path(model_path, out_dir, overwrite=False, multiple=1, geometry=None,
                     precision=None, ops=None, nir_side="right"):
    """Loads a `.keras` file or training directory (`model_io.load_model`) and exports it.

    The target is checked before the (slow) load. `geometry="aligned"` exports the model for
    a registered camera (zero disparity, `model.with_geometry`); None keeps the model's own.
    `precision` (`float32`, `bfloat16`, `float16`; None: float32) is the precision the
    exported graph computes in. `ops` (`fused`, `shift`, `patches`; None: fused) is how its
    DMF element-wise parts run (both applied by `runtime.load_for_running`):
    `fused` graphs hold XLA-compiled functions, which TensorFlow Serving runs on CPU only when
    started with `--xla_cpu_compilation_enabled=true`; export with `shift` for a server without
    XLA. `nir_side="left"` exports for a rig whose NIR camera is on the left (see
    `export_savedmodel`).
    Raises what `load_model` and `export_savedmodel` raise: FileNotFoundError,
    FileExistsError, ValueError (e.g. a corrupt `.keras`, an unknown precision), each naming
    the file.
    """
    from cspsr_tf.model import runtime

    runtime.check_run_options(precision, ops)
    check_nir_side(nir_side, as_flag=True)
    check_target(out_dir, overwrite)
    model, config = runtime.load_for_running(model_path, geometry, precision, ops)
    return export_savedmodel(model, config, out_dir, overwrite=overwrite, multiple=multiple,
                             nir_side=nir_side)


def _scratch_prefix(name):
    """Prefix of the hidden temporary directories of an export to `<parent>/<name>`."""
    return f".{name}.tmp-"


def _give_folders_the_umask_mode(root):
    """Sets every folder under `root` to 0777 minus the umask, the mode of os.makedirs.

    TensorFlow makes `variables/` and `assets/` with mode 0755 minus the umask: under a
    group-writable umask (002) they would stay 0755 while the rest of the export follows it.
    (Its files already get 0666 minus the umask.)
    """
    mode = 0o777 & ~_current_umask()
    for folder, subfolders, _ in os.walk(root):
        for name in subfolders:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, mode)


def _current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _write_metadata(saved_model_dir, module, config, scale, multiple, nir_side="right"):
    outputs = {}
    for signature, function in module.signatures().items():
        structure = function.get_concrete_function().structured_outputs
        outputs[signature] = sorted(structure)
    metadata = {
        "scale": scale,
        "precision": model_precision(module.model),
        "multiple": int(multiple),
        # `left`: the graph mirrors both views and its outputs (predict reads it).
        "nir_side": nir_side,
        "inputs": list(INPUT_NAMES),
        "signatures": outputs,
        "model_config": None if config is None else config.to_dict(),
    }
    path = os.path.join(saved_model_dir, METADATA_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
