"""What a degradation spec may say (names, parameters, ranges) and its parsing, free of
TensorFlow: the command lines check `--degradation` before it loads. `degradations` applies
them (its docstring describes each one).
"""

import math
from collections.abc import Mapping

# Default parameters per name; the keys are also the parameters each name accepts.
DEGRADATIONS = {
    "none": {},
    "noise": {"sigma": 0.02},
    "low_light": {"gain": 0.25, "photons_at_white": 400.0, "read_noise": 0.005},
    "over_exposure": {"gain": 2.0},
    "blind": {"p_clean": 0.35, "p_low_light": 0.3, "p_over_exposure": 0.25,
              "low_light_min_gain": 0.25, "low_light_max_gain": 0.25,
              "over_exposure_min_gain": 2.0, "over_exposure_max_gain": 2.0,
              "noise_min_sigma": 0.005, "noise_max_sigma": 0.02},
}

# Names that draw random numbers and therefore need a stateless seed.
_RANDOM = ("noise", "low_light", "blind")
# The conditions `blind` draws from, in the order of its probability intervals.
BLIND_CONDITIONS = ("clean", "low_light", "over_exposure", "noise")


def resolve_degradation(spec):
    """Turns a config value into a validated `(name, params)` pair.

    Args:
        spec: None (the paper protocol, same as `"none"`), a name from `DEGRADATIONS`, a
            mapping with a `"name"` key and optional parameter overrides, e.g.
            `{"name": "noise", "sigma": 0.05}`, or the same as one string (what the CLIs'
            `--degradation` takes): `"noise:sigma=0.05"`, `"low_light:gain=0.1,read_noise=0"`.

    Returns:
        (name, params) where params holds every parameter of that name, defaults filled in.

    Raises:
        ValueError: for an unknown name, an unknown parameter, an out-of-range value, or a
            string that is not `name` or `name:key=value,...`.
    """
    if spec is None:
        return "none", {}
    if isinstance(spec, str):
        name, overrides = _parse_spec_string(spec)
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"A degradation mapping needs a 'name' key. Received: {dict(spec)}")
        overrides = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
    else:
        raise ValueError(
            f"degradation must be None, a name or a mapping with a 'name'. Received: {spec!r}"
        )
    return name, _validated_params(name, overrides)


def _parse_spec_string(spec):
    """`"name"` or `"name:key=value,key=value"` -> (name, {key: float})."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in rest.split(",") if rest else []:
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key:
            raise ValueError(f"Degradation {spec!r}: expected name:key=value,... ; got {item!r}")
        try:
            overrides[key] = float(value)
        except ValueError:
            raise ValueError(f"Degradation {spec!r}: {key}={value!r} is not a number") from None
    return name.strip(), overrides


def _validated_params(name, overrides):
    """Fills in defaults for `name` and checks names and ranges of the overrides."""
    if name not in DEGRADATIONS:
        raise ValueError(
            f"Unknown degradation {name!r}. Valid names: {sorted(DEGRADATIONS)}"
        )
    defaults = DEGRADATIONS[name]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"Unknown parameters {unknown} for degradation {name!r}. "
            f"Valid parameters: {sorted(defaults)}"
        )
    params = {**defaults, **overrides}
    for key, value in params.items():
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name}: {key} must be a finite number. Received: {key}={value}")
        # Noise levels may be zero; gains and photon counts must be positive to stay physical.
        if (key in ("sigma", "read_noise") or key.startswith("p_") or key.endswith("_sigma")) and value < 0:
            raise ValueError(f"{name}: {key} must be >= 0. Received: {key}={value}")
        if (key in ("gain", "photons_at_white") or key.endswith("_gain")) and value <= 0:
            raise ValueError(f"{name}: {key} must be > 0. Received: {key}={value}")
        params[key] = value
    if name == "blind":
        _check_blind(params)
    return params


def _check_blind(params):
    total = params["p_clean"] + params["p_low_light"] + params["p_over_exposure"]
    if total > 1.0 + 1e-9:
        raise ValueError(f"blind: p_clean + p_low_light + p_over_exposure must be <= 1 (the rest "
                         f"is noise). Received: {total:g}")
    for low, high in (("low_light_min_gain", "low_light_max_gain"),
                      ("over_exposure_min_gain", "over_exposure_max_gain"),
                      ("noise_min_sigma", "noise_max_sigma")):
        if params[low] > params[high]:
            raise ValueError(f"blind: {low} must be <= {high}. Received: {params[low]:g} > {params[high]:g}")
