"""Exporting a CSPSR model to LiteRT (TensorFlow Lite) and running it with the LiteRT runtime.

`convert_model` turns a Keras CSPSR model into a `.tflite` flatbuffer with TensorFlow's
converter (`tf.lite.TFLiteConverter.from_concrete_functions`), builtin ops only (no
SELECT_TF_OPS), so the file runs on the plain LiteRT runtime (`ai-edge-litert`, XNNPACK as
its default CPU delegate). `LiteRTRunner` loads such a file and runs it on numpy inputs;
`time_interpreter` measures its latency.

The flatbuffer has one signature, `serving_default` (`SIGNATURE_KEY`), with the float32
interface of the SavedModel's `serving_float` (cspsr_tf/export/savedmodel_export.py): inputs `vis_lr`
[1, h, w, 3] and `nir_lr` [1, h, w, 1] in [0, 1]; outputs `vis_sr` [1, h*s, w*s, 3]
(not clipped) and, for models with a cross-view matching module, `disp_l` and `disp_r`
[1, h, w, 1] (LR pixels). There is no uint8 signature: callers divide by 255.

Input size. The default is a FIXED size, batch 1 (`lr_size=(h, w)`): the converter folds the
shape arithmetic of the graph into constants, and LiteRT's `resize_tensor_input` does NOT work
on such a file (measured with LiteRT 2.3.0: the XNNPACK delegate fails to reshape, with or
without the CVM). `lr_size=DYNAMIC` converts with [1, None, None, C] inputs, which LiteRT resizes
at run time (`LiteRTRunner` does it for each call): measured exact at several sizes (odd ones
included), with and without a stereo CVM (whose nearest x2 upsampling is written as
depth_to_space so that the converter keeps track of its channels). Fixed is the default
because it lets the converter fold the shape arithmetic; XNNPACK then plans its buffers once.

Variants: `float32`; `float16` (the learned weights of the convolutions stored as float16,
about half the file, computed in float32: `float16_weights`); `dynamic_int8` (dynamic-range
quantisation: int8 weights, convolutions computed with activations quantised on the fly, about
a quarter of the file; the converter leaves weights of fewer than 1024 values in float32).
Measured on the paper preset at x4, LR 107x145, random weights, against the Keras model:
`vis_sr` differs by at most 4e-7 (float32) and 1.8e-3 (dynamic_int8, PSNR 67 dB); the files
are 14.7 and 4.0 MB.

Why `float16` is not the converter's float16 mode (`supported_types=[tf.float16]`): that mode
rounds EVERY float constant to float16, not only the weights, among them the Gaussian window
taps of the CVM's local NCC and cost aggregation (its depthwise convolutions; keeping just
those in float32 removes the error). The windows' means then drift, which in flat,
low-contrast areas moves the best matching candidate: on the shipped cspsr_small_x4 model
(a 32x48 LR crop of a nirvis_synthetic test frame) its `disp_l` was up to 1.41 LR px off the
Keras model's (2.0% of pixels off by more than 1 px), 0.68 px on the tiny preset on a smooth
image (perturbed weights), and `vis_sr` up to 2.5e-4 off. `float16_weights` rounds only what the convolutions
learned; on the same inputs `disp_l` is within 0.002 LR px and `vis_sr` within 5e-5, for a
file of the same size (1.47 against 1.49 MB; float32: 2.76 MB).

The disparities go through an argmax over candidate disparities (the CVM's cost volume): where
two candidates tie, as in occluded border columns, rounding decides, so `disp_l` / `disp_r`
can differ there from TensorFlow's by a fraction of a pixel (as TensorFlow's own do when the
input moves by 1e-6); `vis_sr` is barely affected.

Why the variables are tracked explicitly: given a Keras 3 model as `trackable_obj`, the
converter saves it to a temporary SavedModel in which Keras's variable wrappers, not the
tf.Variables the graph reads, are tracked. Depending on the model the converter then either
falls back to its deprecated path (no signature) or keeps the weights as resource variables
without an initialiser (VAR_HANDLE / READ_VARIABLE ops): LiteRT then reads uninitialised
weights, so the output is NaN, and with a CVM the NaN disparity becomes an out-of-range index
("gather index out of bounds ... (GATHER) failed to invoke"). Tracking the concrete function's
tf.Variables on a tf.Module, as cspsr_tf/export/savedmodel_export.py does for the SavedModel, freezes every
weight into the file; `convert_model` checks that no variable op is left.
"""

import collections
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from cspsr_tf.export.savedmodel_export import (  # noqa: F401  (TargetBlockedError: raised here)
    FLOAT_RANGE_TOLERANCE,
    TargetBlockedError,
    check_parent,
)
from cspsr_tf.model import model_io
from cspsr_tf.model.run_options import check_nir_side
from cspsr_tf.util import atomic_files

VARIANTS = ("float32", "float16", "dynamic_int8")
# `lr_size` value for a dynamic input size (see the module docstring).
DYNAMIC = "dynamic"
SIGNATURE_KEY = "serving_default"
INPUT_NAMES = model_io.INPUT_NAMES
SR_OUTPUT = model_io.SR_OUTPUT
DISPARITY_OUTPUTS = ("disp_l", "disp_r")
INPUT_CHANNELS = {"vis_lr": 3, "nir_lr": 1}
# The default LR size is that of this HR frame (height, width) at the model's scale: the
# 580x428 frame of the paper's Table 1 (LR 107x145 at x4).
DEFAULT_HR_SIZE = (428, 580)
# Ops that mean the file does not run on the plain runtime or lost its weights.
_VARIABLE_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE")
# The input contract of the SavedModel's serving_float (FLOAT_RANGE_TOLERANCE included).
FLOAT_RANGE_MESSAGE = (
    "vis_lr and nir_lr must be float32 images in [0, 1] (uint8 values divided by 255)"
)


class LiteRTConversionError(ValueError):
    """The model does not convert to a LiteRT file with builtin ops; `str(error)` is one line."""


def parse_lr_size(text):
    """'HxW' -> (H, W); 'dynamic' -> DYNAMIC. Raises ValueError on anything else."""
    if text.strip().lower() == DYNAMIC:
        return DYNAMIC
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match.group(1)), int(match.group(2))) < 1:
        raise ValueError(
            f"lr_size must be HxW with positive integers (e.g. 107x145) or {DYNAMIC!r}. "
            f"Received: {text!r}"
        )
    return int(match.group(1)), int(match.group(2))


def default_lr_size(scale):
    """The LR size of a DEFAULT_HR_SIZE frame at `scale` (107x145 at x4, 214x290 at x2)."""
    return DEFAULT_HR_SIZE[0] // scale, DEFAULT_HR_SIZE[1] // scale


def op_counts(tflite_model):
    """{op name: count} over all subgraphs of a .tflite flatbuffer (bytes); custom ops by name."""
    from ai_edge_litert import schema_py_generated as schema

    names = {
        value: name for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }
    model = schema.Model.GetRootAs(bytearray(tflite_model), 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            codes.append(f"CUSTOM:{(code.CustomCode() or b'').decode()}")
        else:
            codes.append(names.get(builtin, f"BUILTIN_{builtin}"))
    counts = collections.Counter()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            counts[codes[subgraph.Operators(o).OpcodeIndex()]] += 1
    return dict(counts)


def _output_keys(model, size):
    """The exported output names of `model` (vis_sr, and disp_l / disp_r when present)."""
    probe = {
        "vis_lr": tf.zeros([1, size, size, 3], tf.float32),
        "nir_lr": tf.zeros([1, size, size, 1], tf.float32),
    }
    outputs = model(probe, training=False)
    if not isinstance(outputs, dict) or SR_OUTPUT not in outputs:
        raise ValueError(f"Expected a CSPSR Keras model returning a dict with {SR_OUTPUT!r}")
    return (SR_OUTPUT,) + tuple(key for key in DISPARITY_OUTPUTS if key in outputs)


def _converter_message(error, log=""):
    """A one-line summary of a converter error (its text and log run to pages of MLIR)."""
    text = f"{error}\n{log}"
    found = []
    for kind in ("TF Select ops", "Custom ops"):
        match = re.search(kind + r": ([^\n]+)", text)
        if match:
            found.append(match.group(1).strip())
    if found:
        return f"ops without a LiteRT builtin kernel: {', '.join(found)}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join((lines[0] if lines else type(error).__name__).split())[:300]


@contextlib.contextmanager
def _captured_stderr():
    """Collects what C++ code writes to file descriptor 2 (the converter's MLIR diagnostics).

    Yields a list that receives the captured text on exit. CSPSR_VERBOSE_TF=1 lets it through.
    """
    captured = []
    if os.environ.get("CSPSR_VERBOSE_TF") == "1":
        yield captured
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            captured.append(log.read().decode("utf-8", "replace"))


def convert_model(model, lr_size, variant="float32", nir_side="right"):
    """Converts a CSPSR Keras model to a LiteRT flatbuffer (bytes).

    Args:
        model: a CSPSR Keras model (dict inputs `vis_lr`, `nir_lr`; dict outputs with `vis_sr`).
            Not a `model_io.SavedModelAdapter`: an exported SavedModel cannot be converted.
        lr_size: (h, w), the fixed LR input size (batch 1), or DYNAMIC (any size, resized
            at run time; see the module docstring for which models convert).
        variant: `float32`, `float16` (float16 weights) or `dynamic_int8` (dynamic-range
            quantisation).
        nir_side: `right` (the model's rig) or `left`: the file mirrors both views left-right,
            runs the model and mirrors its outputs back (a rig with the NIR camera on the left).

    Returns:
        The .tflite flatbuffer, bytes.

    Raises:
        LiteRTConversionError: the model needs ops outside LiteRT's builtins, or the converter
            failed; one line.
        ValueError: a bad argument or not a CSPSR Keras model.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}. Received: variant={variant!r}")
    mirror = check_nir_side(nir_side) == "left"
    if isinstance(model, model_io.SavedModelAdapter):
        raise ValueError(
            "A SavedModel export cannot be converted to LiteRT; convert the .keras file or "
            "training directory it was exported from"
        )
    from cspsr_tf.model.precision import model_precision

    if model_precision(model) != "float32":
        raise ValueError(
            f"Convert the float32 model (runtime.with_precision(model, config, 'float32')), "
            f"not its {model_precision(model)} twin; the variants float16 / dynamic_int8 "
            "choose the LiteRT file's precision"
        )
    dynamic = isinstance(lr_size, str) and lr_size == DYNAMIC
    if not dynamic:
        try:
            lr_size = (int(lr_size[0]), int(lr_size[1]))
        except (TypeError, ValueError, IndexError):
            raise ValueError(
                f"lr_size must be (h, w) or {DYNAMIC!r}. Received: {lr_size!r}"
            ) from None
        if min(lr_size) < 1:
            raise ValueError(f"lr_size must be positive. Received: {lr_size}")
    keys = _output_keys(model, 4)
    h, w = (None, None) if dynamic else lr_size

    @tf.function(
        input_signature=[
            tf.TensorSpec([1, h, w, 3], tf.float32, name="vis_lr"),
            tf.TensorSpec([1, h, w, 1], tf.float32, name="nir_lr"),
        ],
        autograph=False,  # no Python control flow over tensors; converting the model cost seconds
    )
    def serve(vis_lr, nir_lr):
        if mirror:
            vis_lr, nir_lr = tf.reverse(vis_lr, axis=[2]), tf.reverse(nir_lr, axis=[2])
        outputs = model({"vis_lr": vis_lr, "nir_lr": nir_lr}, training=False)
        outputs = {key: tf.cast(outputs[key], tf.float32) for key in keys}
        if mirror:
            outputs = {key: tf.reverse(value, axis=[2]) for key, value in outputs.items()}
        return outputs

    concrete = serve.get_concrete_function()
    # See the module docstring: the tf.Variables the graph reads must be tracked, not the
    # Keras model, or the weights are not frozen into the file.
    holder = tf.Module()
    holder.graph_variables = list({id(v): v for v in concrete.variables}.values())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # float16 is converted as float32, then its learned weights are stored in float16
    # (`float16_weights`; the converter's own float16 mode rounds every constant: see the
    # module docstring).
    if variant == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # The converter prints its diagnostics (pages of MLIR on a failure) from C++ to stderr;
    # they are summarised in the error instead.
    error = None
    with _captured_stderr() as log:
        try:
            tflite_model = converter.convert()
        except Exception as caught:  # ConverterError and friends
            error = caught
    if error is not None:
        hint = " (with a dynamic input size; a fixed lr_size HxW may convert)"
        raise LiteRTConversionError(
            f"LiteRT conversion failed{hint if dynamic else ''}: "
            f"{_converter_message(error, ''.join(log))}"
        ) from None
    if variant == "float16":
        tflite_model = float16_weights(tflite_model)
    _check_converted(tflite_model, keys)
    return tflite_model


# Ops whose constant inputs are learned weights (filters and biases); the float16 variant
# stores those in float16. DEPTHWISE_CONV_2D is not among them: in CSPSR its filters are the
# fixed Gaussian windows of the CVM's local NCC, which must stay float32.
FLOAT16_WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def float16_weights(tflite_model):
    """A float32 flatbuffer (bytes) with its learned weights stored in float16.

    Every float32 constant read only by `FLOAT16_WEIGHT_OPS` (their filters and biases)
    becomes a float16 constant and a DEQUANTIZE op that turns it back into float32 when the
    interpreter prepares the model: the pattern of TensorFlow's float16 quantisation, which
    LiteRT and XNNPACK run in float32. All other constants (the CVM's NCC windows, the
    candidate disparities, the bicubic taps, folded normalisations) and all arithmetic stay
    float32. Returns the new flatbuffer, bytes.
    """
    import collections

    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_model))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [names.get(flatbuffer_utils.get_builtin_code_from_operator_code(c))
             for c in model.operatorCodes]
    dequantize = _operator_code(model, schema, codes, "DEQUANTIZE", version=3)  # v3: float16
    buffer_users = collections.Counter(
        tensor.buffer for subgraph in model.subgraphs for tensor in subgraph.tensors
    )
    for subgraph in model.subgraphs:
        readers = collections.defaultdict(set)  # tensor -> the ops that read it
        produced = set(subgraph.inputs or [])
        for op in subgraph.operators:
            produced.update(op.outputs or [])
            for index in op.inputs or []:
                readers[index].add(codes[op.opcodeIndex])
        dequantize_ops = []
        for index, tensor in enumerate(list(subgraph.tensors)):
            data = model.buffers[tensor.buffer].data
            if (index in produced or not readers[index]
                    or not readers[index] <= set(FLOAT16_WEIGHT_OPS)
                    or tensor.type != schema.TensorType.FLOAT32 or data is None or not len(data)):
                continue
            half = schema.TensorT()
            half.shape = list(tensor.shape or [])
            half.type = schema.TensorType.FLOAT16
            half.name = (tensor.name or b"") + b"/float16"
            stored = schema.BufferT()
            values = np.frombuffer(bytes(data), "<f4").astype("<f2")
            stored.data = np.frombuffer(values.tobytes(), np.uint8)
            model.buffers.append(stored)
            half.buffer = len(model.buffers) - 1
            subgraph.tensors.append(half)
            buffer_users[tensor.buffer] -= 1
            if not buffer_users[tensor.buffer]:  # (buffers may be shared by equal constants)
                model.buffers[tensor.buffer].data = None
            tensor.buffer = 0  # the float32 tensor is now computed: DEQUANTIZE(half)
            op = schema.OperatorT()
            op.opcodeIndex = dequantize
            op.inputs, op.outputs = [len(subgraph.tensors) - 1], [index]
            dequantize_ops.append(op)
        subgraph.operators = dequantize_ops + list(subgraph.operators)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _operator_code(model, schema, codes, name, version):
    """The index of builtin op `name` in the model's operator codes (appended if missing)."""
    if name in codes:
        index = codes.index(name)
        model.operatorCodes[index].version = max(model.operatorCodes[index].version, version)
        return index
    code = schema.OperatorCodeT()
    builtin = getattr(schema.BuiltinOperator, name)
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)  # the int8 field of old readers
    code.version = version
    model.operatorCodes.append(code)
    codes.append(name)
    return len(model.operatorCodes) - 1


def _check_converted(tflite_model, keys):
    """Raises LiteRTConversionError unless the file has frozen weights and the signature."""
    ops = op_counts(tflite_model)
    bad = sorted(op for op in ops if op in _VARIABLE_OPS or op.startswith("CUSTOM"))
    if bad:
        raise LiteRTConversionError(
            f"The converted model holds ops the plain LiteRT runtime cannot run correctly: {bad}"
        )
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=tflite_model).get_signature_list()
    signature = signatures.get(SIGNATURE_KEY)
    if signature is None or sorted(signature["outputs"]) != sorted(keys):
        raise LiteRTConversionError(
            f"The converted model lacks the {SIGNATURE_KEY!r} signature with outputs "
            f"{sorted(keys)}; found {signatures}"
        )


def check_target(out_path, overwrite=False):
    """Raises FileExistsError if `out_path` exists and `overwrite` is False, IsADirectoryError
    if it is a folder, `savedmodel_export.TargetBlockedError` (a NotADirectoryError) if a file
    stands where a folder above it must go."""
    if os.path.lexists(out_path) and not overwrite:
        raise FileExistsError(
            "Export target already exists (use overwrite to replace it): "
            f"{os.path.abspath(out_path)}"
        )
    if os.path.isdir(out_path):
        raise IsADirectoryError(f"Export target is a directory: {os.path.abspath(out_path)}")
    check_parent(out_path)  # TargetBlockedError: a file where a folder above out_path must go


def export_litert(model, out_path, lr_size, variant="float32", overwrite=False, nir_side="right"):
    """Converts `model` (`convert_model`) and writes the flatbuffer to `out_path` atomically.

    The file is written under a temporary name beside `out_path` and renamed into place; on
    any failure nothing is left behind and an existing `out_path` is untouched.

    Returns:
        The absolute path of the written file.

    Raises:
        FileExistsError: `out_path` exists and `overwrite` is False.
        LiteRTConversionError, ValueError: see `convert_model`.
    """
    out_path = os.path.abspath(out_path)
    check_target(out_path, overwrite)
    tflite_model = convert_model(model, lr_size, variant, nir_side)
    check_target(out_path, overwrite)  # it may have appeared during the conversion
    atomic_files.write_bytes(out_path, tflite_model)
    return out_path


def export_from_path(model_path, out_path, lr_size=None, variant="float32", geometry=None,
                     overwrite=False, nir_side="right"):
    """Loads a `.keras` file or training directory (`model_io.load_model`) and exports it.

    Args:
        model_path: a `.keras` file or a training directory. A SavedModel is refused.
        out_path: the .tflite file to write.
        lr_size: (h, w), DYNAMIC, or None for the LR size of a DEFAULT_HR_SIZE frame at the
            model's scale (`default_lr_size`).
        variant: see `convert_model`.
        geometry: None (the model's own), `stereo` or `aligned` (`model.with_geometry`).
        overwrite: replace an existing `out_path`.
        nir_side: `right` (default) or `left` (see `convert_model`).

    Returns:
        (absolute path written, lr_size used, scale).

    Raises:
        FileNotFoundError, FileExistsError, ValueError (ModelLoadError,
        LiteRTConversionError): each with a one-line message naming the problem.
    """
    check_target(out_path, overwrite)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}. Received: variant={variant!r}")
    check_nir_side(nir_side, as_flag=True)
    if os.path.isfile(os.path.join(model_path, "saved_model.pb")):
        raise ValueError(
            f"{model_path} is a SavedModel export, which cannot be converted to LiteRT; give the "
            ".keras file or training directory it was exported from"
        )
    from cspsr_tf.model import runtime

    # float32 always: the variant sets the file's precision, not the Keras model's.
    model, config = runtime.load_for_running(model_path, geometry, "float32", keep_ops=True)
    scale = model_io.infer_scale(model, config)
    if lr_size is None:
        lr_size = default_lr_size(scale)
    path = export_litert(model, out_path, lr_size, variant, overwrite=overwrite, nir_side=nir_side)
    return path, lr_size, scale


class LiteRTRunner:
    """Runs a CSPSR .tflite file (written by `convert_model`) with the LiteRT interpreter.

    Args:
        model_path: the .tflite file.
        num_threads: int or None; threads of the interpreter (XNNPACK, the default CPU
            delegate, uses them). None: LiteRT's default.

    Attributes:
        lr_size: (h, w) of a fixed-size file, None for a dynamic one.
        output_names: the signature's outputs (`vis_sr`, and `disp_l`, `disp_r` with a CVM).

    Call with `vis_lr` [1, h, w, 3] and `nir_lr` [1, h, w, 1] (float32 in [0, 1]; [h, w, C]
    is taken as batch 1); returns {output name: numpy array}.
    """

    def __init__(self, model_path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.model_path = str(model_path)
        self.num_threads = num_threads
        self._interpreter = Interpreter(model_path=self.model_path, num_threads=num_threads)
        signatures = self._interpreter.get_signature_list()
        if SIGNATURE_KEY not in signatures:
            raise ValueError(
                f"{self.model_path} has no {SIGNATURE_KEY!r} signature: not a CSPSR LiteRT export"
            )
        self._runner = self._interpreter.get_signature_runner(SIGNATURE_KEY)
        inputs = self._runner.get_input_details()
        if sorted(inputs) != sorted(INPUT_NAMES):
            raise ValueError(f"{self.model_path} takes {sorted(inputs)}, not {list(INPUT_NAMES)}")
        shape = [int(d) for d in inputs["vis_lr"]["shape_signature"]]
        self.lr_size = None if min(shape[1:3]) < 0 else (shape[1], shape[2])
        self.output_names = tuple(sorted(self._runner.get_output_details()))

    def _checked(self, vis_lr, nir_lr):
        arrays = {}
        for name, value in (("vis_lr", vis_lr), ("nir_lr", nir_lr)):
            value = np.asarray(value, np.float32)
            if value.ndim == 3:
                value = value[np.newaxis]
            if value.ndim != 4 or value.shape[0] != 1 or value.shape[3] != INPUT_CHANNELS[name]:
                raise ValueError(
                    f"{name} must be [1, h, w, {INPUT_CHANNELS[name]}]. "
                    f"Received: {list(value.shape)}"
                )
            arrays[name] = np.ascontiguousarray(value)
        if arrays["vis_lr"].shape[1:3] != arrays["nir_lr"].shape[1:3]:
            raise ValueError("vis_lr and nir_lr must have the same height and width")
        size = arrays["vis_lr"].shape[1:3]
        if min(size) < 1:
            raise ValueError("vis_lr and nir_lr must be at least 1x1 pixels")
        if self.lr_size is not None and tuple(size) != self.lr_size:
            # Checked here: LiteRT cannot resize a fixed-size file, and its own error comes
            # from inside XNNPACK ("failed to reshape runtime") without the sizes.
            raise ValueError(
                f"{os.path.basename(self.model_path)} was converted for a fixed LR size of "
                f"{self.lr_size[0]}x{self.lr_size[1]}; received {size[0]}x{size[1]} (crop the "
                f"input, or export again with --lr_size {size[0]}x{size[1]} or --lr_size dynamic)"
            )
        for value in arrays.values():
            if value.min() < -FLOAT_RANGE_TOLERANCE or value.max() > 1.0 + FLOAT_RANGE_TOLERANCE:
                raise ValueError(FLOAT_RANGE_MESSAGE)
        return arrays

    def __call__(self, vis_lr, nir_lr):
        return self._runner(**self._checked(vis_lr, nir_lr))


def time_interpreter(model_path, vis_lr, nir_lr, num_threads=None, runs=10, warmup=2):
    """Latency of a .tflite file in the LiteRT interpreter: the median of `runs` calls.

    Each timed call sets the inputs, invokes the interpreter and copies the outputs (what a
    caller of `LiteRTRunner` pays); `warmup` untimed calls come first (the first call plans
    the XNNPACK delegate's memory).

    Returns:
        A dict: `median_s`, `min_s`, `times_s` (all timed calls, seconds), `runs`, `warmup`,
        `num_threads`.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(
            f"runs must be >= 1 and warmup >= 0. Received: runs={runs}, warmup={warmup}"
        )
    runner = LiteRTRunner(model_path, num_threads=num_threads)
    inputs = runner._checked(vis_lr, nir_lr)
    for _ in range(warmup):
        runner._runner(**inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner._runner(**inputs)
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "runs": runs,
        "warmup": warmup,
        "num_threads": num_threads,
    }
