"""Tests of cspsr_tf.data.degradations: expected statistics are computed by hand."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from cspsr_tf.data.degradations import (  # noqa: E402
    BLIND_CONDITIONS,
    DEGRADATIONS,
    apply_degradation,
    blind_degradation,
    resolve_degradation,
)

_SEED = tf.constant([1, 2], tf.int64)


def _constant(value, shape=(2, 64, 64, 3)):
    return np.full(shape, value, np.float32)


def test_none_is_identity():
    image = np.random.default_rng(0).uniform(0, 0.1, (8, 9, 3)).astype(np.float32)
    np.testing.assert_array_equal(apply_degradation(image, "none").numpy(), image)
    np.testing.assert_array_equal(apply_degradation(image, "none", _SEED).numpy(), image)


@pytest.mark.parametrize("sigma", [0.02, 0.05])
def test_noise_has_the_requested_std(sigma):
    params = {} if sigma == 0.02 else {"sigma": sigma}  # 0.02 is the documented default
    out = apply_degradation(_constant(0.5), "noise", _SEED, **params).numpy()
    assert out.dtype == np.float32 and out.shape == (2, 64, 64, 3)
    assert abs(out.mean() - 0.5) < 0.1 * sigma
    assert abs(out.std() - sigma) < 0.05 * sigma


def test_low_light_darkens_with_signal_dependent_noise():
    # Defaults: gain 0.25, 400 photons at white, read noise 0.005. For a flat 0.4 input the
    # mean is 0.4 * 0.25 = 0.1 and the variance 0.1 / 400 + 0.005 ** 2.
    out = apply_degradation(_constant(0.4), "low_light", _SEED).numpy()
    assert abs(out.mean() - 0.1) < 0.002
    expected_std = np.sqrt(0.1 / 400 + 0.005**2)
    assert abs(out.std() - expected_std) < 0.05 * expected_std
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Shot noise grows with the signal: a brighter flat input is noisier.
    bright = apply_degradation(_constant(0.8), "low_light", _SEED).numpy()
    assert bright.std() > 1.2 * out.std()
    assert bright.mean() < 0.8


def test_over_exposure_saturates():
    ramp = np.linspace(0.0, 1.0, 101, dtype=np.float32).reshape(1, 101, 1)
    out = apply_degradation(ramp, "over_exposure").numpy()
    np.testing.assert_allclose(out, np.minimum(2.0 * ramp, 1.0), atol=1e-7)
    clipped_share = np.mean(out >= 1.0)
    assert abs(clipped_share - 51 / 101) < 1e-6  # inputs 0.50 ... 1.00
    out3 = apply_degradation(ramp, "over_exposure", gain=4.0).numpy()
    assert np.mean(out3 >= 1.0) > clipped_share


@pytest.mark.parametrize("name", ["noise", "low_light"])
def test_random_degradations_are_deterministic_per_seed(name):
    image = np.random.default_rng(1).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    first = apply_degradation(image, name, _SEED).numpy()
    again = apply_degradation(image, name, tf.constant([1, 2], tf.int64)).numpy()
    other = apply_degradation(image, name, tf.constant([1, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    mapped = next(
        iter(tf.data.Dataset.from_tensors(image).map(lambda x: apply_degradation(x, name, _SEED)))
    )
    # Graph optimisations may reorder float arithmetic: allow float32 rounding, no more.
    np.testing.assert_allclose(mapped.numpy(), first, rtol=0, atol=1e-6)
    traced = tf.function(lambda x: apply_degradation(x, name, _SEED))
    np.testing.assert_allclose(traced(image).numpy(), first, rtol=0, atol=1e-6)


def test_errors_name_the_valid_choices():
    image = _constant(0.5, (4, 4, 3))
    with pytest.raises(ValueError, match=r"Valid names: \['blind', 'low_light', 'noise', 'none'"):
        apply_degradation(image, "fog", _SEED)
    with pytest.raises(ValueError, match=r"Valid parameters: \['sigma'\]"):
        apply_degradation(image, "noise", _SEED, gain=2.0)
    with pytest.raises(ValueError, match="needs a stateless seed"):
        apply_degradation(image, "noise")
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        apply_degradation(image, "noise", _SEED, sigma=-0.1)
    with pytest.raises(ValueError, match="gain must be > 0"):
        apply_degradation(image, "over_exposure", gain=0)


def test_resolve_degradation_accepts_none_names_and_mappings():
    assert resolve_degradation(None) == ("none", {})
    assert resolve_degradation("over_exposure") == ("over_exposure", {"gain": 2.0})
    assert resolve_degradation({"name": "noise", "sigma": 0.1}) == ("noise", {"sigma": 0.1})
    assert set(DEGRADATIONS) == {"none", "noise", "low_light", "over_exposure", "blind"}
    with pytest.raises(ValueError, match="'name'"):
        resolve_degradation({"sigma": 0.1})


def test_a_string_spec_carries_parameters_after_a_colon():
    assert resolve_degradation("low_light:gain=0.1") == (
        "low_light", {"gain": 0.1, "photons_at_white": 400.0, "read_noise": 0.005})
    assert resolve_degradation("low_light: gain=0.1 , read_noise=0") == (
        "low_light", {"gain": 0.1, "photons_at_white": 400.0, "read_noise": 0.0})
    assert resolve_degradation("noise:") == ("noise", {"sigma": 0.02})
    for bad, message in [("low_light:gain", "expected name:key=value"),
                         ("low_light:gain=dark", "gain='dark' is not a number"),
                         ("low_light:sigma=0.1", "Valid parameters"),
                         ("low_light:gain=0", "gain must be > 0"),
                         ("low_light:gain=nan", "gain must be a finite number"),
                         ("fog:gain=0.1", "Unknown degradation 'fog'")]:
        with pytest.raises(ValueError, match=message):
            resolve_degradation(bad)


def test_string_spec_degrades_as_the_mapping_does():
    image = _constant(0.5, (8, 8, 3))
    name, params = resolve_degradation("low_light:gain=0.1")
    by_string = apply_degradation(image, name, _SEED, **params)
    by_mapping = apply_degradation(image, "low_light", _SEED, gain=0.1)
    np.testing.assert_array_equal(by_string.numpy(), by_mapping.numpy())
    # A 0.1 exposure of a mid grey: mean about 0.05 (the noise is zero-mean before clipping).
    assert abs(float(np.mean(by_mapping)) - 0.05) < 0.01


# Ranges wider than the defaults (one exposure each), so that the draws of a strength show.
_WIDE = {"low_light_min_gain": 0.1, "low_light_max_gain": 0.5, "over_exposure_min_gain": 1.25,
         "over_exposure_max_gain": 3.0, "noise_min_sigma": 0.01, "noise_max_sigma": 0.05}


def _blind_draws(count, image, params=None):
    draws = []
    for index in range(count):
        seed = tf.constant([7, index], tf.int64)
        degraded, condition, strength = blind_degradation(image, seed, params)
        draws.append((np.asarray(degraded), BLIND_CONDITIONS[int(condition)], float(strength)))
    return draws


def test_blind_draws_each_condition_at_its_rate_and_in_its_range():
    params = {**DEGRADATIONS["blind"], **_WIDE}
    draws = _blind_draws(600, _constant(0.4, (8, 8, 3)), _WIDE)
    counts = {name: sum(c == name for _, c, _ in draws) for name in BLIND_CONDITIONS}
    expected = {"clean": params["p_clean"], "low_light": params["p_low_light"],
                "over_exposure": params["p_over_exposure"]}
    expected["noise"] = 1.0 - sum(expected.values())
    for name, p in expected.items():
        # Binomial standard deviation of a count over 600 draws: at most 12.3; 4 of them.
        assert abs(counts[name] - 600 * p) < 4 * np.sqrt(600 * p * (1 - p)), counts
    strengths = {name: np.array([s for _, c, s in draws if c == name]) for name in BLIND_CONDITIONS}
    assert np.all(strengths["clean"] == 0.0)
    gains = strengths["low_light"]
    assert gains.min() >= params["low_light_min_gain"] and gains.max() <= params["low_light_max_gain"]
    # Log-uniform: half of the draws below the geometric mean of the bounds (sqrt(0.05) = 0.224).
    below = np.mean(gains < np.sqrt(params["low_light_min_gain"] * params["low_light_max_gain"]))
    assert 0.35 < below < 0.65, below
    over = strengths["over_exposure"]
    assert over.min() >= params["over_exposure_min_gain"] and over.max() <= params["over_exposure_max_gain"]
    sigmas = strengths["noise"]
    assert sigmas.min() >= params["noise_min_sigma"] and sigmas.max() <= params["noise_max_sigma"]


def test_blind_images_are_the_drawn_condition():
    image = np.random.default_rng(0).uniform(0.05, 0.45, (32, 32, 3)).astype(np.float32)
    seen = set()
    for degraded, condition, strength in _blind_draws(40, tf.constant(image), _WIDE):
        seen.add(condition)
        if condition == "clean":
            np.testing.assert_array_equal(degraded, image)
        elif condition == "over_exposure":
            np.testing.assert_allclose(degraded, np.clip(image * strength, 0, 1), atol=1e-6)
        elif condition == "low_light":
            # Shot noise has mean gain * x; its residual averages out over 3,072 values.
            assert np.mean(degraded) == pytest.approx(strength * np.mean(image), rel=0.05, abs=0.002)
        else:
            residual = degraded - image  # no clipping: the image stays in [0.05, 0.45]
            assert np.std(residual) == pytest.approx(strength, rel=0.1)
            assert abs(np.mean(residual)) < 0.004
    assert seen == set(BLIND_CONDITIONS)


def test_blind_is_deterministic_per_seed_and_checks_its_parameters():
    image = _constant(0.3, (8, 8, 3))
    a = apply_degradation(image, "blind", _SEED)
    graph = tf.function(lambda x: apply_degradation(x, "blind", _SEED))(image)
    np.testing.assert_array_equal(a.numpy(), graph.numpy())
    with pytest.raises(ValueError, match="must be <= 1"):
        resolve_degradation("blind:p_clean=0.6,p_low_light=0.6")
    with pytest.raises(ValueError, match="low_light_min_gain must be <= low_light_max_gain"):
        resolve_degradation("blind:low_light_min_gain=0.9")
    assert resolve_degradation("blind:p_clean=0.5,p_low_light=0.2")[1]["p_clean"] == 0.5


def test_blind_defaults_use_the_evaluated_exposures():
    # The exposure of a dark frame cannot be read off it, so by default each condition has
    # one exposure: the one `low_light` and `over_exposure` use.
    image = np.random.default_rng(2).uniform(0.05, 0.45, (16, 16, 3)).astype(np.float32)
    strengths = {}
    for _, condition, strength in _blind_draws(60, tf.constant(image)):
        strengths.setdefault(condition, set()).add(round(strength, 6))
    assert strengths["low_light"] == {DEGRADATIONS["low_light"]["gain"]}
    assert strengths["over_exposure"] == {DEGRADATIONS["over_exposure"]["gain"]}
