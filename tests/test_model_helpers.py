"""`perturb_weights` (tests/model_helpers.py) keeps log-parameters in their meaningful range.

Set to normal(0, stddev) like the other weights, log-parameters would stand for exp(~0) = 1:
the CVM's softmax temperature would fall from 50 to ~1 (a near-uniform soft-argmin) and a
guided filter's eps would rise from 1e-4 to ~1 (a filter that ignores its guide), so every
test that uses perturbed models would test a model outside anything training produces. A skip
gain exp(20 log_gain) would be multiplied by up to exp(20 x 3 stddev).
"""

import math

import numpy as np
import pytest

from cspsr_tf.model.build import build_cspsr
from cspsr_tf.model.configs import get_config
from tests.model_helpers import perturb_weights

# The largest stddev any test passes to perturb_weights is 0.1; at 0.1 a relative move of
# exp(N(0, 0.1)) stays within a factor 1.5 (4 sigma) for the handful of values drawn here.
FACTOR = 1.5


def represented_values(model):
    """(temperature, eps [3], gain [3]) as the layers compute them from their log-parameters."""
    cvm = model.get_layer("cvm")
    gf = model.get_layer("nir_guided_filter_r2")
    return (
        math.exp(float(cvm.log_temperature.numpy())),
        np.exp(gf.log_eps.numpy().astype(np.float64)),
        model.get_layer("vis_skip_gain").gain.numpy().astype(np.float64),
    )


@pytest.fixture(scope="module")
def gf_skip_model():
    # The tiny CSPSR with a CVM, a guided filter (radius 2) and a skip gain.
    return build_cspsr(get_config("tiny", "full_gf_skip", scale=2))


def test_the_initial_values_are_the_documented_ones(gf_skip_model):
    temperature, eps, gain = represented_values(gf_skip_model)
    assert temperature == pytest.approx(50.0, rel=1e-5)
    np.testing.assert_allclose(eps, 1e-4, rtol=1e-5)
    np.testing.assert_allclose(gain, 1.0, rtol=1e-6)


@pytest.mark.parametrize("seed, stddev", [(0, 0.02), (1, 0.05), (2, 0.1), (3, 0.1), (4, 0.1)])
def test_log_parameters_stay_within_a_factor_of_their_initial_values(gf_skip_model, seed, stddev):
    model = gf_skip_model
    temperature, eps, gain = represented_values(model)
    other_before = model.get_layer("vis_conv1").kernel.numpy().copy()
    perturb_weights(model, seed=seed, stddev=stddev)
    new_temperature, new_eps, new_gain = represented_values(model)
    # Temperature 50 stays in [33, 75], eps 1e-4 in [6.7e-5, 1.5e-4], the gain 1 in [0.67, 1.5].
    assert temperature / FACTOR < new_temperature < temperature * FACTOR
    assert np.all((eps / FACTOR < new_eps) & (new_eps < eps * FACTOR)), new_eps
    assert np.all((gain / FACTOR < new_gain) & (new_gain < gain * FACTOR)), new_gain
    # They are perturbed (not skipped), and so is an ordinary weight.
    assert new_temperature != temperature and np.all(new_eps != eps) and np.all(new_gain != gain)
    assert np.abs(model.get_layer("vis_conv1").kernel.numpy() - other_before).max() > 0
    # Reset for the next case: the fixture is shared.
    model.get_layer("cvm").log_temperature.assign(math.log(temperature))
    model.get_layer("nir_guided_filter_r2").log_eps.assign(np.log(eps).astype(np.float32))
    model.get_layer("vis_skip_gain").log_gain.assign(np.zeros(3, np.float32))


def test_relative_spread_matches_stddev():
    # The relative move is exp(N(0, stddev)): over many seeds the log of the temperature's
    # ratio has a standard deviation of about stddev (0.1 here), not 20 x stddev.
    model = build_cspsr(get_config("tiny", "full_gf_skip", scale=2))
    logs_t, logs_g = [], []
    for seed in range(30):
        model.get_layer("cvm").log_temperature.assign(math.log(50.0))
        model.get_layer("vis_skip_gain").log_gain.assign(np.zeros(3, np.float32))
        perturb_weights(model, seed=seed, stddev=0.1)
        temperature, _, gain = represented_values(model)
        logs_t.append(math.log(temperature / 50.0))
        logs_g.extend(np.log(gain))
    assert 0.05 < np.std(logs_t) < 0.15
    assert 0.05 < np.std(logs_g) < 0.15
