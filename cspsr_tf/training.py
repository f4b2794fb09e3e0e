"""The training loop behind `train.py`: one custom loop for every tf.distribute strategy.

Keras `Model.fit` fails under MultiWorkerMirroredStrategy in Keras 3 (keras-team/keras#20585),
so the loop is written by hand: `strategy.run` of a step in a `tf.function` over
`strategy.experimental_distribute_dataset`, with each replica's loss divided by the global
batch so that gradients summed over replicas equal the single-device mean.

A training directory (`model_dir`) holds:
    config.json          the full run config ({"train": ..., "model": ...}), written at start
    checkpoints/         tf.train.CheckpointManager checkpoints (model, optimizer, step, best PSNR)
    best.keras           the model with the best validation PSNR (standard protocol)
    final.keras          the model at the last step
    cvm/                 the CVM weights alone, after `--stage=cvm`
    metrics.jsonl        one JSON line per validation (cut back to the restored step on resume)
    tensorboard/         TensorBoard logs
Running the same command again resumes from the latest checkpoint, also after the folder was
moved or is spelled differently. A run that fails before its first checkpoint leaves nothing.

`run_training` reads top to bottom as: set-up (check the config and the data before anything
is written), `select_stage` (what is trained and with which loss: the one place to change for
a new stage or loss term), `make_train_step`, `restore_or_initialise`, `_train_loop`, and
`_run_validation`.
"""

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cspsr_tf import metrics, model_io
from cspsr_tf.configs import ABLATIONS, LEGACY_MODEL_FIELDS, PRESETS, CSPSRConfig
from cspsr_tf.data import pipeline, sources
from cspsr_tf.data.degradations import resolve_degradation
from cspsr_tf.data.resize import bicubic_upscale
from cspsr_tf.losses import cspsr_loss_per_example
from cspsr_tf.matching_losses import cvm_matching_loss_per_example, disparity_to_lr
from cspsr_tf.model import build_cspsr_with_training_twin
from cspsr_tf.precision import PRECISIONS

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
STAGES = ("sr", "cvm")
LR_SCHEDULES = ("constant", "cosine")
# Train fields a saved config.json may lack, with the behaviour from before they existed.
LEGACY_TRAIN_FIELDS = {"cvm_lr_schedule": "constant"}
# Fields that may change when a run is resumed (its length, its logging, and the learning rate,
# the way out of a diverged run); all others must match the config.json of the training directory.
RESUMABLE_FIELDS = (
    "steps", "max_minutes", "save_every", "eval_every", "log_every", "val_frames", "learning_rate"
)
# Where the run lives is not a setting: a moved or re-spelled model_dir resumes.
LOCATION_FIELDS = ("model_dir",)
# Folders compared by the folder they name, not by how the path is spelled.
PATH_FIELDS = ("data_dir", "manual_dir", "cvm_init")
METRICS_FILE = "metrics.jsonl"


class ConfigError(ValueError):
    """A bad training setting; train.py prints it as one line and exits with code 2."""


class DivergedError(ConfigError):
    """A non-finite loss or weight; its one-line message says what was kept and how to go on."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings (the model's own settings live in CSPSRConfig).

    Paper defaults (Sec. 5.1): Adam (0.9, 0.999), learning rate 1e-4, batch 32, 120x120 HR
    patches. `steps` counts optimiser steps of one global batch.

    The CVM's alignment signal (`matching_losses`): an SR run of a model with a CVM first
    pre-trains the CVM for `cvm_steps` steps (a `--stage=cvm` run in `<model_dir>/cvm_pretrain`,
    resumable like any run, at `cvm_learning_rate`, with `cvm_patch_size` HR patches; None:
    the largest multiple of the scale up to `CVM_PATCH_SIZE_CAP` that every training frame
    holds, and at least `patch_size`, `auto_cvm_patch_size`), then
    trains the SR model from it with the CVM fixed (`freeze_cvm`, the default: as the paper's
    separately trained stereo network; trained along, the SR loss pulled the CVM to zero
    disparity on real stereo frames), or, with `freeze_cvm=False`, trains the CVM along with
    `lambda_match` x the matching loss in the joint loss. In the CVM stage, registered
    (`aligned`) pairs become stereo pairs with a known disparity (random fields up to
    `synthetic_max_disparity` LR pixels, default the model's `max_disparity`,
    `data.stereo_synthesis`), whose supervised term has weight `cvm_supervision`; in the SR
    stage they keep zero disparity.

    Precision (`precision.py`): `precision` is the compute dtype of the model's body
    (`float32`, `bfloat16` or `float16`; variables, losses and the float32 islands stay
    float32). Only float16 needs loss scaling (a LossScaleOptimizer): bfloat16 has float32's
    exponent range. `mixed_precision=True` is the older spelling of `precision="float16"`;
    `resolve_precision` makes the two agree (mixed_precision is True exactly for float16).
    """

    dataset: str = "nirvis_synthetic"
    data_dir: str | None = None
    manual_dir: str | None = None
    train_split: str = "train"
    val_split: str = "test"
    preset: str = "small"
    ablation: str = "full"
    stage: str = "sr"
    patch_size: int = 120
    batch_size: int = 32
    steps: int = 1000
    max_minutes: float = 0.0
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    random_downscale: bool = True
    vertical_flip: bool = True
    degradation: str = "none"
    seed: int = 0
    model_dir: str = "runs/cspsr"
    strategy: str = "auto"
    mixed_precision: bool = False
    precision: str = "float32"
    jit_compile: bool = False
    cvm_init: str | None = None
    freeze_cvm: bool = True
    cvm_steps: int = 500
    cvm_learning_rate: float = 1e-3
    cvm_lr_schedule: str = "cosine"
    cvm_patch_size: int | None = None
    synthetic_max_disparity: float | None = None
    lambda_match: float = 0.1
    cvm_smoothness: float = 0.01
    cvm_consistency: float = 0.01
    cvm_supervision: float = 1.0
    save_every: int = 100
    eval_every: int = 500
    log_every: int = 10
    val_frames: int = 4
    val_crop: int = 192

    def to_dict(self):
        return dataclasses.asdict(self)


def _check_choice(flag, value, choices):
    if value not in choices:
        raise ConfigError(f"--{flag}={value!r} is not one of: {', '.join(choices)}")


def resolve_precision(train):
    """`train` with `precision` and its alias `mixed_precision` made consistent.

    `mixed_precision=True` means float16: with the default `precision="float32"` it turns
    into `precision="float16"`; with `bfloat16` the two disagree (ConfigError). The result
    has `mixed_precision == (precision == "float16")`, so both spellings of a run store the
    same config.
    """
    _check_choice("precision", train.precision, PRECISIONS)
    precision = train.precision
    if train.mixed_precision:
        if precision not in ("float32", "float16"):
            raise ConfigError(
                f"--mixed_precision (float16) disagrees with --precision={precision}; "
                "use --precision alone"
            )
        precision = "float16"
    return dataclasses.replace(
        train, precision=precision, mixed_precision=precision == "float16"
    )


def uses_loss_scaling(train):
    """True for float16 training, whose small gradients underflow without loss scaling."""
    return train.precision == "float16" or train.mixed_precision


def synthetic_disparity_bound(train, model):
    """Largest synthetic disparity of the CVM stage, LR px: `synthetic_max_disparity`, or the
    model's `max_disparity` (its whole search range) when None."""
    if train.synthetic_max_disparity is None:
        return float(model.max_disparity)
    return float(train.synthetic_max_disparity)


def validate_configs(train, model):
    """Raises ConfigError with one clear line for any bad combination."""
    _check_choice("dataset", train.dataset, sources.DATASETS)
    _check_choice("preset", train.preset, PRESETS)
    _check_choice("ablation", train.ablation, ABLATIONS)
    _check_choice("stage", train.stage, STAGES)
    _check_choice("strategy", train.strategy, STRATEGIES)
    _check_choice("lr_schedule", train.lr_schedule, LR_SCHEDULES)
    _check_choice("cvm_lr_schedule", train.cvm_lr_schedule, LR_SCHEDULES)
    resolve_precision(train)
    try:
        resolve_degradation(train.degradation)
    except ValueError as error:
        raise ConfigError(f"--degradation={train.degradation}: {error}") from None
    if train.patch_size < model.scale or train.patch_size % model.scale:
        raise ConfigError(
            f"--patch_size={train.patch_size} must be a positive multiple of --scale={model.scale}"
        )
    for name in ("batch_size", "steps", "save_every", "log_every"):
        if getattr(train, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(train, name)}")
    if train.learning_rate <= 0:
        raise ConfigError(f"--learning_rate must be > 0, got {train.learning_rate}")
    if train.max_minutes > 0 and train.strategy == "multi_worker":
        # Workers would stop at different steps and wait for each other forever.
        raise ConfigError("--max_minutes cannot be used with --strategy=multi_worker; use --steps")
    if train.stage == "cvm" and not model.use_cvm:
        raise ConfigError("--stage=cvm needs a model with a CVM (use_cvm=True)")
    if train.cvm_init and not model.use_cvm:  # (--freeze_cvm is moot without a CVM)
        raise ConfigError("--cvm_init needs a model with a CVM (use_cvm=True)")
    if train.cvm_steps < 0:
        raise ConfigError(f"--cvm_steps must be >= 0, got {train.cvm_steps}")
    if train.cvm_learning_rate <= 0:
        raise ConfigError(f"--cvm_learning_rate must be > 0, got {train.cvm_learning_rate}")
    if train.cvm_patch_size is not None and (
        train.cvm_patch_size < model.scale or train.cvm_patch_size % model.scale
    ):
        raise ConfigError(
            f"--cvm_patch_size={train.cvm_patch_size} must be a positive multiple of --scale={model.scale}"
        )
    for name in ("synthetic_max_disparity", "lambda_match", "cvm_smoothness", "cvm_consistency",
                 "cvm_supervision"):
        if getattr(train, name) is not None and getattr(train, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(train, name)}")


def make_strategy(name):
    """The tf.distribute strategy for `--strategy`."""
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        # Reads the cluster from the TF_CONFIG environment variable.
        return tf.distribute.MultiWorkerMirroredStrategy()
    _check_choice("strategy", name, STRATEGIES)


def _task(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "chief", 0
    return resolver.task_type, resolver.task_id or 0


def is_chief(strategy):
    task_type, task_id = _task(strategy)
    return task_type == "chief" or (task_type == "worker" and task_id == 0)


def _atomic_write_text(path, text):
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
        os.makedirs(train.model_dir, exist_ok=True)
        path = os.path.join(train.model_dir, model_io.CONFIG_FILE)
        _atomic_write_text(path, json.dumps(full, indent=2, sort_keys=True))
    return full


def _remove_unsaved_run(model_dir, created):
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
    _atomic_write_text(path, "".join(kept))


def learning_rate_schedule(train):
    """The learning rate: a float, or a schedule of the step for `--lr_schedule=cosine`."""
    if train.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            train.learning_rate, decay_steps=train.steps, alpha=0.01
        )
    return train.learning_rate


def make_optimizer(train):
    optimizer = keras.optimizers.Adam(
        learning_rate_schedule(train), beta_1=train.adam_beta1, beta_2=train.adam_beta2
    )
    if uses_loss_scaling(train):  # float16 only: bfloat16 has float32's exponent range
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _data_seed(seed, start_step):
    # A resumed run continues with a fresh, deterministic stream keyed by the step it resumes
    # at (the tf.data iterator itself is not checkpointed: its shuffle buffer holds whole HR
    # frames and would make every checkpoint hundreds of MB).
    return int(seed) * 1_000_003 + int(start_step)


def load_validation_frames(train, model):
    """A small list of (inputs, targets, meta) whole frames, cropped to `val_crop` HR."""
    if train.eval_every <= 0 or train.val_frames <= 0:
        return []
    raw = sources.load_split(train.dataset, train.val_split, train.data_dir, train.manual_dir)
    ds = pipeline.make_eval_dataset(raw.take(train.val_frames), scale=model.scale)
    crop = max(model.scale, train.val_crop // model.scale * model.scale)
    frames = []
    for inputs, targets, meta in ds:
        lr_crop = crop // model.scale
        inputs = {k: v[:, :lr_crop, :lr_crop] for k, v in inputs.items()}
        targets = {k: v[:, :crop, :crop] for k, v in targets.items()}
        frames.append((inputs, targets, meta))
    return frames


def validate(predict, frames, scale):
    """Mean PSNR / SSIM of model and bicubic over the frames, both protocols."""
    results = {"model": [], "bicubic": []}
    first = None
    for inputs, targets, _ in frames:
        out = predict(inputs)
        hr = targets["vis_hr"][0].numpy()
        sr = np.clip(out["vis_sr"][0].numpy(), 0.0, 1.0)
        bicubic = bicubic_upscale(inputs["vis_lr"], scale)[0].numpy()
        results["model"].append(metrics.evaluate_pair(sr, hr, scale))
        results["bicubic"].append(metrics.evaluate_pair(bicubic, hr, scale))
        if first is None:
            first = (bicubic, sr, hr, out.get("disp_l"))
    summary = {}
    for who, values in results.items():
        for protocol in ("paper", "standard"):
            for name in ("psnr", "ssim"):
                summary[f"{who}/{protocol}/{name}"] = float(
                    np.mean([v[protocol][name] for v in values])
                )
    return summary, first


def disparity_colormap(disparity, max_disparity):
    """[h, w] disparity in pixels -> [h, w, 3] uint8 RGB (cv2 INFERNO map)."""
    import cv2

    scaled = np.clip(disparity / max(max_disparity, 1e-6), 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return bgr[..., ::-1]


class _StopRequested:
    """Turns SIGTERM into a clean stop (checkpoint, then exit) at the next step boundary."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        del signum, frame
        self.requested = True


@dataclasses.dataclass
class _RunState:
    """What a checkpoint holds, and the managers that write it."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    best_psnr: tf.Variable
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager

    @property
    def current(self):
        return int(self.step.numpy())


def run_training(train, model_config, strategy=None):
    """Trains (or resumes) a run and returns a summary dict.

    The config, the existing run and the data are all checked before anything is written,
    so a bad setting or dataset leaves no trace in model_dir. A failure before the first
    checkpoint removes what the run wrote; a later one keeps the checkpoints.

    Args:
        train: TrainConfig.
        model_config: CSPSRConfig.
        strategy: a tf.distribute strategy; default from `train.strategy`.

    Returns:
        {"step", "target_steps", "stopped" (None, "sigterm" or "time_budget"), "losses",
        "best_val_psnr", "seconds", "weights_checksum", "model_dir"}, plus "cvm_pretraining"
        (the summary of the CVM pre-training run) when one ran.
    """
    train = resolve_precision(train)
    validate_configs(train, model_config)
    if train.stage == "cvm":  # recorded in model_dir resolved, so a resume compares the size
        train = with_cvm_patch_size(train, model_config)
    strategy = strategy or make_strategy(train.strategy)
    chief = is_chief(strategy)
    check_model_dir(train, model_config)
    raw_train = sources.load_split(train.dataset, train.train_split, train.data_dir, train.manual_dir)
    val_frames = load_validation_frames(train, model_config) if chief else []
    created = not os.path.isdir(train.model_dir)
    full_config = prepare_model_dir(train, model_config, chief=chief)
    logging.info("Config:\n%s", json.dumps(full_config, indent=2, sort_keys=True))
    try:
        pretraining = pretrain_cvm(train, model_config, strategy)
        if pretraining is not None and pretraining["stopped"] == "sigterm":
            return {**pretraining, "cvm_pretraining": pretraining}
        cvm_source = pretraining["model_dir"] if pretraining else None
        summary = _train(train, model_config, strategy, chief, raw_train, val_frames, cvm_source)
    except BaseException:
        if chief:
            _remove_unsaved_run(train.model_dir, created)
        raise
    if pretraining is not None:
        summary["cvm_pretraining"] = pretraining
    logging.info("Training summary: %s", json.dumps(summary))
    return summary


CVM_PRETRAIN_SUBDIR = "cvm_pretrain"
# The CVM pre-training's patch when the frames allow it: on 192 px HR patches (48 LR px at x4)
# the CVM matched far better than on 96 px ones (warped EPE 0.97 vs 1.33 LR px, SANet pair
# 9.95 vs 6.06 of 10-13 px; benchmarks/results/cvm_matching_real_stereo_patch192.json):
# a small patch holds few large disparities that stay inside it.
CVM_PATCH_SIZE_CAP = 192


def auto_cvm_patch_size(patch_size, scale, smallest_frame_side):
    """The default CVM patch: the largest multiple of `scale` <= CVM_PATCH_SIZE_CAP that fits
    a frame of side `smallest_frame_side`, but never below the SR `patch_size` (frames smaller
    than that stop the SR stage anyway, with an error naming the frame)."""
    fits = min(CVM_PATCH_SIZE_CAP, smallest_frame_side) // scale * scale
    return max(patch_size, fits)


def with_cvm_patch_size(train, model_config):
    """`train` with `cvm_patch_size` set: as given, or `auto_cvm_patch_size` of the training
    split (read from the image headers)."""
    if train.cvm_patch_size is not None:
        return train
    smallest = sources.smallest_frame_side(train.dataset, train.train_split, train.data_dir,
                                           train.manual_dir)
    size = auto_cvm_patch_size(train.patch_size, model_config.scale, smallest)
    logging.info("CVM patch: %d HR px (smallest training frame side %d px, cap %d)",
                 size, smallest, CVM_PATCH_SIZE_CAP)
    return dataclasses.replace(train, cvm_patch_size=size)


def cvm_pretraining_config(train):
    """The `--stage=cvm` run that precedes an SR run: `<model_dir>/cvm_pretrain`."""
    return dataclasses.replace(
        train,
        stage="cvm",
        steps=train.cvm_steps,
        learning_rate=train.cvm_learning_rate,
        lr_schedule=train.cvm_lr_schedule,
        model_dir=os.path.join(train.model_dir, CVM_PRETRAIN_SUBDIR),
        max_minutes=0.0,
        eval_every=0,
        cvm_steps=0,
        cvm_init=None,
    )


def pretrain_cvm(train, model_config, strategy):
    """Runs (or resumes) the CVM pre-training of an SR run; its summary, or None if not needed.

    Needed for an SR run of a model with a CVM and `cvm_steps > 0`, unless the SR run already
    has checkpoints (it then resumes past this phase) or starts from `--cvm_init`.
    """
    if train.stage != "sr" or not model_config.use_cvm or train.cvm_steps <= 0 or train.cvm_init:
        return None
    if tf.train.latest_checkpoint(os.path.join(train.model_dir, model_io.CHECKPOINT_SUBDIR)):
        return None
    pretrain = cvm_pretraining_config(train)
    logging.info("Pre-training the CVM for %d steps in %s", pretrain.steps, pretrain.model_dir)
    return run_training(pretrain, model_config, strategy)


def _train(train, model_config, strategy, chief, raw_train, val_frames, cvm_source=None):
    # The precision goes to the model's layers (build_run_state), not to Keras's global policy.
    keras.utils.set_random_seed(train.seed)
    # Each worker writes checkpoints; only the chief's go to model_dir (TF's multi-worker
    # pattern), the others to a scratch folder removed at the end.
    task_type, task_id = _task(strategy)
    write_dir = train.model_dir if chief else os.path.join(
        train.model_dir, f".{task_type}_{task_id}_scratch"
    )
    state, loss_fn, variables = build_run_state(train, model_config, strategy, write_dir)
    start = restore_or_initialise(state, train, cvm_source)
    if chief:
        truncate_metrics(train.model_dir, start)
    train_step = make_train_step(strategy, state.optimizer, loss_fn, variables, train)
    iterator = iter(strategy.experimental_distribute_dataset(
        make_training_dataset(train, model_config, raw_train, start)
    ))
    writer = (
        tf.summary.create_file_writer(os.path.join(train.model_dir, "tensorboard"))
        if chief
        else tf.summary.create_noop_writer()
    )
    validate_at = None
    if val_frames and train.stage == "sr":
        predict = tf.function(lambda x: state.model(x, training=False), reduce_retracing=True)

        def validate_at(step):
            _run_validation(
                predict, val_frames, state.model, model_config, train, step, state.best_psnr, writer
            )

    started = time.time()
    last, stopped = _train_loop(
        train, state, train_step, iterator, _Progress(train, writer, chief, start), validate_at
    )
    if chief and stopped != "sigterm":  # at --steps, or out of time: the model as it is now
        if train.stage == "cvm":
            save_cvm_weights(state.model.get_layer("cvm"), os.path.join(train.model_dir, "cvm"))
        model_io.save_model(state.model, model_config, os.path.join(train.model_dir, "final.keras"))
    if not chief and tf.io.gfile.exists(write_dir):
        tf.io.gfile.rmtree(write_dir)
    return {
        "step": state.current,
        "target_steps": train.steps,
        "stopped": stopped,
        "losses": last,
        "best_val_psnr": float(state.best_psnr.numpy()),
        "seconds": round(time.time() - started, 2),
        "weights_checksum": float(
            sum(np.sum(v.numpy(), dtype=np.float64) for v in state.model.weights)
        ),
        "model_dir": train.model_dir,
    }


def select_stage(train, model_config, model, twin):
    """What this run trains: `(loss_fn, variables)`.

    `loss_fn(inputs, targets)` returns per-example losses, a dict with "total" (the one
    minimised) and its terms (logged). The one place that picks a stage's loss and
    variables: the loop, checkpoints and logging work with any such pair. `twin` is the
    model's training twin (same weights) that takes the per-example rig flag.
    """
    cvm = model.get_layer("cvm") if model_config.use_cvm else None
    scale = model_config.scale

    def ground_truth(targets):
        if "disparity_hr" not in targets:
            return None, None
        return disparity_to_lr(targets["disparity_hr"], targets["disparity_valid_hr"], scale)

    if train.stage == "cvm":

        def cvm_losses(inputs, targets):
            cvm.return_pyramid = True  # the coarser heads get the supervised term too
            try:
                out = cvm((inputs["vis_lr"], inputs["nir_lr"]), training=True)
            finally:
                cvm.return_pyramid = False
            gt, valid = ground_truth(targets)
            return cvm_matching_loss_per_example(
                out, inputs["vis_lr"], inputs["nir_lr"], stereo=targets["stereo"],
                disparity=gt, disparity_valid=valid,
                smoothness_weight=train.cvm_smoothness, consistency_weight=train.cvm_consistency,
                supervised_weight=train.cvm_supervision,
            )

        return cvm_losses, cvm.trainable_variables
    if train.freeze_cvm and cvm is not None:
        cvm.trainable = False
    match = cvm is not None and train.lambda_match > 0 and not train.freeze_cvm

    def sr_losses(inputs, targets):
        # Registered pairs (stereo flag 0) go through with zero disparity.
        outputs = twin({**inputs, "stereo": tf.reshape(targets["stereo"], [-1, 1])}, training=True)
        losses = cspsr_loss_per_example(outputs, targets, scale, model_config.lambda_cssc)
        if match:
            gt, valid = ground_truth(targets)

            def matching_loss():
                return cvm_matching_loss_per_example(
                    outputs, inputs["vis_lr"], inputs["nir_lr"], stereo=targets["stereo"],
                    disparity=gt, disparity_valid=valid,
                    smoothness_weight=train.cvm_smoothness, consistency_weight=train.cvm_consistency,
                    supervised_weight=train.cvm_supervision,
                )["total"]

            if gt is None:
                # Without ground truth only stereo examples have a matching loss: a batch of
                # registered pairs skips computing zeros.
                matching = tf.cond(
                    tf.reduce_any(targets["stereo"] > 0.5), matching_loss,
                    lambda: tf.zeros_like(targets["stereo"]),
                )
            else:
                matching = matching_loss()
            losses["match"] = matching
            losses["total"] = losses["total"] + train.lambda_match * matching
        return losses

    return sr_losses, model.trainable_variables


def build_run_state(train, model_config, strategy, write_dir):
    """The model, optimizer and checkpoint of a run, and the stage's (loss_fn, variables)."""
    with strategy.scope():
        model, twin = build_cspsr_with_training_twin(model_config, precision=train.precision)
        optimizer = make_optimizer(train)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        best_psnr = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best_psnr")
    loss_fn, variables = select_stage(train, model_config, model, twin)
    with strategy.scope():
        optimizer.build(variables)
    checkpoint = tf.train.Checkpoint(
        model_weights=model_io.weights_by_path(model),
        optimizer=optimizer,
        step=step,
        best_psnr=best_psnr,
    )
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(write_dir, model_io.CHECKPOINT_SUBDIR), max_to_keep=3
    )
    state = _RunState(model, optimizer, step, best_psnr, checkpoint, manager)
    return state, loss_fn, variables


def restore_or_initialise(state, train, cvm_source=None):
    """Restores the chief's latest checkpoint, or loads the CVM weights of --cvm_init or of
    the pre-training run `cvm_source`; returns the start step."""
    latest = tf.train.latest_checkpoint(os.path.join(train.model_dir, model_io.CHECKPOINT_SUBDIR))
    if latest:
        state.checkpoint.restore(latest).assert_existing_objects_matched()
        if not callable(learning_rate_schedule(train)):
            # The checkpoint holds the old rate; a resumed run may lower it (--learning_rate).
            state.optimizer.learning_rate = train.learning_rate
        logging.info("Resumed from %s at step %d", latest, state.current)
    elif train.cvm_init or cvm_source:
        load_cvm_weights(state.model.get_layer("cvm"), train.cvm_init or cvm_source)
        logging.info("CVM initialised from %s", train.cvm_init or cvm_source)
    if state.current >= train.steps:
        logging.info(
            "Run already at step %d >= --steps=%d; nothing to train", state.current, train.steps
        )
    return state.current


def make_training_dataset(train, model_config, raw_train, start):
    """The batched training stream, sharded by data under a multi-worker strategy."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    cvm_stage = train.stage == "cvm"
    return pipeline.make_training_dataset(
        raw_train,
        scale=model_config.scale,
        hr_patch_size=train.cvm_patch_size if cvm_stage else train.patch_size,
        batch_size=train.batch_size,
        seed=_data_seed(train.seed, start),
        random_downscale=(0.5, 1.0) if train.random_downscale else None,
        vertical_flip=train.vertical_flip,
        degradation=None if train.degradation == "none" else train.degradation,
        synthetic_stereo_max_disparity=(
            synthetic_disparity_bound(train, model_config) * model_config.scale if cvm_stage else None
        ),
    ).with_options(options)


def make_train_step(strategy, optimizer, loss_fn, variables, train):
    """One optimiser step over a distributed batch; returns the batch-mean losses."""
    global_batch = train.batch_size

    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            per_example = loss_fn(inputs, targets)
            loss = tf.nn.compute_average_loss(per_example["total"], global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss) if uses_loss_scaling(train) else loss
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return {
            name: tf.nn.compute_average_loss(value, global_batch_size=global_batch)
            for name, value in per_example.items()
        }

    replica_fn = tf.function(replica_step, jit_compile=True) if train.jit_compile else replica_step

    @tf.function
    def train_step(inputs, targets):
        per_replica = strategy.run(replica_fn, args=(inputs, targets))
        return {
            name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            for name, value in per_replica.items()
        }

    return train_step


def _train_loop(train, state, train_step, iterator, progress, validate_at):
    """Steps to --steps; returns (last losses, None | "sigterm" | "time_budget")."""
    stop = _StopRequested()
    previous_handler = signal.signal(signal.SIGTERM, stop) if _in_main_thread() else None
    deadline = time.time() + 60.0 * train.max_minutes if train.max_minutes > 0 else math.inf
    last, stopped = {}, None
    try:
        while state.current < train.steps:
            if stop.requested:
                stopped = "sigterm"
                break
            inputs, targets = next(iterator)
            losses = train_step(inputs, targets)
            state.step.assign_add(1)
            current = state.current
            last = {name: float(value) for name, value in losses.items()}
            if not all(math.isfinite(v) for v in last.values()):
                # The weights of step current - 1 gave this loss: a checkpoint of them is no
                # place to resume from.
                _drop_latest_checkpoint(state.manager, current - 1)
                raise DivergedError(_diverged_message(train, state, current, last))
            progress.update(current, last)
            out_of_time = time.time() > deadline
            end = current == train.steps or out_of_time
            if validate_at and (current % train.eval_every == 0 or end):
                validate_at(current)
            if current % train.save_every == 0 or end:
                _save_checkpoint(train, state, current, last)
            if out_of_time:
                logging.info("Time budget of %.1f min reached at step %d", train.max_minutes, current)
                stopped = "time_budget"
                break
        if stopped == "sigterm":
            _save_checkpoint(train, state, state.current, last)
            logging.info("Stopped by SIGTERM at step %d; checkpoint saved", state.current)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return last, stopped


def _save_checkpoint(train, state, step, losses):
    # A finite loss can still leave non-finite weights after its update: never save those, so
    # the last checkpoint is always one to go on from.
    if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in state.model.trainable_weights):
        raise DivergedError(_diverged_message(train, state, step, losses, what="weights"))
    state.manager.save(checkpoint_number=step)


def _drop_latest_checkpoint(manager, number):
    """Deletes the latest checkpoint if it is checkpoint `number`."""
    latest = manager.latest_checkpoint
    if not latest or not latest.endswith(f"-{number}"):
        return
    for path in tf.io.gfile.glob(latest + ".*"):
        tf.io.gfile.remove(path)
    # The state file as CheckpointManager writes it: names relative to the folder, so a
    # moved run still finds its checkpoints.
    remaining = [os.path.basename(path) for path in manager.checkpoints if path != latest]
    state_file = os.path.join(manager.directory, "checkpoint")
    if remaining:
        lines = [f'model_checkpoint_path: "{remaining[-1]}"']
        lines += [f'all_model_checkpoint_paths: "{name}"' for name in remaining]
        _atomic_write_text(state_file, "\n".join(lines) + "\n")
    else:
        tf.io.gfile.remove(state_file)


def _diverged_message(train, state, step, losses, what="loss"):
    values = ", ".join(f"{name}={value:.4g}" for name, value in losses.items())
    latest = tf.train.latest_checkpoint(state.manager.directory)
    if latest:
        kept = (
            f"the last good checkpoint ({os.path.basename(latest)}) is kept: run again with a "
            "lower --learning_rate to resume from it"
        )
    else:
        kept = "no good checkpoint was saved: run again with a lower --learning_rate"
    return (
        f"training diverged: non-finite {what} at step {step} ({values}) with "
        f"--learning_rate={train.learning_rate:g}; {kept}"
    )


class _Progress:
    """Loss scalars to TensorBoard every --log_every steps, and progress on the console: a
    Keras progress bar on a terminal, one log line every --log_every steps otherwise (a log
    file would fill with the bar's redraws)."""

    def __init__(self, train, writer, chief, start):
        self.train, self.writer, self.chief = train, writer, chief
        self.interactive = chief and sys.stdout.isatty()
        self.bar = keras.utils.Progbar(train.steps, verbose=1) if self.interactive else None
        self.since_time, self.since_step = time.time(), start

    def update(self, step, losses):
        if self.bar is not None:
            self.bar.update(step, list(losses.items()))
        if step % self.train.log_every and step != self.train.steps:
            return
        with self.writer.as_default(step=step):
            for name, value in losses.items():
                tf.summary.scalar(f"loss/{name}", value)
            tf.summary.scalar("learning_rate", _current_lr(self.train, step))
        if self.chief and not self.interactive:
            now = time.time()
            rate = (step - self.since_step) / max(now - self.since_time, 1e-9)
            self.since_time, self.since_step = now, step
            values = " ".join(f"{name}={value:.4g}" for name, value in losses.items())
            logging.info("step %d/%d: %s (%.2f steps/s)", step, self.train.steps, values, rate)


def _in_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def _current_lr(train, step):
    # From the config rather than the optimizer: under a strategy its variable is mirrored.
    schedule = learning_rate_schedule(train)
    return float(schedule(step)) if callable(schedule) else schedule


def _run_validation(predict, frames, model, model_config, train, step, best_psnr, writer):
    summary, first = validate(predict, frames, model_config.scale)
    summary["step"] = step
    logging.info(
        "step %d validation: PSNR %.3f dB (bicubic %.3f), SSIM %.4f (standard protocol)",
        step,
        summary["model/standard/psnr"],
        summary["bicubic/standard/psnr"],
        summary["model/standard/ssim"],
    )
    with writer.as_default(step=step):
        for name, value in summary.items():
            if name != "step":
                tf.summary.scalar(f"val/{name}", value)
        bicubic, sr, hr, disp = first
        strip = np.concatenate([bicubic, sr, hr], axis=1)[np.newaxis]
        tf.summary.image("val/bicubic_sr_hr", strip.astype(np.float32))
        if disp is not None:
            colour = disparity_colormap(disp[0, ..., 0].numpy(), model_config.max_disparity)
            tf.summary.image("val/disparity_left", colour[np.newaxis])
    with open(os.path.join(train.model_dir, METRICS_FILE), "a") as f:
        f.write(json.dumps(summary) + "\n")
    psnr = summary["model/standard/psnr"]
    if psnr > float(best_psnr.numpy()):
        best_psnr.assign(psnr)
        model_io.save_model(model, model_config, os.path.join(train.model_dir, "best.keras"))


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


def build_configs(train_overrides, model_overrides):
    """TrainConfig and CSPSRConfig from a preset, an ablation and field overrides."""
    train = resolve_precision(TrainConfig(**train_overrides))
    _check_choice("preset", train.preset, PRESETS)
    _check_choice("ablation", train.ablation, ABLATIONS)
    try:
        model = PRESETS[train.preset].replace(**{**ABLATIONS[train.ablation], **model_overrides})
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return train, model


def model_config_fields():
    return list(dataclasses.fields(CSPSRConfig))


def train_config_fields():
    return list(dataclasses.fields(TrainConfig))
