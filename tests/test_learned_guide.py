"""The learned correction of the guided filter's NIR guide (`full_lgf_skip`)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.configs import CSPSRConfig, get_config
from cspsr_tf.layers.guided_filter import guided_filter
from cspsr_tf.layers.learned_guide import LearnedGuide
from cspsr_tf.model import build_cspsr
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
