"""The run configuration of `train.py`: `TrainConfig` (every flag of training), its checks
against the model config, and the derived settings (precision, CVM pre-training config)."""

import dataclasses
import os

from absl import logging

from cspsr_tf.data.dataset_names import DATASETS
from cspsr_tf.data.degradation_specs import resolve_degradation
from cspsr_tf.model.configs import (
    ABLATIONS,
    ARCHITECTURES,
    CVM_NORMALIZATIONS,
    FUSIONS,
    GEOMETRIES,
    KERNEL_NORMALIZATIONS,
    PRESETS,
    SINGLE_BRANCH_INPUTS,
    SKIP_SOURCES,
    SUPPORTED_SCALES,
    CSPSRConfig,
)
from cspsr_tf.model.precision import PRECISIONS
from cspsr_tf.model.run_options import NIR_SIDES, OPS
from cspsr_tf.util.paths import blocking_file

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
    nir_side: str = "right"
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


# The model flags with a fixed set of values, and the least value of the numeric ones, checked
# (naming the flag) before the model config is made. CSPSRConfig checks most of them too, in
# its own words; dynamic_conv_implementation, kernel_normalization and max_disparity were only
# checked by the layers, when the model was built (a traceback, after the data had loaded).
# The kernel normalisations are the dynamic convolution layer's own list.
MODEL_CHOICES = {
    "scale": SUPPORTED_SCALES,
    "architecture": ARCHITECTURES,
    "single_branch_input": SINGLE_BRANCH_INPUTS,
    "skip_source": SKIP_SOURCES,
    "fusion": FUSIONS,
    "dynamic_conv_implementation": OPS,
    "kernel_normalization": KERNEL_NORMALIZATIONS,
    "cvm_normalization": CVM_NORMALIZATIONS,
    "geometry": GEOMETRIES,
}
MODEL_MINIMUMS = {
    "channels": 1, "num_modules": 1, "kernel_size": 1, "cvm_base_channels": 1, "cvm_depth": 1,
    "nir_guided_filter_radius": 0, "max_disparity": 2.0, "lambda_cssc": 0.0,
}


def check_choice(flag, value, choices):
    if value not in choices:
        raise ConfigError(f"--{flag}={value!r} is not one of: {', '.join(map(str, choices))}")


def check_model_values(values):
    """Raises ConfigError naming the flag for a model-config value out of its range.

    `values`: {field: value} of CSPSRConfig fields (the flags given, or a whole config).
    """
    for name, value in values.items():
        if name in MODEL_CHOICES:
            check_choice(name, value, MODEL_CHOICES[name])
        elif name in MODEL_MINIMUMS and value < MODEL_MINIMUMS[name]:
            raise ConfigError(f"--{name} must be >= {MODEL_MINIMUMS[name]:g}, got {value:g}")
    if values.get("kernel_size", 1) % 2 == 0:
        raise ConfigError(f"--kernel_size must be odd, got {values['kernel_size']}")


def resolve_precision(train):
    """`train` with `precision` and its alias `mixed_precision` made consistent.

    `mixed_precision=True` means float16: with the default `precision="float32"` it turns
    into `precision="float16"`; with `bfloat16` the two disagree (ConfigError). The result
    has `mixed_precision == (precision == "float16")`, so both spellings of a run store the
    same config.
    """
    check_choice("precision", train.precision, PRECISIONS)
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
    check_model_values(model.to_dict())
    check_choice("dataset", train.dataset, DATASETS)
    for name in ("model_dir", "data_dir"):
        value = getattr(train, name)
        blocker = value and blocking_file(value)
        if blocker:
            raise ConfigError(f"--{name}={value}: {blocker} is a file, not a folder")
    check_choice("preset", train.preset, PRESETS)
    check_choice("ablation", train.ablation, ABLATIONS)
    check_choice("stage", train.stage, STAGES)
    check_choice("strategy", train.strategy, STRATEGIES)
    check_choice("lr_schedule", train.lr_schedule, LR_SCHEDULES)
    check_choice("nir_side", train.nir_side, NIR_SIDES)
    check_choice("cvm_lr_schedule", train.cvm_lr_schedule, LR_SCHEDULES)
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
    from cspsr_tf.data import sources  # TensorFlow: not needed to check a config

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


def build_configs(train_overrides, model_overrides):
    """TrainConfig and CSPSRConfig from a preset, an ablation and field overrides."""
    train = resolve_precision(TrainConfig(**train_overrides))
    check_choice("preset", train.preset, PRESETS)
    check_choice("ablation", train.ablation, ABLATIONS)
    check_model_values(model_overrides)
    try:
        model = PRESETS[train.preset].replace(**{**ABLATIONS[train.ablation], **model_overrides})
    except ValueError as error:  # a combination, e.g. skip_source=guided_filter without a radius
        raise ConfigError(f"model config of --preset={train.preset} --ablation={train.ablation}: "
                          f"{error}") from None
    return train, model


def model_config_fields():
    return list(dataclasses.fields(CSPSRConfig))


def train_config_fields():
    return list(dataclasses.fields(TrainConfig))
