"""The CSPSR functional model (paper Fig. 3), with the ablation rows as config switches.

Every layer gets its dtype policy when it is built: the chosen precision's policy for the
network body, float32 for the float32 islands (`precision.py` lists them and says why).
"""

import keras

from cspsr_tf.model.configs import CSPSRConfig
from cspsr_tf.model.layers.bicubic_upsample import BicubicUpsample
from cspsr_tf.model.layers.cvm import CrossViewMatching
from cspsr_tf.model.layers.dmf import DMF
from cspsr_tf.model.layers.exposure import (
    ExposureConditioning,
    ExposureGain,
    FeatureModulation,
    FrameStatistics,
    statistics_size,
)
from cspsr_tf.model.layers.guided_filter import NIRGuidedFilter
from cspsr_tf.model.layers.pixel_shuffle import PixelShuffle
from cspsr_tf.model.layers.residual_block import ResidualBlock
from cspsr_tf.model.layers.skip_gain import SkipGain
from cspsr_tf.model.precision import check_precision, global_precision, model_precision, policy_name

INPUT_NAMES = ("vis_lr", "nir_lr")


# The policy of the float32 islands (bicubic skips, outputs; the CVM's are inside it).
FLOAT32 = "float32"


class _Layers:
    """Creates each named layer once, so that two graphs can share every weight.

    `policy` is the Keras dtype policy of the network body (the chosen precision).
    """

    def __init__(self, precision="float32"):
        self._made = {}
        self.policy = policy_name(precision)

    def __call__(self, name, make):
        if name not in self._made:
            self._made[name] = make(name)
        return self._made[name]


def _shallow_features(layers, x, channels, prefix):
    """Two 3x3 convolutions and a residual block (paper Sec. 4.1)."""
    policy = layers.policy
    x = layers(f"{prefix}_conv1", lambda n: keras.layers.Conv2D(
        channels, 3, padding="same", activation="relu", name=n, dtype=policy))(x)
    x = layers(f"{prefix}_conv2", lambda n: keras.layers.Conv2D(
        channels, 3, padding="same", name=n, dtype=policy))(x)
    return layers(f"{prefix}_resblock", lambda n: ResidualBlock(channels, name=n, dtype=policy))(x)


def _reconstruct(layers, features, lr_image, out_channels, config, prefix, skip_gain=False):
    """A conv and a pixel shuffle (paper Sec. 4.1), plus the optional bicubic skip of
    `lr_image` (times a learned gain per channel with `skip_gain`).

    The bicubic image and its sum with the residual are float32 islands: in bfloat16 the
    image itself would be rounded to 8 mantissa bits (steps of 1/256 above 0.5), while the
    residual is small and loses little.
    """
    s = config.scale
    policy = layers.policy
    # With the bicubic skip, a zero-initialised last conv makes the untrained model output
    # exactly the bicubic image, so training starts from the baseline instead of below it.
    initializer = "zeros" if config.global_skip else "glorot_uniform"
    x = layers(f"{prefix}_recon_conv", lambda n: keras.layers.Conv2D(
        out_channels * s * s, 3, padding="same", kernel_initializer=initializer, name=n,
        dtype=policy))(features)
    x = layers(f"{prefix}_pixel_shuffle", lambda n: PixelShuffle(s, name=n, dtype=policy))(x)
    if config.global_skip:
        bicubic = layers(f"{prefix}_bicubic", lambda n: BicubicUpsample(s, name=n, dtype=FLOAT32))(
            lr_image
        )
        if skip_gain:
            bicubic = layers(f"{prefix}_skip_gain", lambda n: SkipGain(name=n, dtype=FLOAT32))(bicubic)
        x = layers(f"{prefix}_global_skip", lambda n: keras.layers.Add(name=n, dtype=FLOAT32))(
            [x, bicubic]
        )
    return x


def _output(layers, x, name):
    # float32 outputs whatever the compute dtype, so losses and metrics stay in float32.
    return layers(name, lambda n: keras.layers.Activation("linear", dtype=FLOAT32, name=n))(x)


def _vis_block(layers, channels, t, x):
    """Residual block t of the VIS-only body. The zero-conv fusion's VIS path uses the same
    block under the same name, so that the VIS-only model's weights load into it by name."""
    return layers(f"vis_block{t}", lambda n: ResidualBlock(channels, name=n, dtype=layers.policy))(x)


def _fusion_module(layers, config, t, f_vis, f_nir):
    """Module t of the dual branch: the paper's DMF, or (`fusion="zero_conv"`) a VIS residual
    block beside the DMF, whose VIS output joins through a zero-initialised 1x1 conv."""
    policy = layers.policy
    fused_vis, f_nir = layers(f"dmf{t}", lambda n: DMF(
        config.channels,
        kernel_size=config.kernel_size,
        use_dynamic_conv=config.use_dynamic_conv,
        use_csft=config.use_csft,
        residual=config.dmf_residual,
        dynamic_conv_implementation=config.dynamic_conv_implementation,
        kernel_normalization=config.kernel_normalization,
        name=n,
        dtype=policy,
    ))((f_vis, f_nir))
    if config.fusion == "dmf":
        return fused_vis, f_nir
    # With the zero conv at zero, the VIS path computes exactly what the VIS-only model does.
    f_vis = _vis_block(layers, config.channels, t, f_vis)
    injected = layers(f"nir_zero_conv{t}", lambda n: keras.layers.Conv2D(
        config.channels, 1, kernel_initializer="zeros", name=n, dtype=policy))(fused_vis)
    f_vis = layers(f"nir_inject{t}", lambda n: keras.layers.Add(name=n, dtype=policy))([f_vis, injected])
    return f_vis, f_nir


def _exposure(layers, config, vis_lr, nir_lr, frame_stats):
    """`exposure_conditioning`: the LR VIS at the exposure the frame statistics ask for, and
    the FiLM parameters of the VIS features. `frame_stats` None: computed from the inputs
    (the served model); else the training twin's input (the statistics of the whole frame
    the patch was cut from)."""
    if frame_stats is None:
        use_nir = config.uses_nir
        frame_stats = layers("frame_statistics", lambda n: FrameStatistics(
            use_nir=use_nir, name=n, dtype=FLOAT32))((vis_lr, nir_lr) if use_nir else vis_lr)
    log_gain, film = layers("exposure_conditioning", lambda n: ExposureConditioning(
        config.channels, name=n, dtype=FLOAT32))(frame_stats)
    vis_image = layers("exposure_gain", lambda n: ExposureGain(name=n, dtype=FLOAT32))((vis_lr, log_gain))
    return vis_image, film


def _modulate(layers, features, film):
    if film is None:
        return features
    return layers("vis_modulation", lambda n: FeatureModulation(name=n, dtype=layers.policy))((features, film))


def _wire(layers, config, vis_lr, nir_lr, stereo=None, frame_stats=None):
    """The functional graph from the inputs to the output dict."""
    c = config.channels
    policy = layers.policy
    outputs = {}
    # What the VIS branch and its skip read: the LR VIS, or with exposure conditioning the
    # LR VIS at the corrected exposure (the CVM always matches the input as it is).
    vis_image, film = vis_lr, None
    if config.exposure_conditioning:
        vis_image, film = _exposure(layers, config, vis_lr, nir_lr, frame_stats)
    nir = nir_lr
    if config.use_cvm:
        # The CVM's convolutions run in the chosen precision; its cost volumes, disparity
        # heads, disparities and warp are float32 inside the layer (see precision.py).
        cvm = layers("cvm", lambda n: CrossViewMatching(
            base_channels=config.cvm_base_channels,
            depth=config.cvm_depth,
            max_disparity=config.max_disparity,
            geometry=config.geometry,
            normalization=config.cvm_normalization,
            name=n,
            dtype=policy,
        ))
        matched = cvm((vis_lr, nir_lr) if stereo is None else (vis_lr, nir_lr, stereo))
        nir = matched["nir_l"]
        outputs["disp_l"] = _output(layers, matched["disp_l"], "disp_l")
        outputs["disp_r"] = _output(layers, matched["disp_r"], "disp_r")
        outputs["nir_l"] = _output(layers, nir, "nir_l")

    if config.architecture == "single":
        x = vis_image
        if config.single_branch_input == "vis_nir":
            x = layers("vis_nir_concat", lambda n: keras.layers.Concatenate(name=n, dtype=policy))(
                [vis_image, nir]
            )
        f = _modulate(layers, _shallow_features(layers, x, c, "vis"), film)
        for t in range(config.num_modules):
            f = _vis_block(layers, c, t + 1, f)
        outputs["vis_sr"] = _output(layers, _reconstruct(
            layers, f, vis_image, 3, config, "vis", skip_gain=config.skip_gain), "vis_sr")
    else:
        vis_input = vis_skip = vis_image
        radius = config.nir_guided_filter_radius
        if radius:
            # A float32 island (window variances cancel in low precision).
            filtered = layers(f"nir_guided_filter_r{radius}", lambda n: NIRGuidedFilter(
                radius=radius, name=n, dtype=FLOAT32))((vis_image, nir))
            vis_input = layers("vis_nir_concat", lambda n: keras.layers.Concatenate(
                name=n, dtype=policy))([vis_image, filtered])
            if config.skip_source == "guided_filter":
                vis_skip = filtered
        f_vis = _modulate(layers, _shallow_features(layers, vis_input, c, "vis"), film)
        f_nir = _shallow_features(layers, nir, c, "nir")
        for t in range(config.num_modules):
            f_vis, f_nir = _fusion_module(layers, config, t + 1, f_vis, f_nir)
        outputs["vis_sr"] = _output(layers, _reconstruct(
            layers, f_vis, vis_skip, 3, config, "vis", skip_gain=config.skip_gain), "vis_sr")
        outputs["nir_sr"] = _output(layers, _reconstruct(layers, f_nir, nir, 1, config, "nir"), "nir_sr")
    return outputs


def _check_config(config):
    config = config or CSPSRConfig()
    if not isinstance(config, CSPSRConfig):
        raise TypeError(f"config must be a CSPSRConfig. Received: {type(config).__name__}")
    return config


def _check_precision(precision):
    """`precision`, or the precision of Keras's global policy when None."""
    return global_precision() if precision is None else check_precision(precision)


def build_cspsr(config=None, name="cspsr", precision=None):
    """Builds the CSPSR model (or one of its ablations) from a config.

    Inputs (a dict): `vis_lr` [B, h, w, 3] and `nir_lr` [B, h, w, 1], float32 in [0, 1], any
    h and w. Every variant takes both inputs so that data, training and export code stay
    the same; the VIS-only baseline ignores `nir_lr`.

    Outputs (a dict): `vis_sr` [B, h*s, w*s, 3] always; `nir_sr` [B, h*s, w*s, 1] (the NIR
    super-resolved in the left view) for dual-branch models; `disp_l`, `disp_r`
    [B, h, w, 1] (LR pixels) and `nir_l` [B, h, w, 1] (the right NIR warped into the left view)
    when the CVM is used. With `config.geometry == "aligned"` the disparities are zero and
    `nir_l` is `nir_lr`. All outputs are float32 whatever the precision.

    Args:
        config: a `CSPSRConfig` (default: the paper preset at x4).
        name: the model name.
        precision: `float32`, `bfloat16` or `float16` (`precision.PRECISIONS`): the compute
            dtype of the network body (variables stay float32; the float32 islands listed in
            `precision.py` stay float32). None (default): the precision of Keras's global
            dtype policy. Given explicitly, the global policy is neither read nor changed.
    """
    config = _check_config(config)
    precision = _check_precision(precision)
    vis_lr = keras.Input(shape=(None, None, 3), name="vis_lr")
    nir_lr = keras.Input(shape=(None, None, 1), name="nir_lr")
    outputs = _wire(_Layers(precision), config, vis_lr, nir_lr)
    return keras.Model(inputs={"vis_lr": vis_lr, "nir_lr": nir_lr}, outputs=outputs, name=name)


def build_cspsr_with_training_twin(config=None, name="cspsr", precision=None):
    """The model and a twin sharing all its layers that takes a per-example rig flag.

    Training batches may mix stereo pairs and registered pairs; the registered ones must go
    through with zero disparity. The twin has a third input `stereo` [B, 1] (1.0: stereo
    pair, 0.0: registered pair) that zeroes the CVM disparities of the registered examples.
    Both models hold the same variables, so training the twin trains the model that is saved,
    exported and served (which keeps the two plain inputs). Models without a CVM have no use
    for the flag: the twin then takes and ignores it. With `exposure_conditioning` the twin
    also takes `frame_stats` [B, K], the statistics of the whole frame each training patch
    was cut from (`layers/exposure.frame_statistics`), where the model computes them from its
    input. `precision` as in `build_cspsr`.

    Returns:
        (model, twin).
    """
    config = _check_config(config)
    layers = _Layers(_check_precision(precision))
    vis_lr = keras.Input(shape=(None, None, 3), name="vis_lr")
    nir_lr = keras.Input(shape=(None, None, 1), name="nir_lr")
    model = keras.Model(
        inputs={"vis_lr": vis_lr, "nir_lr": nir_lr},
        outputs=_wire(layers, config, vis_lr, nir_lr),
        name=name,
    )
    vis_t = keras.Input(shape=(None, None, 3), name="vis_lr")
    nir_t = keras.Input(shape=(None, None, 1), name="nir_lr")
    stereo = keras.Input(shape=(1,), name="stereo")
    twin_inputs = {"vis_lr": vis_t, "nir_lr": nir_t, "stereo": stereo}
    frame_stats = None
    if config.exposure_conditioning:
        frame_stats = twin_inputs["frame_stats"] = keras.Input(
            shape=(statistics_size(config.uses_nir),), name="frame_stats")
    twin = keras.Model(
        inputs=twin_inputs,
        outputs=_wire(layers, config, vis_t, nir_t, stereo if config.use_cvm else None, frame_stats),
        name=f"{name}_training",
    )
    return model, twin


def with_geometry(model, config, geometry):
    """The same trained weights in a model built for another rig (`stereo` / `aligned`), in the
    precision `model` computes in.

    Returns:
        (model, config) for `geometry`; the inputs unchanged when nothing changes.
    """
    if config.geometry == geometry or not config.use_cvm:
        return model, config.replace(geometry=geometry) if config.geometry != geometry else config
    new_config = config.replace(geometry=geometry)
    return rebuild(model, new_config), new_config


def rebuild(model, config, precision=None):
    """`model`'s weights in a new model built from `config` (same weights, another build: its
    geometry, its DMF ops or, with `precision`, its compute precision; default: `model`'s)."""
    new_model = build_cspsr(config, name=model.name, precision=precision or model_precision(model))
    new_model.set_weights(model.get_weights())
    return new_model
