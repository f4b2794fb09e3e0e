"""The numeric precision a CSPSR model computes in: float32, bfloat16 or float16.

Precision is chosen where a model runs, not when it is trained or saved: the weights are the
same float32 variables in every case (Keras mixed policies keep variables in float32 and cast
them to the compute dtype on use), so one trained model runs in any precision.

    model, config = model_io.load_model("runs/small_x4/best.keras")
    fast = runtime.with_precision(model, config, "bfloat16")   # same weights, bfloat16 compute

`float32` is the Keras policy `float32`; `bfloat16` is `mixed_bfloat16` (fast on CPUs with
AVX512_BF16 / AMX and on TPUs and recent GPUs); `float16` is `mixed_float16` (GPUs; training
in float16 needs loss scaling, which `training.make_optimizer` adds). The policy is given to
each layer when the model is built (`model.build_cspsr(config, precision=...)`), so choosing
a precision never changes Keras's global policy.

What runs in float32 whatever the precision (the float32 islands, set in `build.py`):
- inside the cross-view matching module (`cvm`, set in `layers/cvm.py`): the input images
  (the layer does not autocast them), the NCC cost volumes (local moments: E[x^2] - E[x]^2
  cancels badly in bfloat16), the disparity heads, the disparities and the warp of the NIR.
  A disparity and a sample position need more than bfloat16's 8 mantissa bits: at column 140
  bfloat16 cannot address positions better than 1 px apart. The CVM's convolutions (its
  U-shaped network and learned matching features) run in the chosen precision, so `disp_l`
  differs from float32's by the rounding of those features (hundredths of a pixel), not by
  the rounding of the disparity itself.
- the bicubic skip of each branch and the addition of the network's residual to it
  (`vis_bicubic`, `vis_global_skip`, `nir_...`): the low precision only touches the
  residual (small values), not the image (whose 8-bit levels bfloat16 could not hold
  above 0.5).
- the NIR-guided filter of the `full_gf` row (`nir_guided_filter_r*`, `layers/guided_filter.py`):
  its window variances are differences of close moments, E[g^2] - E[g]^2.
- the learned gain on the VIS skip (`vis_skip_gain`, `layers/skip_gain.py`): it scales the
  image, not the residual.
- exposure conditioning (`frame_statistics`, `exposure_conditioning`, `exposure_gain`,
  `layers/exposure.py`): whole-frame means and shares, a small MLP, and the gain that scales
  the image.
- every output (`vis_sr`, `nir_sr`, `disp_l`, `disp_r`, `nir_l`): a float32 linear
  activation at the end of the graph, so losses, metrics and callers always get float32.
- batch-norm statistics (Keras's BatchNormalization computes them in float32 for float16 /
  bfloat16 inputs, and its moving statistics are float32 variables).
- the losses (`losses.py`, `matching_losses.py` cast their inputs to float32; they receive
  the float32 outputs anyway).
- the softmax of the dynamic kernels (inside `layers/dynamic_conv.py`, which upcasts it
  itself, as the `fused` element-wise parts of the DMF modules do).
- the `fused` element-wise parts of the DMF modules (the dynamic convolution's softmax and
  multiply-adds, CSFT's gates): upcast inside the XLA kernel, whose result is rounded once.
Everything else, i.e. the convolutions of the shallow extractors, of the CVM, of the DMF
modules (dynamic kernel prediction, CSFT's gate logits, the two convolutions per module) and
of the reconstruction, computes in the chosen precision.
"""

PRECISIONS = ("float32", "bfloat16", "float16")
# What the command lines run a Keras model in when --precision is not given.
DEFAULT_PRECISION = "float32"
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# Compute dtype -> precision, for reading a built model or a global policy back.
_BY_COMPUTE_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def check_precision(precision):
    """Returns `precision` if it is one of PRECISIONS; else raises a one-line ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)}. Received: {precision!r}"
        )
    return precision


def policy_name(precision):
    """The Keras dtype policy of a precision: float32, mixed_bfloat16 or mixed_float16."""
    return _POLICIES[check_precision(precision)]


def global_precision():
    """The precision of Keras's global dtype policy (what `build_cspsr` uses by default)."""
    import keras

    compute = keras.config.dtype_policy().compute_dtype
    if compute not in _BY_COMPUTE_DTYPE:
        raise ValueError(
            f"Keras's global dtype policy computes in {compute}; CSPSR runs in one of "
            f"{', '.join(PRECISIONS)}"
        )
    return _BY_COMPUTE_DTYPE[compute]


def model_precision(model):
    """The precision `model` computes in: its lowest layer compute dtype, else float32.

    An exported SavedModel (`model_io.SavedModelAdapter`) reports the precision it was exported
    in. Float32 islands do not count: a bfloat16 CSPSR model also holds float32 layers.
    """
    baked = getattr(model, "precision", None)
    if isinstance(baked, str):
        return baked
    import keras

    # Input layers (and the functional model itself) take Keras's global policy but compute
    # nothing: the inputs are float32 tensors whatever it says.
    dtypes = {
        getattr(layer, "compute_dtype", "float32")
        for layer in getattr(model, "layers", [])
        if not isinstance(layer, keras.layers.InputLayer)
    }
    for precision in ("float16", "bfloat16"):
        if precision in dtypes:
            return precision
    return "float32"
