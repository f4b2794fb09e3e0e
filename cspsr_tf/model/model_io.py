"""Loading a trained model from a `.keras` file or a training directory (checkpoints)."""

import json
import os
import re
import types
import zipfile

import keras
import tensorflow as tf

from cspsr_tf.model.build import build_cspsr
from cspsr_tf.model.configs import CSPSRConfig

# A training directory holds CONFIG_FILE (the run's config, whose "model" entry is a
# CSPSRConfig dict) and CHECKPOINT_SUBDIR (tf.train.CheckpointManager checkpoints of
# tf.train.Checkpoint(model=..., optimizer=..., step=...)).
CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"
# Written by `cspsr_tf.export.savedmodel_export` beside a SavedModel's own files (TensorFlow ignores
# `assets.extra/`): the scale, signatures and model config of the export. Defined here, where
# it is read, so that savedmodel_export.py imports this module and not the other way round.
METADATA_FILE = os.path.join("assets.extra", "cspsr_export.json")
# The inputs and the output every CSPSR model has.
INPUT_NAMES = ("vis_lr", "nir_lr")
SR_OUTPUT = "vis_sr"


class ModelLoadError(ValueError):
    """A model path that exists but holds no usable CSPSR model; `str(error)` is one line.

    A ValueError, so the entry points that report ValueErrors as one line (predict, evaluate,
    export) report it too.
    """


def weights_by_path(layer):
    """{variable path: variable} of a Keras model or layer, for tf.train.Checkpoint.

    Keras 3 layers are not reliably tracked by TensorFlow's object-based checkpoints (their
    trainable weights end up saved only through the optimizer), so checkpoints name every
    weight explicitly by its unique Keras path, e.g. "dmf1/csft/w_s1/kernel".
    """
    return {variable.path: variable for variable in layer.weights}


def _import_layers():
    # Registers every custom layer with Keras before deserialisation (all modules of
    # cspsr_tf.model.layers, so that a layer added later cannot be forgotten here).
    import importlib
    import pkgutil

    import cspsr_tf.model.layers

    for module in pkgutil.iter_modules(cspsr_tf.model.layers.__path__):
        importlib.import_module(f"cspsr_tf.model.layers.{module.name}")


def read_model_config(model_dir):
    """The CSPSRConfig saved in a training directory."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {CONFIG_FILE} in training directory {model_dir}")
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {path}: {error}") from None
    if "model" not in values:
        raise ValueError(f"{path} has no 'model' entry")
    return CSPSRConfig.from_dict(values["model"])


class SavedModelAdapter:
    """Calls an exported SavedModel's `serving_float` signature like the Keras model.

    Lets evaluation and prediction code run an exported model (no project code inside it)
    through the same `model({"vis_lr": ..., "nir_lr": ...})` call as a Keras model.
    `precision` is the one the model was exported in (baked into its graph; exports older
    than the precision option are float32).
    """

    def __init__(self, path, config, precision="float32", nir_side="right"):
        self.name = os.path.basename(os.path.normpath(path))
        self._signature = tf.saved_model.load(path).signatures["serving_float"]
        self._config = config
        self.precision = precision
        self.nir_side = nir_side  # `left`: the export mirrors both views inside its graph

    @property
    def config(self):
        """The CSPSRConfig exported beside the model (None for exports without one)."""
        return self._config

    def __call__(self, inputs, training=False):
        del training
        vis = tf.convert_to_tensor(inputs["vis_lr"], tf.float32)
        nir = tf.convert_to_tensor(inputs["nir_lr"], tf.float32)
        return dict(self._signature(vis_lr=vis, nir_lr=nir))

    def get_layer(self, name):
        # Only the CVM geometry is asked for (tiling margins); it comes from the config.
        if name == "cvm" and self._config is not None and self._config.use_cvm:
            return types.SimpleNamespace(
                max_disparity=self._config.max_disparity, depth=self._config.cvm_depth
            )
        raise ValueError(f"No layer {name!r} in SavedModel {self.name}")


def infer_scale(model, config=None):
    """The model's SR factor, measured with one small forward pass (checked against config).

    Raises:
        ModelLoadError: the model does not return a dict with `vis_sr` of an integer scale,
            or it disagrees with `config.scale`.
    """
    size = 4
    probe = {
        "vis_lr": tf.zeros([1, size, size, 3], tf.float32),
        "nir_lr": tf.zeros([1, size, size, 1], tf.float32),
    }
    outputs = model(probe, training=False)
    if not isinstance(outputs, dict) or SR_OUTPUT not in outputs:
        raise ModelLoadError(
            "Expected a CSPSR model returning a dict with 'vis_sr'. Received outputs: "
            f"{type(outputs).__name__}{sorted(outputs) if isinstance(outputs, dict) else ''}"
        )
    height, width = outputs[SR_OUTPUT].shape[1:3]
    scale = height // size
    if height != width or height % size or scale < 1:
        raise ModelLoadError(
            f"A {size}x{size} input gave vis_sr of {height}x{width}: not an SR model"
        )
    if config is not None and config.scale != scale:
        raise ModelLoadError(
            f"The config says scale={config.scale} but the model upsamples x{scale}"
        )
    return scale


def _one_line(error, limit=300):
    """`error`'s message on one line, without Keras's terminal colour codes, shortened."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_cspsr_model(model, config, path):
    """Raises ModelLoadError unless `model` takes an LR pair and returns `vis_sr` (any Keras
    model loads from a .keras file; this catches the wrong one at load time, in one line)."""
    try:
        infer_scale(model, config)
    except ModelLoadError as error:
        raise ModelLoadError(f"{path} is not a usable CSPSR model: {error}") from None
    except Exception as error:  # A model of another kind fails in its own way on the probe.
        raise ModelLoadError(
            f"{path} is not a CSPSR model (it must take inputs {', '.join(INPUT_NAMES)} and "
            f"return {SR_OUTPUT}): {type(error).__name__}: {_one_line(error, 160)}"
        ) from None


def _load_savedmodel(path):
    config = None
    precision, nir_side = "float32", "right"
    metadata_path = os.path.join(path, METADATA_FILE)
    if os.path.isfile(metadata_path):
        try:
            with open(metadata_path) as f:
                metadata = json.load(f)
            values = metadata.get("model_config")
            config = CSPSRConfig.from_dict(values) if values else None
            precision = metadata.get("precision", "float32")
            nir_side = metadata.get("nir_side", "right")  # exports before the option: right
        except (OSError, ValueError, TypeError, AttributeError) as error:
            raise ModelLoadError(f"Cannot read {metadata_path}: {_one_line(error)}") from None
    if config is None:
        raise ModelLoadError(f"SavedModel {path} has no {METADATA_FILE} with the model config")
    try:
        return SavedModelAdapter(path, config, precision, nir_side), config
    except (OSError, KeyError, ValueError, tf.errors.OpError) as error:
        raise ModelLoadError(f"Cannot load SavedModel {path}: {_one_line(error)}") from None


def _load_keras_file(path):
    # Keras reports any file that is not a zip archive as "File not found"; say what it is.
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path} is not a valid .keras file (not a zip archive: corrupt, truncated or "
            "another format)"
        )
    try:
        # safe_mode=True (the default, stated so it stays): a .keras file that asks to run
        # arbitrary Python (a Lambda layer's bytecode) is refused, not executed.
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many types for a damaged archive.
        raise ModelLoadError(
            f"Cannot load model {path}: {type(error).__name__}: {_one_line(error)}"
        ) from None
    config = None
    sidecar = path + ".config.json"
    if os.path.isfile(sidecar):
        try:
            with open(sidecar) as f:
                config = CSPSRConfig.from_dict(json.load(f))
        except (OSError, ValueError, TypeError, AttributeError) as error:
            raise ModelLoadError(f"Cannot read {sidecar}: {_one_line(error)}") from None
    _check_cspsr_model(model, config, path)
    return model, config


def load_model(path):
    """Returns `(model, config)` from a `.keras` file, a training directory, a SavedModel or
    the name of a shipped preset (`cspsr_tf.presets`).

    A SavedModel exported by `cspsr_tf.export.savedmodel_export` comes back as a `SavedModelAdapter`.

    For a `.keras` file the config is read from `<file>.config.json` beside it (written by
    `save_model`) when present, else it is None; the model is checked to be a CSPSR model
    (one 4x4 forward pass).

    Raises:
        FileNotFoundError: nothing at `path`, or a training directory without checkpoints.
        ModelLoadError (a ValueError): a file that is corrupt, not a CSPSR model, or that
            Keras's safe mode refuses; the message is one line naming the file.
    """
    from cspsr_tf.presets import not_found_message, resolve

    _import_layers()
    path = resolve(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return _load_savedmodel(path)
    if os.path.isdir(path):
        config = read_model_config(path)
        model = build_cspsr(config)
        ckpt_dir = os.path.join(path, CHECKPOINT_SUBDIR)
        latest = tf.train.latest_checkpoint(ckpt_dir)
        if latest is None:
            raise FileNotFoundError(f"No checkpoint in {ckpt_dir}")
        tf.train.Checkpoint(model_weights=weights_by_path(model)).restore(
            latest
        ).expect_partial().assert_existing_objects_matched()
        return model, config
    if not os.path.isfile(path):
        raise FileNotFoundError(not_found_message(path))
    if not path.endswith(".keras"):
        raise ModelLoadError(
            f"Expected a .keras file, a training directory or a SavedModel. Received: {path}"
        )
    return _load_keras_file(path)


def save_model(model, config, path):
    """Saves `model` as `.keras` plus its CSPSRConfig beside it (`<path>.config.json`).

    Both are written to temporary names and renamed, so an interrupted save never leaves a
    half-written model at `path`. A model that computes in bfloat16 or float16 is saved as
    its float32 twin (same weights, `build.rebuild`): the file does not fix the
    precision, which is chosen where the model runs.
    """
    if not path.endswith(".keras"):
        raise ValueError(f"Model path must end in .keras. Received: {path}")
    from cspsr_tf.model.build import rebuild
    from cspsr_tf.model.precision import model_precision

    if config is not None and model_precision(model) != "float32":
        model = rebuild(model, config, "float32")
    tmp = path + ".tmp.keras"
    model.save(tmp)
    with open(path + ".config.json.tmp", "w") as f:
        f.write(config.to_json())
    os.replace(path + ".config.json.tmp", path + ".config.json")
    os.replace(tmp, path)
