"""Model helpers shared by tests (not a test module itself).

A new CSPSR model zero-initialises its reconstruction convs, so its `vis_sr` is exactly the
bicubic skip: a test that compares an exported, reloaded or tiled model with an untrained one
passes even when the network body was lost on the way. `perturb_weights` gives every weight a
small random value first, so the whole body shapes the output.
"""

import numpy as np


def perturb_weights(model, seed=0, stddev=0.02):
    """Sets every weight of `model` to small random values, in place; returns the model.

    Trainable float weights and batch-norm moving means get normal(0, stddev) values; moving
    variances get uniform(0.5, 1.5) (they must stay positive); normalisation scales (`gamma`)
    1 + normal(0, stddev). Log-parameters (`log_*`: the CVM's softmax temperature, a guided
    filter's eps, a skip gain) are moved by a small RELATIVE amount around their current
    value: the quantity they stand for is multiplied by exp(normal(0, stddev)), so the
    temperature stays near 50 and eps near its initial 1e-4 (set to normal(0, stddev) they
    would become ~1, and the guided filter would ignore its guide). `SkipGain` stores
    gain = exp(rate * log_gain), so its noise is divided by `rate`. With the default stddev a
    tiny CSPSR's `vis_sr` differs from bicubic by about 0.02 on average (about 5 grey
    levels) and stays finite; `tests/test_model_helpers.py` states the ranges.

    Args:
        model: a built Keras model (call it once, or build it from a config).
        seed: int, seed of the random values.
        stddev: float, spread of the random values.
    """
    rng = np.random.default_rng(seed)
    log_scales = _log_parameter_scales(model)
    for weight in model.weights:
        if not np.issubdtype(np.dtype(weight.dtype), np.floating):
            continue  # e.g. a random-seed state, not a learnt value
        name = weight.path.rsplit("/", 1)[-1]
        if name == "moving_variance":
            values = rng.uniform(0.5, 1.5, weight.shape)
        elif name == "gamma":
            # A normalisation's scale near 0 would erase the features it normalises.
            values = 1.0 + rng.normal(0.0, stddev, weight.shape)
        elif name.startswith("log_"):
            # Log-parameters keep their meaningful range: the value they stand for moves by a
            # relative normal(0, stddev), never to exp(0) = 1.
            scale = log_scales.get(id(weight), 1.0)
            values = np.asarray(weight.numpy()) + rng.normal(0.0, stddev, weight.shape) / scale
        else:
            values = rng.normal(0.0, stddev, weight.shape)
        weight.assign(values.astype(weight.dtype))
    return model


def _log_parameter_scales(model):
    """{id(variable): k} for log-parameters whose value is exp(k * variable) with k != 1."""
    from cspsr_tf.model.layers.skip_gain import SkipGain

    return {
        id(layer.log_gain): layer.rate
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, SkipGain) and layer.log_gain is not None
    }


def tiny_perturbed_model(scale=2, ablation="full", seed=0):
    """(model, config): the `tiny` preset with perturbed weights (see `perturb_weights`)."""
    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config

    config = get_config("tiny", ablation, scale=scale)
    return perturb_weights(build_cspsr(config), seed=seed), config
