"""The training directory (`model_dir`): its config check on resume, creation and clean-up,
`metrics.jsonl`, the last validation, and the CVM weights saved on their own."""

import json
import math
import os
import shutil

import tensorflow as tf

from cspsr_tf.data import sources
from cspsr_tf.model import model_io
from cspsr_tf.model.configs import LEGACY_MODEL_FIELDS
from cspsr_tf.train.run_config import (
    LEGACY_TRAIN_FIELDS,
    LOCATION_FIELDS,
    PATH_FIELDS,
    RESUMABLE_FIELDS,
    ConfigError,
)

METRICS_FILE = "metrics.jsonl"


def atomic_write_text(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _folder(value, field):
    if value is None:
        return sources.DEFAULT_DATA_DIR if field == "data_dir" else None
    return os.path.realpath(os.path.expanduser(value))


def _config_differences(old, new):
    differences = []
    for section in ("train", "model"):
        old_section = dict(old.get(section, {}))
        legacy = LEGACY_MODEL_FIELDS if section == "model" else LEGACY_TRAIN_FIELDS
        for key, value in legacy.items():
            old_section.setdefault(key, value)
        if section == "train" and "mixed_precision" in old_section:
            # Written before `precision` existed: `mixed_precision` said float16 or not.
            old_section.setdefault(
                "precision", "float16" if old_section["mixed_precision"] else "float32"
            )
        if section == "train" and old_section.get("stage") == "cvm" and \
                old_section.get("cvm_patch_size") is None:
            # Recorded before the CVM stage resolved its patch: None meant the SR patch.
            old_section["cvm_patch_size"] = old_section.get("patch_size")
        for key, value in new[section].items():
            if section == "train" and key in RESUMABLE_FIELDS + LOCATION_FIELDS:
                continue
            before = old_section.get(key)
            if section == "train" and key in PATH_FIELDS:
                same = key in old_section and _folder(before, key) == _folder(value, key)
            else:
                same = before == value
            if not same:
                differences.append(f"{key}: {before!r} -> {value!r}")
    return differences


def check_model_dir(train, model):
    """Raises ConfigError when model_dir holds a run with other settings; writes nothing."""
    path = os.path.join(train.model_dir, model_io.CONFIG_FILE)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        try:
            old = json.load(f)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(old, dict):
        raise ConfigError(f"{path} is not a training config (a JSON object)")
    # Compared as config.json would hold it (a tuple field is a list in JSON).
    current = json.loads(json.dumps({"train": train.to_dict(), "model": model.to_dict()}))
    differences = _config_differences(old, current)
    if differences:
        raise ConfigError(
            f"{train.model_dir} holds a run with a different config ({'; '.join(differences)}); "
            "use another --model_dir"
        )


def prepare_model_dir(train, model, chief=True):
    """Creates model_dir and its config.json, or checks that an existing run matches."""
    check_model_dir(train, model)
    full = {"train": train.to_dict(), "model": model.to_dict()}
    if chief:
        try:
            os.makedirs(train.model_dir, exist_ok=True)
        except OSError as error:  # e.g. no permission; a file on the way is refused earlier
            raise ConfigError(
                f"--model_dir={train.model_dir}: {error.strerror or error}"
            ) from None
        path = os.path.join(train.model_dir, model_io.CONFIG_FILE)
        atomic_write_text(path, json.dumps(full, indent=2, sort_keys=True))
    return full


def remove_unsaved_run(model_dir, created):
    """After a failure before the first checkpoint: removes what the run wrote (nothing to resume)."""
    if tf.train.latest_checkpoint(os.path.join(model_dir, model_io.CHECKPOINT_SUBDIR)):
        return
    for name in (model_io.CONFIG_FILE, METRICS_FILE, "best.keras"):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    for name in ("tensorboard", model_io.CHECKPOINT_SUBDIR):
        shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
    if created and os.path.isdir(model_dir) and not os.listdir(model_dir):
        os.rmdir(model_dir)


def truncate_metrics(model_dir, step):
    """Keeps the validations of metrics.jsonl up to `step`, the step a resumed run restarts at.

    A run killed after its last checkpoint validated steps that the resumed run validates
    again; dropping them (and a line cut short by the kill) keeps the file one series.
    """
    path = os.path.join(model_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", math.inf) <= step:
                kept.append(json.dumps(record) + "\n")
    atomic_write_text(path, "".join(kept))


def last_validation(model_dir):
    """The last validation record of the run in `model_dir` (a dict with `step`,
    `model/standard/psnr`, `bicubic/standard/psnr`, ...), or None when it has none."""
    path = os.path.join(model_dir, METRICS_FILE)
    try:
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def below_bicubic_message(record):
    """One line when a validation record has the model below bicubic, else None."""
    if record is None:
        return None
    model, bicubic = record["model/standard/psnr"], record["bicubic/standard/psnr"]
    if model >= bicubic:
        return None
    return (f"at its last validation (step {record['step']}) the model is BELOW bicubic: "
            f"{model:.2f} dB against {bicubic:.2f} dB (standard protocol); train longer or on "
            "more data, or use a shipped preset (--model=cspsr_small_x4)")


def save_cvm_weights(cvm, directory):
    """Writes the CVM's weights alone (a tf.train.Checkpoint) for `--cvm_init`."""
    os.makedirs(directory, exist_ok=True)
    tf.train.Checkpoint(cvm_weights=model_io.weights_by_path(cvm)).write(
        os.path.join(directory, "cvm")
    )


def load_cvm_weights(cvm, source):
    """Restores CVM weights from a `--stage=cvm` training directory (or its cvm/ folder)."""
    for candidate in (os.path.join(source, "cvm", "cvm"), os.path.join(source, "cvm")):
        if tf.io.gfile.exists(candidate + ".index"):
            tf.train.Checkpoint(cvm_weights=model_io.weights_by_path(cvm)).read(
                candidate
            ).assert_existing_objects_matched()
            return
    raise ConfigError(f"--cvm_init={source}: no CVM weights (cvm/cvm.index) found there")
