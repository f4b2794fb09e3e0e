"""Parameters and FLOPs of a CSPSR configuration, as one line of JSON.

    python -m cspsr_tf.model.model_info --preset paper --scale 4 --lr_size 107x145

FLOPs are counted by TensorFlow's own profiler on the frozen inference graph for one input
of that LR size: a multiply-add counts as two FLOPs (`gflops`), and `gmacs` is half of it.
Element-wise ops that the profiler knows (adds, multiplies, sigmoids, ...) are included;
gathers, pads and resizes are not. `sr_*` figures leave out the cross-view matching (CVM)
network: the authors' code warps the NIR offline, so their Table 1 most likely counts only
the SR network.
"""

import json
import logging

from cspsr_tf.util.cli import quiet_tensorflow, run_main

quiet_tensorflow()

from absl import app, flags  # noqa: E402

PAPER_TABLE1 = {"params_m": 1.298, "gflops": 51.059}

FLAGS = flags.FLAGS


def _define_flags():
    # Defined only when run as a program, so importing count_flops defines no flags.
    flags.DEFINE_string("preset", "paper", "Config preset: paper, small or tiny.")
    flags.DEFINE_string("ablation", "full", "Ablation row of Tables 3-4 (see cspsr_tf.model.configs.ABLATIONS).")
    flags.DEFINE_integer("scale", 4, "SR factor (2, 3, 4 or 8).")
    flags.DEFINE_string("lr_size", "107x145", "LR input size as HEIGHTxWIDTH for the FLOP count.")


def parse_size(text):
    """'107x145' -> (107, 145); raises ValueError naming the bad value."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like HEIGHTxWIDTH, e.g. 107x145. Received: {text!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive. Received: {text!r}")
    return height, width


def count_parameters(model):
    """(all parameters, parameters outside the CVM) of a built model."""
    total = model.count_params()
    cvm = sum(layer.count_params() for layer in model.layers if layer.name == "cvm")
    return total, total - cvm


def count_flops(model, lr_size, batch=1):
    """FLOPs (multiply-add = 2) of one inference at `lr_size`, by tf.profiler.

    The profiler does not see inside XLA-compiled functions: count a model built with
    `dynamic_conv_implementation="shift"` (same arithmetic as `fused`), as `model_info` does.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    height, width = lr_size

    @tf.function(autograph=False)
    def forward(vis_lr, nir_lr):
        return model({"vis_lr": vis_lr, "nir_lr": nir_lr}, training=False)

    concrete = forward.get_concrete_function(
        tf.TensorSpec([batch, height, width, 3], tf.float32),
        tf.TensorSpec([batch, height, width, 1], tf.float32),
    )
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    # The v1 profiler logs deprecation warnings that say nothing to a user of this tool.
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        return tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops
    finally:
        tf_logger.setLevel(level)


def model_info(preset="paper", ablation="full", scale=4, lr_size=(107, 145)):
    """A dict with params, sr_params, gflops, sr_gflops and the paper's Table 1 figures."""
    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config

    # `shift` ops: the same arithmetic as the default `fused`, visible to the profiler.
    config = get_config(preset, ablation, scale=scale, dynamic_conv_implementation="shift")
    model = build_cspsr(config)
    params, sr_params = count_parameters(model)
    flops = count_flops(model, lr_size)
    if config.use_cvm:
        sr_flops = count_flops(build_cspsr(config.replace(use_cvm=False)), lr_size)
    else:
        sr_flops = flops
    return {
        "preset": preset,
        "ablation": ablation,
        "scale": scale,
        "lr_size": list(lr_size),
        "params": params,
        "sr_params": sr_params,
        "cvm_params": params - sr_params,
        "gflops": round(flops / 1e9, 3),
        "gmacs": round(flops / 2e9, 3),
        "sr_gflops": round(sr_flops / 1e9, 3),
        "flop_convention": "multiply-add = 2 FLOPs (tf.profiler float_operation)",
        "paper_table1": PAPER_TABLE1,
    }


def main(argv):
    del argv
    try:
        info = model_info(FLAGS.preset, FLAGS.ablation, FLAGS.scale, parse_size(FLAGS.lr_size))
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    print(json.dumps(info))


if __name__ == "__main__":
    _define_flags()
    run_main(main, "model_info")
