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
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cspsr_tf.data import pipeline, sources
from cspsr_tf.model import model_io
from cspsr_tf.model.build import build_cspsr_with_training_twin
from cspsr_tf.ops import metrics
from cspsr_tf.ops.resize import bicubic_upscale
from cspsr_tf.train.run_config import (
    STRATEGIES,
    DivergedError,
    check_choice,
    cvm_pretraining_config,
    resolve_precision,
    synthetic_disparity_bound,
    validate_configs,
    with_cvm_patch_size,
)
from cspsr_tf.train.run_dir import (
    METRICS_FILE,
    atomic_write_text,
    check_model_dir,
    load_cvm_weights,
    prepare_model_dir,
    remove_unsaved_run,
    save_cvm_weights,
    truncate_metrics,
)
from cspsr_tf.train.stages import (
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
    select_stage,
)


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
    check_choice("strategy", name, STRATEGIES)


def _task(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "chief", 0
    return resolver.task_type, resolver.task_id or 0


def is_chief(strategy):
    task_type, task_id = _task(strategy)
    return task_type == "chief" or (task_type == "worker" and task_id == 0)


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
    ds = pipeline.make_eval_dataset(raw.take(train.val_frames), scale=model.scale,
                                    mirror=train.nir_side == "left")
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
    prepare_model_dir(train, model_config, chief=chief)
    # The whole config is in config.json; the console names the file (a dump of it was 70 lines
    # per run, twice with the CVM pre-training).
    logging.info("%s stage (%s preset, x%d): config in %s", train.stage.upper(), train.preset,
                 model_config.scale, os.path.join(train.model_dir, model_io.CONFIG_FILE))
    try:
        pretraining = pretrain_cvm(train, model_config, strategy)
        if pretraining is not None and pretraining["stopped"] == "sigterm":
            return {**pretraining, "cvm_pretraining": pretraining}
        cvm_source = pretraining["model_dir"] if pretraining else None
        summary = _train(train, model_config, strategy, chief, raw_train, val_frames, cvm_source)
    except BaseException:
        if chief:
            remove_unsaved_run(train.model_dir, created)
        raise
    if pretraining is not None:
        summary["cvm_pretraining"] = pretraining
    logging.info("Training summary: %s", json.dumps(summary))
    return summary


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
    writer = tf.summary.create_noop_writer()
    if chief:
        os.makedirs(os.path.join(train.model_dir, "tensorboard"), exist_ok=True)  # see checkpoints/
        writer = tf.summary.create_file_writer(os.path.join(train.model_dir, "tensorboard"))
    validate_at = None
    if val_frames and train.stage == "sr":
        def forward(inputs):
            return state.model(inputs, training=False)

        predict = tf.function(forward, reduce_retracing=True, autograph=False)

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
    checkpoints = os.path.join(write_dir, model_io.CHECKPOINT_SUBDIR)
    # Made here, not by TensorFlow, whose folders are 0755 whatever the umask (a group-writable
    # umask such as 002 would not carry over to them).
    os.makedirs(checkpoints, exist_ok=True)
    manager = tf.train.CheckpointManager(checkpoint, checkpoints, max_to_keep=3)
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
        mirror=train.nir_side == "left",
        degradation=None if train.degradation == "none" else train.degradation,
        synthetic_stereo_max_disparity=(
            synthetic_disparity_bound(train, model_config) * model_config.scale if cvm_stage else None
        ),
        frame_statistics_of=(
            ("vis_nir" if model_config.uses_nir else "vis")
            if model_config.exposure_conditioning and not cvm_stage else None
        ),
    ).with_options(options)


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
        atomic_write_text(state_file, "\n".join(lines) + "\n")
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
