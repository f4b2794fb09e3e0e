"""The learned correction of the guided filter's NIR guide (`full_lgf_skip`) and its
supervision towards the clean VIS luminance (`full_lgf_sup_skip`)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf import training
from cspsr_tf.configs import CSPSRConfig, get_config
from cspsr_tf.data.resize import bicubic_downscale
from cspsr_tf.layers.guided_filter import guided_filter
from cspsr_tf.layers.learned_guide import LearnedGuide
from cspsr_tf.losses import guide_loss_per_example
from cspsr_tf.model import build_cspsr, build_cspsr_with_training_twin
from tests.layer_test_utils import run_layer_checks
from tests.test_guided_filter import bicubic_of_guided_filter, random_pair


def numpy_conv3x3(image, kernel, bias):
    """A 'same' 3x3 convolution (cross-correlation, zero padding) by explicit loops."""
    height, width, _ = image.shape
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((height, width, kernel.shape[-1]))
    for i in range(height):
        for j in range(width):
            window = padded[i : i + 3, j : j + 3, :]
            out[i, j] = np.tensordot(window, kernel, axes=([0, 1, 2], [0, 1, 2])) + bias
    return out


def test_layer_checks_and_the_formula_against_numpy():
    vis, nir = random_pair(1, 6, 7, seed=0).values()
    run_layer_checks(LearnedGuide, {"channels": 4, "hidden_layers": 1}, (vis, nir),
                     expected_output_shapes=(1, 6, 7, 1))
    layer = LearnedGuide(channels=5, hidden_layers=2)
    np.testing.assert_array_equal(layer((vis, nir)).numpy(), nir)  # the NIR itself, untrained
    rng = np.random.default_rng(1)
    weights = [rng.normal(0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()]
    layer.set_weights(weights)
    x = np.concatenate([vis[0], nir[0]], axis=-1).astype(np.float64)
    x = np.maximum(numpy_conv3x3(x, weights[0], weights[1]), 0)
    x = np.maximum(numpy_conv3x3(x, weights[2], weights[3]), 0)
    want = nir[0] + numpy_conv3x3(x, weights[4], weights[5])
    np.testing.assert_allclose(layer((vis, nir)).numpy()[0], want, atol=1e-5)
    with pytest.raises(ValueError, match="must be >= 1"):
        LearnedGuide(hidden_layers=0)
    with pytest.raises(ValueError, match="1 channel"):
        LearnedGuide()((vis, vis))


def test_the_guide_learns_what_a_window_fit_of_the_raw_nir_cannot():
    # The NIR is a non-monotonic function of the VIS luminance, (l - 0.5)^2: no window's linear
    # fit of VIS on it holds where l crosses 0.5. Filtering a noisy VIS with it loses detail; a
    # learned guide, seeing both images, can undo the fold. Only the guide is trained.
    # (Measured over initialisation seeds 0-4: the error falls to 0.21-0.22 of its start.)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    luma = 0.5 + 0.4 * np.sin(6 * xx + 4 * yy) * np.cos(5 * yy)
    clean = np.stack([luma, 0.8 * luma + 0.1, 1.0 - 0.7 * luma], axis=-1)[None].astype(np.float32)
    noisy = (clean + rng.normal(0, 0.05, clean.shape)).astype(np.float32)
    nir = ((luma - 0.5) ** 2)[None, ..., None].astype(np.float32)
    layer = LearnedGuide(channels=16, hidden_layers=2)
    layer.build((noisy.shape, nir.shape))
    eps = 1e-3

    def loss():
        guide = layer((noisy, nir))
        return tf.reduce_mean(tf.square(guided_filter(noisy, guide, 2, eps) - clean))

    start = float(loss())
    optimizer = keras.optimizers.Adam(3e-3)
    for _ in range(300):
        with tf.GradientTape() as tape:
            value = loss()
        grads = tape.gradient(value, layer.trainable_variables)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables, strict=True))
    # The raw NIR guide is what the untrained layer gives; the trained guide must halve its error.
    assert float(loss()) < 0.5 * start, (start, float(loss()))


def test_untrained_full_lgf_skip_is_full_gf_skip_and_its_guide_feeds_every_filter():
    config = get_config("tiny", "full_lgf_skip", scale=2)
    model = build_cspsr(config)
    inputs = random_pair(1, 8, 10, seed=3)
    out = model(inputs)
    nir_l = out["nir_l"].numpy()[0, ..., 0].astype(np.float64)
    np.testing.assert_allclose(out["vis_sr"].numpy(), bicubic_of_guided_filter(inputs["vis_lr"], nir_l, 2), atol=1e-4)
    layer = model.get_layer("nir_learned_guide")
    rng = np.random.default_rng(4)
    layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()])
    guide = layer((inputs["vis_lr"], out["nir_l"])).numpy()[0, ..., 0].astype(np.float64)
    assert np.abs(guide - nir_l).mean() > 1e-2
    np.testing.assert_allclose(model(inputs)["vis_sr"].numpy(), bicubic_of_guided_filter(inputs["vis_lr"], guide, 2),
                               atol=1e-4)
    assert layer.compute_dtype == "float32"


def test_learned_guide_config_checks_and_legacy_configs():
    with pytest.raises(ValueError, match="learned_guide needs nir_guided_filter_radii"):
        CSPSRConfig(learned_guide=True)
    config = get_config("tiny", "full_lgf_skip")
    assert config.learned_guide and config.skip_source == "guided_filter"
    assert CSPSRConfig.from_dict(json.loads(config.to_json())) == config
    values = get_config("tiny").to_dict()
    del values["learned_guide"]
    assert CSPSRConfig.from_dict(values).learned_guide is False
    with pytest.raises(ValueError, match="lambda_guide > 0 needs learned_guide"):
        get_config("tiny", "full_gf_skip", lambda_guide=1.0)
    with pytest.raises(ValueError, match="lambda_guide must be >= 0"):
        get_config("tiny", "full_lgf_skip", lambda_guide=-0.1)
    supervised = get_config("tiny", "full_lgf_sup_skip")
    assert supervised.learned_guide and supervised.lambda_guide == 1.0
    assert CSPSRConfig.from_dict(json.loads(supervised.to_json())) == supervised
    del values["lambda_guide"]
    assert CSPSRConfig.from_dict(values).lambda_guide == 0.0


def test_guide_loss_against_hand_computed_luminance():
    # A flat HR colour downscales to itself; its BT.601 luminance by hand:
    # 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6 = 0.363.
    vis_hr = tf.constant(np.broadcast_to([0.2, 0.4, 0.6], (2, 8, 8, 3)), tf.float32)
    guide = tf.constant(np.stack([np.full((4, 4, 1), 0.5), np.full((4, 4, 1), 0.363)]), tf.float32)
    loss = guide_loss_per_example(guide, vis_hr, scale=2).numpy()
    np.testing.assert_allclose(loss, [(0.5 - 0.363) ** 2, 0.0], atol=1e-6)


def test_the_guide_term_trains_the_guide_alone_with_its_weight():
    config = get_config("tiny", "full_lgf_sup_skip", scale=2, lambda_guide=0.5)
    # A CVM trained with the SR stage (not frozen): the guide term must still not reach it.
    train, _ = training.build_configs(dict(batch_size=2, freeze_cvm=False, lambda_match=0.0), {})
    model, twin = build_cspsr_with_training_twin(config)
    loss_fn, variables = training.select_stage(train, config, model, twin)
    rng = np.random.default_rng(0)
    inputs = {"vis_lr": tf.constant(rng.random((2, 8, 8, 3)), tf.float32),
              "nir_lr": tf.constant(rng.random((2, 8, 8, 1)), tf.float32)}
    targets = {"vis_hr": tf.constant(rng.random((2, 16, 16, 3)), tf.float32),
               "nir_hr": tf.constant(rng.random((2, 16, 16, 1)), tf.float32),
               "stereo": tf.constant([0.0, 0.0])}  # registered: the guide reads nir_lr itself
    losses = loss_fn(inputs, targets)
    # Untrained, the guide is the NIR: the term is its MSE to the clean LR luminance.
    luma = np.asarray(bicubic_downscale(targets["vis_hr"], 2)) @ np.array([0.299, 0.587, 0.114])
    expected = np.mean((np.asarray(inputs["nir_lr"])[..., 0] - luma) ** 2, axis=(1, 2))
    np.testing.assert_allclose(losses["guide"].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(
        losses["total"].numpy(),
        (losses["vis_mse"] + config.lambda_cssc * losses["cssc"] + 0.5 * losses["guide"]).numpy(),
        rtol=1e-6)
    with tf.GradientTape() as tape:  # a stereo example: the guide reads the CVM's warped NIR
        guide_term = tf.reduce_sum(loss_fn(inputs, {**targets, "stereo": tf.constant([1.0, 0.0])})["guide"])
    grads = tape.gradient(guide_term, variables)
    guide_ids = {id(v) for v in model.get_layer("nir_learned_guide").trainable_variables}
    moved = [v for v, g in zip(variables, grads, strict=True)
             if g is not None and np.any(np.asarray(g) != 0)]
    assert moved, "the guide term has no gradient"
    assert all(id(v) in guide_ids for v in moved), [v.path for v in moved]
