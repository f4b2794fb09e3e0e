"""A shared check that every custom layer goes through (after keras-hub's LayerTestCase)."""

import keras
import numpy as np
import tensorflow as tf


def _flatten(x):
    return tf.nest.flatten(x)


def run_layer_checks(layer_cls, init_kwargs, inputs, expected_output_shapes=None):
    """Config round trip, serialisation round trip, eager/symbolic calls, one training step.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments (every one must come back from get_config).
        inputs: a numpy array or a tuple of arrays, the call input.
        expected_output_shapes: optional nested shapes of the eager output.
    """
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    for key, value in init_kwargs.items():
        assert key in config, f"get_config lost argument {key!r}"
        assert config[key] == value, f"get_config changed {key!r}: {config[key]!r} != {value!r}"
    revived = layer_cls.from_config(config)
    assert revived.get_config() == config

    serialized = keras.saving.serialize_keras_object(layer)
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert type(deserialized) is layer_cls
    assert deserialized.get_config() == config

    eager_out = layer(inputs)
    if expected_output_shapes is not None:
        got = tf.nest.map_structure(lambda t: tuple(t.shape), eager_out)
        assert got == expected_output_shapes, f"{got} != {expected_output_shapes}"

    # Symbolic call with unknown spatial size gives the same structure and channel counts.
    symbolic_inputs = tf.nest.map_structure(
        lambda a: keras.Input(shape=(None, None, a.shape[-1])), inputs
    )
    symbolic_out = layer_cls(**init_kwargs)(symbolic_inputs)
    for sym, eag in zip(_flatten(symbolic_out), _flatten(eager_out), strict=True):
        assert sym.shape[-1] == eag.shape[-1]

    # One training step changes the weights and gives finite gradients.
    if layer.trainable_weights:
        with tf.GradientTape() as tape:
            out = layer(inputs, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in _flatten(out)])
        grads = tape.gradient(loss, layer.trainable_weights)
        assert any(g is not None for g in grads)
        for g in grads:
            if g is not None:
                assert np.all(np.isfinite(g.numpy()))
        before = [w.numpy().copy() for w in layer.trainable_weights]
        keras.optimizers.SGD(0.1).apply_gradients(
            [(g, w) for g, w in zip(grads, layer.trainable_weights, strict=True) if g is not None]
        )
        assert any(
            not np.array_equal(b, w.numpy()) for b, w in zip(before, layer.trainable_weights, strict=True)
        )
    return layer
