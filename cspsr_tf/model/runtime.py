"""What a command line runs: a model file loaded, then set to a rig (geometry), a precision and
the ops of its DMF modules, in that order (`load_for_running`). predict, evaluate.py and both
exporters go through here, so they accept the same models and fail with the same messages.

Nothing here changes weights: each step rebuilds the network around the same float32
variables (`build.rebuild`), or returns the model unchanged when nothing changes.
"""

from absl import logging

from cspsr_tf.model.build import rebuild, with_geometry
from cspsr_tf.model.model_io import SavedModelAdapter, load_model
from cspsr_tf.model.precision import DEFAULT_PRECISION, check_precision, model_precision
from cspsr_tf.model.run_options import (
    DEFAULT_OPS,
    OPS,
    RunSetupError,
    check_nir_side,
    check_run_options,
)


def select_ops(model, config, ops=None):
    """`(model, config)` with the DMF's element-wise parts run as `ops` (None: DEFAULT_OPS).

    `fused` XLA-compiles the dynamic convolution and CSFT's gates (fastest on CPU and GPU);
    `shift` runs them as plain TensorFlow ops (for runtimes without XLA, e.g. a TensorFlow
    Serving built without it); `patches` is the extract_patches reference. A model built with
    other ops is rebuilt with the same weights and precision.

    Raises:
        ValueError: an unknown `ops`; `ops` given for an exported SavedModel (its ops are
            baked into its graph) or for a Keras model without its config.
    """
    if ops is not None and ops not in OPS:
        raise ValueError(f"ops must be one of {', '.join(OPS)}. Received: {ops!r}")
    if isinstance(model, SavedModelAdapter) or config is None:
        if ops is not None:
            what = "an exported SavedModel's ops are baked into its graph: export it again with --ops"
            if not isinstance(model, SavedModelAdapter):
                what = "this model has no CSPSR config to rebuild it from (a .keras file needs its .config.json)"
            raise ValueError(f"cannot run {getattr(model, 'name', 'the model')} with ops={ops}: {what}")
        return model, config
    ops = ops or DEFAULT_OPS
    if config.architecture != "dual" or config.dynamic_conv_implementation == ops:
        return model, config
    new_config = config.replace(dynamic_conv_implementation=ops)
    return rebuild(model, new_config), new_config


def with_precision(model, config, precision):
    """`model`'s weights in a model of the same config that computes in `precision`.

    The new model is built with `model.build_cspsr(config, precision=...)` (the policy is given
    to each layer; Keras's global policy is left as it is) and gets `model`'s weights, which
    stay float32 variables. The float32 islands are listed in this module's docstring.

    Args:
        model: a CSPSR Keras model (any precision), or an exported SavedModel's adapter.
        config: the model's `CSPSRConfig`.
        precision: one of PRECISIONS.

    Returns:
        A Keras model with the name of `model`; `model` itself when it already computes in
        `precision` (an adapter only then).

    Raises:
        ValueError: an unknown precision; a SavedModel exported in another precision (its
            precision is baked into its graph: export again with `--precision`); a Keras
            model without its config.
    """
    check_precision(precision)
    current = model_precision(model)
    if current == precision:
        return model
    if isinstance(model, SavedModelAdapter):
        raise ValueError(
            f"the SavedModel {model.name} was exported in {current} and its precision is baked "
            f"into the exported graph, so it cannot run in {precision}; export it again with "
            f"export/export_savedmodel.py --precision={precision}"
        )
    if config is None:
        raise ValueError(
            f"running {model.name} in {precision} rebuilds it from its CSPSR config, which "
            "this model lacks (a .keras file needs its .config.json beside it)"
        )
    return rebuild(model, config, precision)


def select_precision(model, config, precision=None):
    """The model a command line runs for `--precision` (None: not given).

    None means DEFAULT_PRECISION for a Keras model with its config; an exported SavedModel
    and a Keras model without config are then run as they are (a SavedModel in the
    precision it was exported in). A given precision goes through `with_precision` (and its
    ValueErrors).
    """
    if precision == "auto":
        if isinstance(model, SavedModelAdapter) or config is None:
            return model  # its precision is baked in / it cannot be rebuilt
        precision, why = auto_precision()
        logging.info("--precision=auto: %s (%s)", precision, why)
    if precision is None:
        if config is None or model_precision(model) == DEFAULT_PRECISION:
            return model
        if isinstance(model, SavedModelAdapter):
            return model
        precision = DEFAULT_PRECISION
    return with_precision(model, config, precision)


def auto_precision(cpu_flags=None, gpu_capabilities=None):
    """(precision, reason) for `--precision=auto`: bfloat16 where the hardware computes it
    natively (a GPU of compute capability >= 8.0, or a CPU with AVX512_BF16 or AMX), else
    float32 (emulated bfloat16 is slower than float32).

    Args (for tests; read from the machine when None): cpu_flags, the set of /proc/cpuinfo
    flags; gpu_capabilities, a list of (major, minor) of the visible GPUs.
    """
    if gpu_capabilities is None:
        gpu_capabilities = _gpu_capabilities()
    if gpu_capabilities:
        if all(major >= 8 for major, _ in gpu_capabilities):
            return "bfloat16", "GPU of compute capability >= 8.0"
        return "float32", "GPU without native bfloat16"
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    native = sorted(cpu_flags & {"avx512_bf16", "amx_bf16"})
    if native:
        return "bfloat16", f"CPU with {', '.join(native)}"
    return "float32", "CPU without AVX512_BF16 or AMX"


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _gpu_capabilities():
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(capability) if capability else (0, 0))
    return capabilities


def load_for_running(model_path, geometry=None, precision=None, ops=None, keep_ops=False):
    """load -> geometry -> precision -> ops: `(model, config)` as a command line runs it.

    Args:
        model_path: a preset name, `.keras` file, training directory or SavedModel export.
        geometry: None (the model's own), `stereo` or `aligned` (`build.with_geometry`).
        precision: None (float32; an exported SavedModel: its own) or one of PRECISIONS.
        ops: None (DEFAULT_OPS; a SavedModel: its own) or one of OPS.
        keep_ops: leave the ops the model was built with (the LiteRT converter picks its own).

    Raises:
        What `model_io.load_model` raises (FileNotFoundError, ModelLoadError) for the file,
        and RunSetupError naming the flag for a geometry, precision or ops it cannot take.
    """
    check_run_options(precision, ops)
    model, config = load_model(model_path)
    if geometry is not None:
        model, config = _with_geometry(model, config, geometry, model_path)
    try:
        model = select_precision(model, config, precision)
    except ValueError as error:
        raise RunSetupError(f"--precision={precision}: {error}") from None
    if not keep_ops:
        try:
            model, config = select_ops(model, config, ops)
        except ValueError as error:
            raise RunSetupError(f"--ops={ops}: {error}") from None
    return model, config


def _with_geometry(model, config, geometry, model_path):
    if config is None:
        raise RunSetupError(
            f"--geometry: {model_path} carries no CSPSR config, so its rig cannot be changed"
        )
    if isinstance(model, SavedModelAdapter):
        # Its config comes along, but its rig is baked into the exported graph.
        if config.use_cvm and config.geometry != geometry:
            raise RunSetupError(
                f"--geometry={geometry}: {model_path} is a SavedModel exported for "
                f"{config.geometry} pairs, and its rig is baked into its graph (it cannot be "
                f"rebuilt); export it again with export/export_savedmodel.py --geometry={geometry}"
            )
        return model, config
    return with_geometry(model, config, geometry)


def model_nir_side(model):
    """The rig a loaded model takes as it is: `left` for a SavedModel exported with
    `--nir_side=left` (the mirroring is baked into its graph), else `right`."""
    return getattr(model, "nir_side", None) or "right"


def needs_mirroring(model, nir_side=None):
    """Whether a run must mirror both views (and its outputs back) to serve a rig whose NIR
    camera is on `nir_side` (None: the model's own side, `model_nir_side`).

    Raises:
        RunSetupError: for a side that is not one of NIR_SIDES.
    """
    if nir_side is not None:
        check_nir_side(nir_side, as_flag=True)
    return (nir_side or model_nir_side(model)) != model_nir_side(model)
