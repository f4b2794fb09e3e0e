"""What a training step does: the stage's loss and variables (`select_stage`, the one place to
change for a new stage or loss term), the optimizer and its schedule, and the distributed step."""


import keras
import tensorflow as tf

from cspsr_tf.ops.warp import disparity_to_lr
from cspsr_tf.train.losses import cspsr_loss_per_example
from cspsr_tf.train.matching_losses import cvm_matching_loss_per_example
from cspsr_tf.train.run_config import uses_loss_scaling


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

    # autograph=False: the step has no Python control flow over tensors, and converting its
    # source (and every layer's) took seconds of each run's start.
    replica_fn = (tf.function(replica_step, jit_compile=True, autograph=False) if train.jit_compile
                  else replica_step)

    @tf.function(autograph=False)
    def train_step(inputs, targets):
        per_replica = strategy.run(replica_fn, args=(inputs, targets))
        return {
            name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            for name, value in per_replica.items()
        }

    return train_step
