"""The CSPSR functional model (paper Fig. 3), with the ablation rows as config switches."""

import keras

from cspsr_tf.configs import CSPSRConfig
from cspsr_tf.layers.bicubic_upsample import BicubicUpsample
from cspsr_tf.layers.cvm import CrossViewMatching
from cspsr_tf.layers.dmf import DMF
from cspsr_tf.layers.pixel_shuffle import PixelShuffle
from cspsr_tf.layers.residual_block import ResidualBlock

INPUT_NAMES = ("vis_lr", "nir_lr")


def _shallow_features(x, channels, prefix):
    """Two 3x3 convolutions and a residual block (paper Sec. 4.1)."""
    x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"{prefix}_conv1")(x)
    x = keras.layers.Conv2D(channels, 3, padding="same", name=f"{prefix}_conv2")(x)
    return ResidualBlock(channels, name=f"{prefix}_resblock")(x)


def _reconstruct(features, lr_image, out_channels, config, prefix):
    """A conv and a pixel shuffle (paper Sec. 4.1), plus the optional bicubic skip."""
    s = config.scale
    # With the bicubic skip, a zero-initialised last conv makes the untrained model output
    # exactly the bicubic image, so training starts from the baseline instead of below it.
    initializer = "zeros" if config.global_skip else "glorot_uniform"
    x = keras.layers.Conv2D(
        out_channels * s * s, 3, padding="same", kernel_initializer=initializer,
        name=f"{prefix}_recon_conv",
    )(features)
    x = PixelShuffle(s, name=f"{prefix}_pixel_shuffle")(x)
    if config.global_skip:
        x = keras.layers.Add(name=f"{prefix}_global_skip")(
            [x, BicubicUpsample(s, name=f"{prefix}_bicubic")(lr_image)]
        )
    return x


def _output(x, name):
    # float32 outputs whatever the compute dtype, so losses and metrics stay in float32.
    return keras.layers.Activation("linear", dtype="float32", name=name)(x)


def build_cspsr(config=None, name="cspsr"):
    """Builds the CSPSR model (or one of its ablations) from a config.

    Inputs (a dict): `vis_lr` [B, h, w, 3] and `nir_lr` [B, h, w, 1], float32 in [0, 1], any
    h and w. Every variant takes both inputs so that data, training and export code stay
    the same; the VIS-only baseline ignores `nir_lr`.

    Outputs (a dict): `vis_sr` [B, h*s, w*s, 3] always; `nir_sr` [B, h*s, w*s, 1] (the NIR
    super-resolved in the left view) for dual-branch models; `disp_l`, `disp_r`
    [B, h, w, 1] (LR pixels) and `nir_l` [B, h, w, 1] (the right NIR warped into the left view)
    when the CVM is used.

    Args:
        config: a `CSPSRConfig` (default: the paper preset at x4).
        name: the model name.
    """
    config = config or CSPSRConfig()
    if not isinstance(config, CSPSRConfig):
        raise TypeError(f"config must be a CSPSRConfig. Received: {type(config).__name__}")
    c = config.channels
    vis_lr = keras.Input(shape=(None, None, 3), name="vis_lr")
    nir_lr = keras.Input(shape=(None, None, 1), name="nir_lr")
    outputs = {}

    nir = nir_lr
    if config.use_cvm:
        matched = CrossViewMatching(
            base_channels=config.cvm_base_channels,
            depth=config.cvm_depth,
            max_disparity=config.max_disparity,
            initial_disparity=config.initial_disparity,
            name="cvm",
        )((vis_lr, nir_lr))
        nir = matched["nir_l"]
        outputs["disp_l"] = _output(matched["disp_l"], "disp_l")
        outputs["disp_r"] = _output(matched["disp_r"], "disp_r")
        outputs["nir_l"] = _output(nir, "nir_l")

    if config.architecture == "single":
        x = vis_lr
        if config.single_branch_input == "vis_nir":
            x = keras.layers.Concatenate(name="vis_nir_concat")([vis_lr, nir])
        f0 = _shallow_features(x, c, "vis")
        f = f0
        for t in range(config.num_modules):
            f = ResidualBlock(c, name=f"vis_block{t + 1}")(f)
        outputs["vis_sr"] = _output(_reconstruct(f, vis_lr, 3, config, "vis"), "vis_sr")
    else:
        f_vis = _shallow_features(vis_lr, c, "vis")
        f_nir = _shallow_features(nir, c, "nir")
        for t in range(config.num_modules):
            f_vis, f_nir = DMF(
                c,
                kernel_size=config.kernel_size,
                use_dynamic_conv=config.use_dynamic_conv,
                use_csft=config.use_csft,
                residual=config.dmf_residual,
                dynamic_conv_implementation=config.dynamic_conv_implementation,
                kernel_normalization=config.kernel_normalization,
                name=f"dmf{t + 1}",
            )((f_vis, f_nir))
        outputs["vis_sr"] = _output(_reconstruct(f_vis, vis_lr, 3, config, "vis"), "vis_sr")
        outputs["nir_sr"] = _output(_reconstruct(f_nir, nir, 1, config, "nir"), "nir_sr")

    return keras.Model(inputs={"vis_lr": vis_lr, "nir_lr": nir_lr}, outputs=outputs, name=name)
