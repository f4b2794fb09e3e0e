"""The learned gain on the VIS skip and the skip taken from the NIR-guided filter."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.model.build import build_cspsr
from cspsr_tf.model.configs import CSPSRConfig, get_config
from cspsr_tf.model.layers.skip_gain import SkipGain
from tests.layer_test_utils import run_layer_checks
from tests.test_guided_filter import bicubic_of_guided_filter, random_pair


def test_layer_checks_and_the_gain_formula():
    image = np.random.default_rng(0).random((2, 5, 6, 3)).astype(np.float32)
    run_layer_checks(SkipGain, {"rate": 5.0}, image, expected_output_shapes=(2, 5, 6, 3))
    layer = SkipGain(rate=20.0)
    np.testing.assert_array_equal(layer(image).numpy(), image)  # gain 1 at the start
    layer.log_gain.assign([0.01, -0.02, 0.05])
    want = image * np.exp(20.0 * np.array([0.01, -0.02, 0.05]))
    np.testing.assert_allclose(layer(image).numpy(), want, rtol=1e-6)
    with pytest.raises(ValueError, match="rate must be > 0"):
        SkipGain(rate=0.0)


def test_adam_brings_the_gain_to_a_tripled_exposure_in_a_few_hundred_steps():
    # A dark input and a target 3x brighter: the gain alone must learn the factor 3.
    x = tf.constant(np.random.default_rng(1).random((4, 8, 8, 3)).astype(np.float32) * 0.3)
    layer = SkipGain()
    layer.build(x.shape)
    optimizer = keras.optimizers.Adam(5e-4)
    for _ in range(400):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x) - 3.0 * x))
        optimizer.apply_gradients(zip(tape.gradient(loss, [layer.log_gain]), [layer.log_gain], strict=True))
    np.testing.assert_allclose(layer.gain.numpy(), [3.0] * 3, rtol=0.05)


def test_untrained_baseline_with_skip_gain_outputs_the_gained_bicubic_image():
    model = build_cspsr(get_config("tiny", "baseline", scale=2, skip_gain=True))
    plain = build_cspsr(get_config("tiny", "baseline", scale=2))
    inputs = random_pair(1, 6, 7, seed=2)
    # The zero-initialised last conv: both start as the bicubic image.
    np.testing.assert_allclose(model(inputs)["vis_sr"].numpy(), plain(inputs)["vis_sr"].numpy(), atol=1e-6)
    model.get_layer("vis_skip_gain").log_gain.assign(np.log([2.0, 1.0, 0.5]) / 20.0)
    np.testing.assert_allclose(
        model(inputs)["vis_sr"].numpy(), plain(inputs)["vis_sr"].numpy() * [2.0, 1.0, 0.5], rtol=1e-5
    )


def test_full_gf_skip_starts_as_the_bicubic_of_the_nir_guided_filter():
    config = get_config("tiny", "full_gf_skip", scale=2)
    model = build_cspsr(config)
    inputs = random_pair(1, 8, 10, seed=3)
    out = model(inputs)
    nir_l = out["nir_l"].numpy()[0, ..., 0].astype(np.float64)
    np.testing.assert_allclose(out["vis_sr"].numpy(), bicubic_of_guided_filter(inputs["vis_lr"], nir_l, 2), atol=1e-4)
    # So even untrained, its VIS output depends on the NIR (the plain full_gf's does not).
    other = {**inputs, "nir_lr": np.random.default_rng(4).random((1, 8, 10, 1), dtype=np.float32)}
    assert np.abs(model(other)["vis_sr"].numpy() - out["vis_sr"].numpy()).mean() > 1e-3
    assert model.get_layer("vis_skip_gain").compute_dtype == "float32"


def test_skip_config_checks_and_legacy_configs():
    with pytest.raises(ValueError, match="skip_source must be one of"):
        CSPSRConfig(skip_source="nir")
    with pytest.raises(ValueError, match="need global_skip=True"):
        CSPSRConfig(skip_gain=True, global_skip=False)
    with pytest.raises(ValueError, match="needs nir_guided_filter_radius"):
        CSPSRConfig(skip_source="guided_filter")
    config = get_config("tiny", "full_gf_skip")
    assert CSPSRConfig.from_dict(json.loads(config.to_json())) == config
    values = get_config("tiny").to_dict()
    del values["skip_gain"], values["skip_source"]
    legacy = CSPSRConfig.from_dict(values)
    assert (legacy.skip_gain, legacy.skip_source) == (False, "vis")
