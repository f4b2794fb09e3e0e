"""Loading a trained model from a `.keras` file or a training directory (checkpoints)."""

import json
import os

import keras
import tensorflow as tf

from cspsr_tf.configs import CSPSRConfig
from cspsr_tf.model import build_cspsr

# A training directory holds CONFIG_FILE (the run's config, whose "model" entry is a
# CSPSRConfig dict) and CHECKPOINT_SUBDIR (tf.train.CheckpointManager checkpoints of
# tf.train.Checkpoint(model=..., optimizer=..., step=...)).
CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"


def weights_by_path(layer):
    """{variable path: variable} of a Keras model or layer, for tf.train.Checkpoint.

    Keras 3 layers are not reliably tracked by TensorFlow's object-based checkpoints (their
    trainable weights end up saved only through the optimizer), so checkpoints name every
    weight explicitly by its unique Keras path, e.g. "dmf1/csft/w_s1/kernel".
    """
    return {variable.path: variable for variable in layer.weights}


def _import_layers():
    # Registers the custom layers with Keras before deserialisation.
    import cspsr_tf.layers.bicubic_upsample  # noqa: F401
    import cspsr_tf.layers.cvm  # noqa: F401
    import cspsr_tf.layers.dmf  # noqa: F401
    import cspsr_tf.layers.pixel_shuffle  # noqa: F401
    import cspsr_tf.layers.residual_block  # noqa: F401


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


def load_model(path):
    """Returns `(model, config)` from a `.keras` file or a training directory.

    For a `.keras` file the config is read from `<file>.config.json` beside it (written by
    `save_model`) when present, else it is None.
    """
    _import_layers()
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
        raise FileNotFoundError(f"Model not found: {path}")
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a .keras file or a training directory. Received: {path}")
    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # Keras raises many types for a corrupt archive.
        raise ValueError(f"Cannot load model {path}: {type(error).__name__}: {error}") from None
    config = None
    sidecar = path + ".config.json"
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            config = CSPSRConfig.from_dict(json.load(f))
    return model, config


def save_model(model, config, path):
    """Saves `model` as `.keras` plus its CSPSRConfig beside it (`<path>.config.json`).

    Both are written to temporary names and renamed, so an interrupted save never leaves a
    half-written model at `path`.
    """
    if not path.endswith(".keras"):
        raise ValueError(f"Model path must end in .keras. Received: {path}")
    tmp = path + ".tmp.keras"
    model.save(tmp)
    with open(path + ".config.json.tmp", "w") as f:
        f.write(config.to_json())
    os.replace(path + ".config.json.tmp", path + ".config.json")
    os.replace(tmp, path)
