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
    metrics.jsonl        one JSON line per validation
    tensorboard/         TensorBoard logs
Running the same command again resumes from the latest checkpoint.
"""

import dataclasses
import json
import math
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cspsr_tf import metrics, model_io
from cspsr_tf.configs import ABLATIONS, PRESETS, CSPSRConfig
from cspsr_tf.data import pipeline, sources
from cspsr_tf.data.resize import bicubic_upscale
from cspsr_tf.losses import cspsr_loss_per_example, cvm_unsupervised_loss_per_example
from cspsr_tf.model import build_cspsr

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
STAGES = ("sr", "cvm")
LR_SCHEDULES = ("constant", "cosine")
# Fields that may change when a run is resumed (its length and its logging), all others must
# match the config.json of the training directory.
RESUMABLE_FIELDS = ("steps", "max_minutes", "save_every", "eval_every", "log_every", "val_frames")


class ConfigError(ValueError):
    """A bad training setting; train.py prints it as one line and exits with code 2."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings (the model's own settings live in CSPSRConfig).

    Paper defaults (Sec. 5.1): Adam (0.9, 0.999), learning rate 1e-4, batch 32, 120x120 HR
    patches. `steps` counts optimiser steps of one global batch.
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
    jit_compile: bool = False
    cvm_init: str | None = None
    freeze_cvm: bool = False
    cvm_smoothness: float = 0.1
    cvm_consistency: float = 0.1
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


def validate_configs(train, model):
    """Raises ConfigError with one clear line for any bad combination."""
    _check_choice("dataset", train.dataset, sources.DATASETS)
    _check_choice("preset", train.preset, PRESETS)
    _check_choice("ablation", train.ablation, ABLATIONS)
    _check_choice("stage", train.stage, STAGES)
    _check_choice("strategy", train.strategy, STRATEGIES)
    _check_choice("lr_schedule", train.lr_schedule, LR_SCHEDULES)
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
    if (train.freeze_cvm or train.cvm_init) and not model.use_cvm:
        raise ConfigError("--cvm_init / --freeze_cvm need a model with a CVM (use_cvm=True)")


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


def prepare_model_dir(train, model, chief=True):
    """Creates model_dir and its config.json, or checks that an existing run matches."""
    full = {"train": train.to_dict(), "model": model.to_dict()}
    path = os.path.join(train.model_dir, model_io.CONFIG_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path} is not valid JSON ({error})") from None
        differences = []
        for section in ("train", "model"):
            for key, value in full[section].items():
                if section == "train" and key in RESUMABLE_FIELDS:
                    continue
                if old.get(section, {}).get(key) != value:
                    differences.append(f"{key}: {old.get(section, {}).get(key)!r} -> {value!r}")
        if differences:
            raise ConfigError(
                f"{train.model_dir} holds a run with a different config ({'; '.join(differences)}); "
                "use another --model_dir"
            )
    if chief:
        os.makedirs(train.model_dir, exist_ok=True)
        _atomic_write_text(path, json.dumps(full, indent=2, sort_keys=True))
    return full


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
    if train.mixed_precision:
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


def run_training(train, model_config, strategy=None):
    """Trains (or resumes) a run and returns a summary dict.

    Args:
        train: TrainConfig.
        model_config: CSPSRConfig.
        strategy: a tf.distribute strategy; default from `train.strategy`.
    """
    validate_configs(train, model_config)
    strategy = strategy or make_strategy(train.strategy)
    chief = is_chief(strategy)
    full_config = prepare_model_dir(train, model_config, chief=chief)
    logging.info("Config:\n%s", json.dumps(full_config, indent=2, sort_keys=True))
    if train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(train.seed)

    # Each worker writes checkpoints; only the chief's go to model_dir (TF's multi-worker
    # pattern), the others to a scratch folder removed at the end.
    task_type, task_id = _task(strategy)
    write_dir = train.model_dir if chief else os.path.join(
        train.model_dir, f".{task_type}_{task_id}_scratch"
    )
    ckpt_dir = os.path.join(write_dir, model_io.CHECKPOINT_SUBDIR)

    with strategy.scope():
        model = build_cspsr(model_config)
        optimizer = make_optimizer(train)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        best_psnr = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best_psnr")
    cvm = model.get_layer("cvm") if model_config.use_cvm else None
    if train.stage == "cvm":
        train_variables = cvm.trainable_variables
    else:
        if train.freeze_cvm:
            cvm.trainable = False  # also runs its batch norms in inference mode
        train_variables = model.trainable_variables
    with strategy.scope():
        optimizer.build(train_variables)

    checkpoint = tf.train.Checkpoint(
        model_weights=model_io.weights_by_path(model),
        optimizer=optimizer,
        step=step,
        best_psnr=best_psnr,
    )
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=3)
    chief_manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(train.model_dir, model_io.CHECKPOINT_SUBDIR), max_to_keep=3
    )
    latest = chief_manager.latest_checkpoint
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Resumed from %s at step %d", latest, int(step.numpy()))
    elif train.cvm_init:
        load_cvm_weights(cvm, train.cvm_init)
        logging.info("CVM initialised from %s", train.cvm_init)
    start = int(step.numpy())
    if start >= train.steps:
        logging.info("Run already at step %d >= --steps=%d; nothing to train", start, train.steps)

    raw_train = sources.load_split(train.dataset, train.train_split, train.data_dir, train.manual_dir)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds = pipeline.make_training_dataset(
        raw_train,
        scale=model_config.scale,
        hr_patch_size=train.patch_size,
        batch_size=train.batch_size,
        seed=_data_seed(train.seed, start),
        random_downscale=(0.5, 1.0) if train.random_downscale else None,
        vertical_flip=train.vertical_flip,
        degradation=None if train.degradation == "none" else train.degradation,
    ).with_options(options)
    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    val_frames = load_validation_frames(train, model_config) if chief else []

    global_batch = train.batch_size
    scale = model_config.scale

    def compute_losses(inputs, targets):
        if train.stage == "cvm":
            out = cvm((inputs["vis_lr"], inputs["nir_lr"]), training=True)
            return cvm_unsupervised_loss_per_example(
                out, inputs["vis_lr"], inputs["nir_lr"], train.cvm_smoothness, train.cvm_consistency
            )
        outputs = model(inputs, training=True)
        return cspsr_loss_per_example(outputs, targets, scale, model_config.lambda_cssc)

    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            per_example = compute_losses(inputs, targets)
            loss = tf.nn.compute_average_loss(per_example["total"], global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss) if train.mixed_precision else loss
        grads = tape.gradient(scaled, train_variables)
        optimizer.apply_gradients(zip(grads, train_variables, strict=True))
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

    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    writer = (
        tf.summary.create_file_writer(os.path.join(train.model_dir, "tensorboard"))
        if chief
        else tf.summary.create_noop_writer()
    )
    stop = _StopRequested()
    previous_handler = signal.signal(signal.SIGTERM, stop) if _in_main_thread() else None
    progbar = keras.utils.Progbar(train.steps, stateful_metrics=None, verbose=1 if chief else 0)
    last = {}
    started = time.time()
    deadline = started + 60.0 * train.max_minutes if train.max_minutes > 0 else math.inf
    out_of_time = False
    try:
        while int(step.numpy()) < train.steps and not stop.requested:
            inputs, targets = next(iterator)
            losses = train_step(inputs, targets)
            step.assign_add(1)
            current = int(step.numpy())
            last = {name: float(value) for name, value in losses.items()}
            if not all(math.isfinite(v) for v in last.values()):
                raise FloatingPointError(f"non-finite loss at step {current}: {last}")
            progbar.update(current, [(name, value) for name, value in last.items()])
            if current % train.log_every == 0 or current == train.steps:
                with writer.as_default(step=current):
                    for name, value in last.items():
                        tf.summary.scalar(f"loss/{name}", value)
                    tf.summary.scalar("learning_rate", _current_lr(train, current))
            out_of_time = time.time() > deadline
            if val_frames and train.stage == "sr" and (
                current % train.eval_every == 0 or current == train.steps or out_of_time
            ):
                _run_validation(
                    predict, val_frames, model, model_config, train, current, best_psnr, writer
                )
            if current % train.save_every == 0 or current == train.steps or out_of_time:
                manager.save(checkpoint_number=current)
            if out_of_time:
                logging.info("Time budget of %.1f min reached at step %d", train.max_minutes, current)
                break
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    if stop.requested:
        manager.save(checkpoint_number=int(step.numpy()))
        logging.info("Stopped by SIGTERM at step %d; checkpoint saved", int(step.numpy()))
    if chief and (int(step.numpy()) >= train.steps or out_of_time):
        if train.stage == "cvm":
            save_cvm_weights(cvm, os.path.join(train.model_dir, "cvm"))
        model_io.save_model(model, model_config, os.path.join(train.model_dir, "final.keras"))
    if not chief and tf.io.gfile.exists(write_dir):
        tf.io.gfile.rmtree(write_dir)
    summary = {
        "step": int(step.numpy()),
        "losses": last,
        "best_val_psnr": float(best_psnr.numpy()),
        "seconds": round(time.time() - started, 2),
        "weights_checksum": float(sum(np.sum(v.numpy(), dtype=np.float64) for v in model.weights)),
        "model_dir": train.model_dir,
    }
    logging.info("Training summary: %s", json.dumps(summary))
    return summary


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
    with open(os.path.join(train.model_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(summary) + "\n")
    psnr = summary["model/standard/psnr"]
    if psnr > float(best_psnr.numpy()):
        best_psnr.assign(psnr)
        model_io.save_model(model, model_config, os.path.join(train.model_dir, "best.keras"))


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
    train = TrainConfig(**train_overrides)
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
