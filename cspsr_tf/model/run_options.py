"""The choices a command line makes about running a model: its precision and the ops of its
DMF modules. Free of TensorFlow, so that entry points define their flags (and refuse bad
ones) before TensorFlow loads; `runtime` applies the choices.
"""

from cspsr_tf.model.precision import PRECISIONS

# `auto`: bfloat16 where the hardware computes it natively, float32 elsewhere (runtime.py).
RUN_PRECISIONS = (*PRECISIONS, "auto")

# How the DMF modules' element-wise parts run (CSPSRConfig.dynamic_conv_implementation); the
# command lines run every Keras model with DEFAULT_OPS unless told otherwise, whatever the
# model was trained with: the choice changes speed, not the numbers.
OPS = ("fused", "shift", "patches")
DEFAULT_OPS = "fused"


# Where the NIR camera sits beside the VIS camera. Every model is trained for `right`; a `left`
# rig runs mirrored (both views mirrored left-right, the outputs mirrored back).
NIR_SIDES = ("right", "left")
NIR_SIDE_HELP = (
    "Side of the NIR camera, seen from behind the cameras: right (the models' rig) or left "
    "(both views are mirrored left-right, run, and the outputs mirrored back)."
)


class RunSetupError(ValueError):
    """A model cannot run as asked (geometry, precision or ops); the message names the flag."""


def check_nir_side(nir_side, as_flag=False):
    """`nir_side` if it is one of NIR_SIDES; else a ValueError naming it, a RunSetupError
    in the command line's spelling (`--nir_side=...`) with `as_flag`."""
    if nir_side not in NIR_SIDES:
        if as_flag:
            raise RunSetupError(f"--nir_side={nir_side!r} is not one of: {', '.join(NIR_SIDES)}")
        raise ValueError(f"nir_side must be one of {', '.join(NIR_SIDES)}. Received: {nir_side!r}")
    return nir_side


def check_run_options(precision=None, ops=None):
    """Raises RunSetupError for an unknown precision or ops, before any (slow) load."""
    if precision is not None and precision not in RUN_PRECISIONS:
        raise RunSetupError(f"--precision={precision!r} is not one of: {', '.join(RUN_PRECISIONS)}")
    if ops is not None and ops not in OPS:
        raise RunSetupError(f"--ops={ops!r} is not one of: {', '.join(OPS)}")


# What predict and evaluate.py run a Keras model in when --precision is not given. (The
# SavedModel export keeps float32 by default: its precision is baked into the graph and should
# suit the machine that serves it, not the one that exports it.)
DEFAULT_RUN_PRECISION = "auto"


def define_speed_flags(flags_module):
    """--precision and --ops of the command lines that run a model (predict, evaluate.py)."""
    flags_module.DEFINE_string(
        "precision", DEFAULT_RUN_PRECISION,
        f"Compute precision: {', '.join(RUN_PRECISIONS)}. auto (the default): bfloat16 on a CPU "
        "with AVX512_BF16 or AMX or a GPU of compute capability >= 8.0, else float32 (the choice "
        "is logged; within 0.01 dB of float32). An exported SavedModel always runs in the "
        "precision it was exported in.",
    )
    flags_module.DEFINE_enum(
        "ops", None, list(OPS),
        "How the DMF modules' element-wise parts run: fused (XLA-compiled, fastest; the "
        "default), shift (plain TensorFlow ops) or patches (reference). Same numbers.",
    )
