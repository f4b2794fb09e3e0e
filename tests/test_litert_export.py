"""Tests of the LiteRT export (cspsr_tf/export/litert_export.py) and its entry point.

Every model is a `tiny` CSPSR with perturbed weights (tests/model_helpers.py), so the output is
not the bicubic skip. Each conversion costs seconds, so the module converts four models: a
stereo model (CVM) at a fixed size, in process; a model without a CVM through the command line
with a dynamic size; a wider model without a CVM as dynamic-range int8; and a one-layer toy
model for the failure paths. The outputs are run with the LiteRT runtime (ai-edge-litert).
"""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.export import litert_export
from cspsr_tf.model.build import build_cspsr
from cspsr_tf.model.configs import get_config
from cspsr_tf.model.model_io import save_model
from cspsr_tf.util import atomic_files
from tests.cli_runner import run_cli
from tests.model_helpers import perturb_weights, tiny_perturbed_model

# One xdist worker runs this module (make test: --dist loadgroup), so its module fixtures
# (models, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("test_litert_export")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "export", "export_litert.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
ENV.pop("PYTHONPATH", None)
SCALE = 2
LR_SIZE = (22, 30)  # not a multiple of the tiny CVM's stride (4): its padding is converted too
THREADS = 2
TOLERANCE = 1e-4


def _run(args, cwd, timeout=180):
    return run_cli(
        args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


def _random_pair(seed, height, width):
    rng = np.random.default_rng(seed)
    vis = rng.random((1, height, width, 3)).astype(np.float32)
    nir = rng.random((1, height, width, 1)).astype(np.float32)
    return vis, nir


def _registered_pair(seed, height, width):
    """A VIS image and a NIR image equal to its luminance: the cost volume of the CVM has one
    clear best candidate at every pixel (NCC^2 = 1 at zero disparity)."""
    vis, _ = _random_pair(seed, height, width)
    nir = (vis @ np.array([0.299, 0.587, 0.114], np.float32))[..., np.newaxis]
    return vis, nir


def _keras_outputs(model, vis, nir):
    outputs = model({"vis_lr": tf.constant(vis), "nir_lr": tf.constant(nir)}, training=False)
    return {key: value.numpy() for key, value in outputs.items()}


def _max_diff(a, b):
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)))


def _psnr(a, b):
    return float(10.0 * np.log10(1.0 / np.mean(np.square(a - b))))


@pytest.fixture(scope="module")
def stereo(tmp_path_factory):
    """(model, path of its float32 fixed-size .tflite): the tiny preset with a stereo CVM."""
    keras.utils.set_random_seed(0)
    model, _ = tiny_perturbed_model(scale=SCALE)
    path = tmp_path_factory.mktemp("litert") / "stereo.tflite"
    litert_export.export_litert(model, str(path), LR_SIZE)
    return model, str(path)


def test_float32_with_cvm_matches_keras(stereo):
    model, path = stereo
    runner = litert_export.LiteRTRunner(path, num_threads=THREADS)
    assert runner.lr_size == LR_SIZE
    assert runner.output_names == ("disp_l", "disp_r", "vis_sr")
    # Random inputs: the predicted disparities are large (about 17 LR px on average), so the
    # warp gathers far from each pixel.
    vis, nir = _random_pair(0, *LR_SIZE)
    expected = _keras_outputs(model, vis, nir)
    assert float(np.mean(expected["disp_l"])) > 2.0
    actual = runner(vis, nir)
    assert actual["vis_sr"].shape == (1, LR_SIZE[0] * SCALE, LR_SIZE[1] * SCALE, 3)
    assert _max_diff(actual["vis_sr"], expected["vis_sr"]) <= TOLERANCE
    # The disparities take an argmax over candidate disparities: where two candidates tie
    # (occluded border columns of random images) rounding may pick either one, in TensorFlow
    # as in LiteRT (an input change of 1e-6 moves TensorFlow's own disp_l by 0.006 there).
    # They are compared on a pair whose best candidate is unique everywhere.
    vis, nir = _registered_pair(1, *LR_SIZE)
    expected = _keras_outputs(model, vis, nir)
    actual = runner(vis, nir)
    for key in ("vis_sr", "disp_l", "disp_r"):
        assert _max_diff(actual[key], expected[key]) <= TOLERANCE, key
    # Not trivially zero: the true disparity is 0, the random heads' correction is not.
    assert float(np.mean(expected["disp_l"])) > 0.01


def test_stereo_model_converts_with_a_dynamic_size(stereo, tmp_path):
    # The CVM's ops convert with unknown height and width too: one file, two sizes (one odd).
    model, _ = stereo
    path = tmp_path / "stereo_dynamic.tflite"
    litert_export.export_litert(model, str(path), litert_export.DYNAMIC)
    runner = litert_export.LiteRTRunner(str(path), num_threads=THREADS)
    for seed, size in ((2, (20, 28)), (3, (17, 23))):
        vis, nir = _registered_pair(seed, *size)
        expected = _keras_outputs(model, vis, nir)
        actual = runner(vis, nir)
        for key in ("vis_sr", "disp_l", "disp_r"):
            assert _max_diff(actual[key], expected[key]) <= TOLERANCE, (key, size)


def test_converted_file_has_builtin_ops_and_frozen_weights(stereo):
    with open(stereo[1], "rb") as f:
        ops = litert_export.op_counts(f.read())
    assert ops["GATHER"] > 0 and ops["CONV_2D"] > 0 and ops["DEPTH_TO_SPACE"] > 0
    assert not [op for op in ops if "VARIABLE" in op or op == "VAR_HANDLE" or "CUSTOM" in op]


def test_runner_refuses_another_size_and_out_of_range_values(stereo):
    runner = litert_export.LiteRTRunner(stereo[1], num_threads=1)
    vis, nir = _random_pair(2, 16, 18)
    # One line naming both sizes (LiteRT's own error, from XNNPACK, names neither).
    with pytest.raises(ValueError) as info:
        runner(vis, nir)
    assert str(info.value) == (
        "stereo.tflite was converted for a fixed LR size of 22x30; received 16x18 (crop the "
        "input, or export again with --lr_size 16x18 or --lr_size dynamic)"
    )
    vis, nir = _random_pair(2, *LR_SIZE)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        runner(vis * 255.0, nir)
    with pytest.raises(ValueError, match="nir_lr must be"):
        runner(vis, vis)


def test_time_interpreter_reports_the_median(stereo):
    vis, nir = _random_pair(3, *LR_SIZE)
    timing = litert_export.time_interpreter(stereo[1], vis, nir, num_threads=1, runs=3, warmup=1)
    assert len(timing["times_s"]) == 3 and timing["num_threads"] == 1
    assert timing["median_s"] == sorted(timing["times_s"])[1] > 0.0


def _smooth_registered_pair(seed, height, width, sigma=4.0):
    """A low-contrast, smooth VIS image and a NIR equal to its luminance: flat areas, where the
    CVM's local NCC is most sensitive to its window weights."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    vis = np.stack([gaussian_filter(rng.random((height, width)), sigma) for _ in range(3)], -1)
    vis = ((vis - vis.min()) / (vis.max() - vis.min()))[np.newaxis].astype(np.float32)
    nir = (vis @ np.array([0.299, 0.587, 0.114], np.float32))[..., np.newaxis]
    return vis, nir


# float16: the disparity within this many LR px of the Keras model's, vis_sr within 1e-4. The
# converter's own float16 mode (every constant rounded, the CVM's NCC windows included) was
# 0.68 LR px and 4.8e-4 off on the smooth pair below; weights-only float16 measured 0.0006 px
# and 1.1e-5.
FLOAT16_DISPARITY_BOUND = 0.01
FLOAT16_SR_BOUND = 1e-4


def test_float16_keeps_the_disparity_of_the_keras_model(stereo, tmp_path):
    model, float32_path = stereo
    path = tmp_path / "stereo_float16.tflite"
    litert_export.export_litert(model, str(path), LR_SIZE, variant="float16")
    # The learned weights are float16 (about half the file); the rest stays float32.
    assert path.stat().st_size < 0.85 * os.path.getsize(float32_path)
    from ai_edge_litert import schema_py_generated as schema

    subgraph = schema.Model.GetRootAs(bytearray(path.read_bytes()), 0).Subgraphs(0)
    types = [subgraph.Tensors(i).Type() for i in range(subgraph.TensorsLength())]
    assert types.count(schema.TensorType.FLOAT16) >= 20  # the convolutions' filters and biases
    assert litert_export.op_counts(path.read_bytes())["DEQUANTIZE"] == types.count(
        schema.TensorType.FLOAT16)
    runner = litert_export.LiteRTRunner(str(path), num_threads=THREADS)
    for seed in (0, 1):
        vis, nir = _smooth_registered_pair(seed, *LR_SIZE)
        expected = _keras_outputs(model, vis, nir)
        actual = runner(vis, nir)
        for key in ("disp_l", "disp_r"):
            assert _max_diff(actual[key], expected[key]) <= FLOAT16_DISPARITY_BOUND, (key, seed)
        assert 0.0 < _max_diff(actual["vis_sr"], expected["vis_sr"]) <= FLOAT16_SR_BOUND, seed
    assert float(np.mean(expected["disp_l"])) > 0.01  # the heads' correction is not zero


def test_dynamic_int8_is_within_40_db_of_float32(tmp_path):
    # 16 channels: the converter quantises only weights of at least 1024 values.
    config = get_config("tiny", "wo_cvm", scale=SCALE, channels=16)
    model = perturb_weights(build_cspsr(config), seed=1)
    path = tmp_path / "int8.tflite"
    litert_export.export_litert(model, str(path), LR_SIZE, variant="dynamic_int8")
    from ai_edge_litert import schema_py_generated as schema

    flatbuffer = schema.Model.GetRootAs(bytearray(path.read_bytes()), 0)
    subgraph = flatbuffer.Subgraphs(0)
    types = [subgraph.Tensors(i).Type() for i in range(subgraph.TensorsLength())]
    assert types.count(schema.TensorType.INT8) >= 10  # the weights of the 3x3 convolutions
    vis, nir = _random_pair(4, *LR_SIZE)
    expected = _keras_outputs(model, vis, nir)["vis_sr"]
    actual = litert_export.LiteRTRunner(str(path), num_threads=THREADS)(vis, nir)["vis_sr"]
    assert 40.0 <= _psnr(actual, expected) < 200.0  # close, and not bit-identical


# The command line: two subprocess runs (each starts TensorFlow); the other failures through
# export_from_path, the function the script calls.


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """A tiny model without a CVM saved as .keras and converted by the script (dynamic size)."""
    folder = tmp_path_factory.mktemp("cli")
    model, config = tiny_perturbed_model(scale=SCALE, ablation="wo_cvm", seed=3)
    keras_path = str(folder / "model.keras")
    save_model(model, config, keras_path)
    out = folder / "model.tflite"
    args = [sys.executable, SCRIPT, "--model", keras_path, "--out", str(out)]
    args += ["--lr_size", "dynamic"]
    result = _run(args, cwd=folder)
    return model, keras_path, out, result


def test_cli_converts_a_keras_file_with_a_dynamic_size(cli_export):
    model, _, out, result = cli_export
    assert result.returncode == 0, result.stderr
    expected_files = ["model.keras", "model.keras.config.json", "model.tflite"]
    assert sorted(os.listdir(out.parent)) == expected_files  # no temporary file left
    runner = litert_export.LiteRTRunner(str(out), num_threads=THREADS)
    assert runner.lr_size is None and runner.output_names == ("vis_sr",)
    # resize_tensor_input works on a file converted with a dynamic size: two sizes, one odd.
    for seed, size in ((5, (24, 32)), (6, (17, 23))):
        vis, nir = _random_pair(seed, *size)
        expected = _keras_outputs(model, vis, nir)["vis_sr"]
        assert _max_diff(runner(vis, nir)["vis_sr"], expected) <= TOLERANCE


def test_cli_refuses_an_existing_out_without_overwrite(cli_export):
    _, keras_path, out, _ = cli_export
    before = out.read_bytes()
    args = [sys.executable, SCRIPT, "--model", keras_path, "--out", str(out)]
    result = _run(args, cwd=out.parent)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("export_litert: error: ")
    assert "already exists" in lines[0] and str(out) in lines[0]
    assert out.read_bytes() == before


def test_out_under_a_file_is_refused_before_the_model_loads(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    out = blocker / "x.tflite"
    with pytest.raises(litert_export.TargetBlockedError) as info:
        litert_export.export_from_path(str(tmp_path / "missing.keras"), str(out))
    assert str(info.value) == f"{out}: {blocker} is a file, not a folder"
    # The script refuses it before TensorFlow starts.
    result = _run([sys.executable, SCRIPT, "--model", "missing.keras", "--out", str(out)],
                  cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"export_litert: error: --out {out}: {blocker} is a file, not a folder"
    ]
    assert os.listdir(tmp_path) == ["a_file"] and blocker.read_text() == "keep"


def test_missing_model_is_refused_and_nothing_written(tmp_path):
    out = tmp_path / "x.tflite"
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        litert_export.export_from_path(str(tmp_path / "missing.keras"), str(out))
    assert os.listdir(tmp_path) == []


def test_a_savedmodel_is_refused(tmp_path):
    saved_model = tmp_path / "savedmodel"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ValueError, match="SavedModel"):
        litert_export.export_from_path(str(saved_model), str(tmp_path / "x.tflite"))
    assert os.listdir(tmp_path) == ["savedmodel"]


def test_parse_lr_size():
    assert litert_export.parse_lr_size("107x145") == (107, 145)
    assert litert_export.parse_lr_size("dynamic") == litert_export.DYNAMIC
    for bad in ("107", "0x4", "4x-1", "axb"):
        with pytest.raises(ValueError, match="HxW"):
            litert_export.parse_lr_size(bad)


def _toy_model(op=None):
    """A one-layer stand-in with the CSPSR interface (nearest x2 upsampling), quick to convert;
    `op` (a tensor function) is applied first."""

    class Op(keras.layers.Layer):
        def call(self, x):
            return x if op is None else op(x)

    vis = keras.Input((None, None, 3), name="vis_lr")
    nir = keras.Input((None, None, 1), name="nir_lr")
    vis_sr = keras.layers.UpSampling2D(2)(Op()(vis))
    return keras.Model({"vis_lr": vis, "nir_lr": nir}, {"vis_sr": vis_sr})


def test_an_op_without_a_builtin_kernel_fails_in_one_line(tmp_path):
    toy = _toy_model(tf.math.erfinv)
    out = tmp_path / "x.tflite"
    with pytest.raises(litert_export.LiteRTConversionError) as caught:
        litert_export.export_litert(toy, str(out), (4, 4))
    message = str(caught.value)
    assert "\n" not in message and "Erfinv" in message
    assert os.listdir(tmp_path) == []


def test_failure_while_writing_leaves_no_temporary_file(tmp_path, monkeypatch):
    out = tmp_path / "x.tflite"
    out.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_files.os, "replace", broken_replace)
    with pytest.raises(OSError) as info:
        litert_export.export_litert(_toy_model(), str(out), (4, 4), overwrite=True)
    assert info.value.args == ("disk full",)
    assert info.value.filename == str(out)  # atomic_files names the target
    assert os.listdir(tmp_path) == ["x.tflite"] and out.read_bytes() == b"old"


def test_toy_model_round_trip_and_overwrite(tmp_path):
    out = tmp_path / "x.tflite"
    out.write_bytes(b"old")
    litert_export.export_litert(_toy_model(), str(out), (4, 4), overwrite=True)
    vis, nir = _random_pair(7, 4, 4)
    result = litert_export.LiteRTRunner(str(out))(vis, nir)
    np.testing.assert_array_equal(result["vis_sr"], vis.repeat(2, axis=1).repeat(2, axis=2))
    assert os.listdir(tmp_path) == ["x.tflite"]
