"""Optional degradations of the LR visible input beyond bicubic downscaling.

The paper's abstract claims robustness to "noise, high brightness, low light"; these
degradations let a configuration test that claim. They act on the LR VIS input only, after
`bicubic_downscale`: the NIR input and every HR target stay untouched, so the model learns
(or is evaluated on) restoring a clean HR VIS image from a degraded LR one, with the NIR image
as the clean guide.

Names (the `degradation` field of a config), with their parameters and defaults:

- `none` (default, the paper protocol): identity.
- `noise`: additive white Gaussian sensor noise, `sigma` = 0.02 (on a [0, 1] scale), clipped.
- `low_light`: the exposure is cut by `gain` = 0.25, then photon shot noise (a Poisson draw
  with `photons_at_white` = 400 expected photons at a darkened value of 1.0, so the noise
  variance is value / 400) and Gaussian read noise (`read_noise` = 0.005) are added, clipped.
- `over_exposure`: the exposure is multiplied by `gain` = 2.0 and clipped at 1 (saturation);
  deterministic.
- `blind`: each example draws its condition (Real-ESRGAN's habit: one model for frames whose
  condition the user does not know): clean with probability `p_clean` = 0.35; low light with
  `p_low_light` = 0.3, its gain log-uniform in [`low_light_min_gain`, `low_light_max_gain`]
  (default: both 0.25, the `low_light` exposure; the `low_light` noise constants);
  over-exposure with `p_over_exposure` = 0.25, its gain uniform in [`over_exposure_min_gain`,
  `over_exposure_max_gain`] (default: both 2.0); the rest (0.1) Gaussian sensor noise, sigma
  uniform in [`noise_min_sigma`, `noise_max_sigma`] = [0.005, 0.02]. The NIR stays clean in
  every case. Why one exposure each by default: the exposure of a dark frame cannot be read off
  the frame (its shot noise has variance / mean = 1 / photons_at_white at any gain), so a
  mixture of gains asks the network to brighten by a factor it cannot know; measured with
  gains in [0.1, 0.5] and [1.25, 3] (2,000 steps, `small`): clean frames came out 4.4 dB BELOW
  bicubic (25.24 against 29.66 dB), the VIS-only model's 9.5 dB below. With one exposure each
  the VIS-only model still put them 9.0 dB below (20.65 dB): a network that sees a few dozen
  pixels around each output cannot tell a bright clean frame from an over-exposed one, nor
  (without noise) a dark scene from a darkened one. Whole-frame statistics
  (`--exposure_conditioning`) lifted clean frames to 27.68 dB, still below bicubic (29.66), so
  the shipped presets are trained clean (docs/nir_benefit.md, "One model for every condition").

There is no brightening anywhere: the Zhi et al. stereo frames are dark (mean about 25/255)
and stay as recorded. `low_light` on such frames makes them darker still (mean about 6/255 at
the default gain), which is the intended stress test, not a bug.

Random degradations are stateless: the same `seed` (a shape [2] integer tensor, as for
`tf.random.stateless_*`) gives the same noise eagerly, inside `tf.function` and inside
`tf.data.Dataset.map`.
"""

import math

import tensorflow as tf

from cspsr_tf.data.degradation_specs import (  # noqa: E402, F401  (re-exported)
    _RANDOM,
    BLIND_CONDITIONS,
    DEGRADATIONS,
    _validated_params,
    resolve_degradation,
)


def apply_degradation(vis_lr, name="none", seed=None, **params):
    """Degrades the LR visible image; deterministic for a given stateless seed.

    Args:
        vis_lr: float tensor with values in [0, 1], any shape ([h, w, 3] or [B, h, w, 3]).
        name: one of `DEGRADATIONS` (`none`, `noise`, `low_light`, `over_exposure`, `blind`).
        seed: shape [2] int32/int64 tensor for the stateless random ops. Required by `noise`,
            `low_light` and `blind`, ignored by the others.
        **params: overrides of the name's parameters (see the module docstring).

    Returns:
        float32 tensor of the same shape, clipped to [0, 1] (`none` returns the input as
        float32, unchanged).

    Raises:
        ValueError: for an unknown name or parameter, or a missing seed where one is needed.
    """
    params = _validated_params(name, params)
    vis_lr = tf.cast(tf.convert_to_tensor(vis_lr), tf.float32)
    if name == "none":
        return vis_lr
    if name in _RANDOM and seed is None:
        raise ValueError(f"Degradation {name!r} is random and needs a stateless seed, got None.")
    if name == "noise":
        return _noise(vis_lr, seed, params["sigma"])
    if name == "over_exposure":
        return tf.clip_by_value(vis_lr * params["gain"], 0.0, 1.0)
    if name == "low_light":
        return _low_light(vis_lr, seed, params["gain"], params["photons_at_white"], params["read_noise"])
    return blind_degradation(vis_lr, seed, params)[0]


def _noise(vis_lr, seed, sigma):
    noise = tf.random.stateless_normal(tf.shape(vis_lr), seed=seed, stddev=sigma)
    return tf.clip_by_value(vis_lr + noise, 0.0, 1.0)


def _low_light(vis_lr, seed, gain, photons_at_white, read_noise):
    # Shot noise follows the photon count, so its variance grows with the signal; read noise
    # is signal independent. Both act on the darkened exposure.
    shape = tf.shape(vis_lr)
    shot_seed, read_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    photons = tf.random.stateless_poisson(
        shape, seed=shot_seed, lam=vis_lr * gain * photons_at_white, dtype=tf.float32
    )
    read = tf.random.stateless_normal(shape, seed=read_seed, stddev=read_noise)
    # Multiplying by the reciprocal (rather than dividing) keeps eager and graph results
    # bit-identical: Grappler rewrites a division by a constant into this multiplication.
    return tf.clip_by_value(photons * (1.0 / photons_at_white) + read, 0.0, 1.0)


def blind_degradation(vis_lr, seed, params=None):
    """`blind`: one condition drawn for the whole of `vis_lr` (one example), see the docstring.

    Returns:
        (degraded, condition, strength): the image, the index of the drawn condition in
        `BLIND_CONDITIONS` (int32 scalar) and its gain or sigma (0 for clean).
    """
    params = _validated_params("blind", params or {})
    choice_seed, strength_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3))
    u = tf.random.stateless_uniform([], seed=choice_seed)
    edges = tf.constant([params["p_clean"], params["p_clean"] + params["p_low_light"],
                         params["p_clean"] + params["p_low_light"] + params["p_over_exposure"]])
    condition = tf.reduce_sum(tf.cast(u >= edges, tf.int32))
    t = tf.random.stateless_uniform([], seed=strength_seed)
    low = math.log(params["low_light_min_gain"])
    low_light_gain = tf.exp(low + t * (math.log(params["low_light_max_gain"]) - low))
    over_gain = params["over_exposure_min_gain"] + t * (
        params["over_exposure_max_gain"] - params["over_exposure_min_gain"])
    sigma = params["noise_min_sigma"] + t * (params["noise_max_sigma"] - params["noise_min_sigma"])
    low_light = DEGRADATIONS["low_light"]
    branches = [
        lambda: vis_lr,
        lambda: _low_light(vis_lr, noise_seed, low_light_gain, low_light["photons_at_white"],
                           low_light["read_noise"]),
        lambda: tf.clip_by_value(vis_lr * over_gain, 0.0, 1.0),
        lambda: _noise(vis_lr, noise_seed, sigma),
    ]
    degraded = tf.switch_case(condition, branches)
    strength = tf.gather(tf.stack([0.0, low_light_gain, over_gain, sigma]), condition)
    return degraded, condition, strength
