"""Tests of the SavedModel export (cspsr_tf/export/savedmodel_export.py) and its entry point.

A single tiny CSPSR export is shared by the module (each export costs seconds); its weights
are perturbed (tests/model_helpers.py), so its output is not the bicubic skip and a network
body lost on the way would show. The tests of the atomic write use a one-layer stand-in model,
whose export is fast and whose exact output (nearest-neighbour upsampling) is known.
"""

import json
import os
import re
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.export import savedmodel_export
from cspsr_tf.model import model_io
from cspsr_tf.model.build import build_cspsr
from cspsr_tf.model.configs import get_config
from cspsr_tf.model.model_io import save_model
from cspsr_tf.ops.resize import bicubic_upscale
from cspsr_tf.util import scratch_dirs
from tests.cli_runner import run_cli
from tests.model_helpers import tiny_perturbed_model

# One xdist worker runs this module (make test: --dist loadgroup), so its module fixtures
# (models, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("test_export")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "export", "export_savedmodel.py")
# The `saved_model_cli` console script runs this module's main(); as `python -m` the run forks
# from the tests' zygote (tests/cli_runner.py) instead of starting TensorFlow again.
SAVED_MODEL_CLI = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
SCALE = 2
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
ENV.pop("PYTHONPATH", None)


def _random_pair(rng, batch, height, width):
    vis = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    nir = rng.integers(0, 256, (batch, height, width, 1), dtype=np.uint8)
    return vis, nir


def _run(args, cwd=None, timeout=120):
    return run_cli(
        args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    model, config = tiny_perturbed_model(scale=SCALE)
    model({"vis_lr": tf.zeros([1, 8, 8, 3]), "nir_lr": tf.zeros([1, 8, 8, 1])})
    return model, config


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    model, config = tiny
    return savedmodel_export.export_savedmodel(model, config, str(tmp_path_factory.mktemp("export") / "cspsr"))


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


@pytest.fixture(scope="module")
def upsampler():
    """A stand-in SR model without a CVM: vis_sr is the nearest-neighbour x2 of vis_lr."""
    vis = keras.Input((None, None, 3), name="vis_lr")
    nir = keras.Input((None, None, 1), name="nir_lr")
    vis_sr = keras.layers.UpSampling2D(SCALE, name="vis_sr")(vis)
    return keras.Model({"vis_lr": vis, "nir_lr": nir}, {"vis_sr": vis_sr})


def _crashing_save(obj, export_dir, *args, **kwargs):
    """Stands in for tf.saved_model.save killed midway: a partial file, then an error."""
    with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
        f.write(b"partial")
    raise RuntimeError("simulated crash during save")


# The export and its reload.


def test_export_writes_saved_model_and_metadata_and_no_temporary_dir(exported, tmp_path):
    parent = os.path.dirname(exported)
    assert os.listdir(parent) == ["cspsr"]
    # Not the private mode of a temporary directory: readable like any new directory.
    (tmp_path / "plain").mkdir()
    assert os.stat(exported).st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777
    assert os.path.isfile(os.path.join(exported, "saved_model.pb"))
    with open(os.path.join(exported, savedmodel_export.METADATA_FILE)) as f:
        metadata = json.load(f)
    assert metadata["scale"] == SCALE
    assert metadata["model_config"]["channels"] == 8
    assert metadata["signatures"]["serving_default"] == ["disp_l", "disp_r", "vis_sr"]


def test_signatures_and_scale(loaded):
    assert set(loaded.signatures) == {"serving_default", "serving_float"}
    assert int(loaded.scale.numpy()) == SCALE


def test_float_signature_equals_in_memory_model(tiny, loaded):
    model, _ = tiny
    rng = np.random.default_rng(1)
    vis, nir = (x.astype(np.float32) / 255.0 for x in _random_pair(rng, 2, 12, 20))
    got = loaded.signatures["serving_float"](vis_lr=tf.constant(vis), nir_lr=tf.constant(nir))
    want = model({"vis_lr": vis, "nir_lr": nir}, training=False)
    assert set(got) == {"vis_sr", "disp_l", "disp_r"}
    assert got["vis_sr"].shape == (2, 24, 40, 3)
    # The network body shapes the output: it is not the bicubic skip alone.
    bicubic = bicubic_upscale(vis[0], SCALE).numpy()
    assert np.abs(got["vis_sr"].numpy()[0] - bicubic).mean() > 0.005
    for key in got:
        assert got[key].dtype == tf.float32
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-5)


def test_uint8_signature_equals_in_memory_model_within_rounding(tiny, loaded):
    model, _ = tiny
    rng = np.random.default_rng(2)
    vis, nir = _random_pair(rng, 2, 10, 14)
    got = loaded.signatures["serving_default"](vis_lr=tf.constant(vis), nir_lr=tf.constant(nir))
    want = model({"vis_lr": vis / np.float32(255), "nir_lr": nir / np.float32(255)}, training=False)
    want_sr = np.clip(np.round(want["vis_sr"].numpy() * 255.0), 0, 255)
    assert got["vis_sr"].dtype == tf.uint8
    assert got["vis_sr"].shape == (2, 20, 28, 3)
    assert np.abs(got["vis_sr"].numpy().astype(np.int32) - want_sr).max() <= 1
    np.testing.assert_allclose(got["disp_l"].numpy(), want["disp_l"].numpy(), rtol=1e-5, atol=1e-5)


def test_odd_size_gives_exactly_scaled_output(loaded):
    vis, nir = _random_pair(np.random.default_rng(3), 1, 37, 53)
    got = loaded.signatures["serving_default"](vis_lr=tf.constant(vis), nir_lr=tf.constant(nir))
    assert got["vis_sr"].shape == (1, 37 * SCALE, 53 * SCALE, 3)
    assert got["disp_l"].shape == (1, 37, 53, 1)
    assert got["disp_r"].shape == (1, 37, 53, 1)


@pytest.mark.parametrize(
    "vis_shape, nir_shape, message",
    [
        ((1, 8, 8, 3), (1, 8, 9, 1), "same height and width"),
        ((1, 8, 8, 3), (1, 7, 8, 1), "same height and width"),
        ((2, 8, 8, 3), (1, 8, 8, 1), "same batch size"),
        # The input signature says 3 / 1 channels, but a signature called from Python (or
        # TF Serving) does not check static shapes: the in-graph check names the problem.
        ((1, 8, 8, 4), (1, 8, 8, 1), "vis_lr must have 3 channels"),
        ((1, 8, 8, 3), (1, 8, 8, 3), "nir_lr must have 1 channel"),
    ],
)
def test_bad_pair_fails_with_a_clear_message(loaded, vis_shape, nir_shape, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["serving_default"](
            vis_lr=tf.zeros(vis_shape, tf.uint8), nir_lr=tf.zeros(nir_shape, tf.uint8)
        )


def test_loads_and_runs_without_this_project_or_keras(exported, tmp_path):
    code = textwrap.dedent(
        f"""
        import json, os, sys
        root = {ROOT!r}
        sys.path = [p for p in sys.path if p and os.path.realpath(p) != os.path.realpath(root)]
        sys.modules["keras"] = None  # any import of Keras now fails
        try:
            import cspsr_tf  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("cspsr_tf is importable")
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({exported!r})
        out = loaded.signatures["serving_default"](
            vis_lr=tf.fill([1, 9, 11, 3], tf.constant(128, tf.uint8)),
            nir_lr=tf.fill([1, 9, 11, 1], tf.constant(64, tf.uint8)),
        )
        print(json.dumps({{k: [v.dtype.name] + v.shape.as_list() for k, v in out.items()}}))
        """
    )
    result = _run([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    shapes = json.loads(result.stdout.strip().splitlines()[-1])
    assert shapes == {
        "vis_sr": ["uint8", 1, 18, 22, 3],
        "disp_l": ["float32", 1, 9, 11, 1],
        "disp_r": ["float32", 1, 9, 11, 1],
    }


def test_saved_model_cli_show_lists_signatures_inputs_and_outputs(exported):
    result = _run([*SAVED_MODEL_CLI, "show", "--dir", exported, "--all"])
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    for signature in ("serving_default", "serving_float"):
        assert f"signature_def['{signature}']" in text
    for name in ("inputs['vis_lr']", "inputs['nir_lr']", "outputs['vis_sr']",
                 "outputs['disp_l']", "outputs['disp_r']", "DT_UINT8", "(-1, -1, -1, 3)"):
        assert name in text


def test_saved_model_cli_run_refuses_uint8_data_given_to_serving_float(exported, tmp_path):
    vis, nir = _random_pair(np.random.default_rng(7), 1, 5, 7)
    np.save(tmp_path / "vis.npy", vis)
    np.save(tmp_path / "nir.npy", nir)
    result = _run(
        [*SAVED_MODEL_CLI, "run", "--dir", exported, "--tag_set", "serve",
         "--signature_def", "serving_float", "--inputs", "vis_lr=vis.npy;nir_lr=nir.npy",
         "--outdir", str(tmp_path / "outputs")],
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "serving_float takes float32 images in [0, 1]" in result.stderr
    assert not (tmp_path / "outputs" / "vis_sr.npy").exists()


def test_saved_model_cli_run_on_npy_files(tiny, exported, tmp_path):
    model, _ = tiny
    vis, nir = _random_pair(np.random.default_rng(4), 1, 5, 7)
    np.save(tmp_path / "vis.npy", vis)
    np.save(tmp_path / "nir.npy", nir)
    outdir = tmp_path / "outputs"
    result = _run(
        [*SAVED_MODEL_CLI, "run", "--dir", exported, "--tag_set", "serve",
         "--signature_def", "serving_default", "--inputs", "vis_lr=vis.npy;nir_lr=nir.npy",
         "--outdir", str(outdir)],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    vis_sr = np.load(outdir / "vis_sr.npy")
    assert vis_sr.shape == (1, 10, 14, 3) and vis_sr.dtype == np.uint8
    assert np.load(outdir / "disp_l.npy").shape == (1, 5, 7, 1)
    # The variables were restored (TF1-style loader), not left at their initial values.
    want = model({"vis_lr": vis / np.float32(255), "nir_lr": nir / np.float32(255)}, training=False)
    want_sr = np.clip(np.round(want["vis_sr"].numpy() * 255.0), 0, 255)
    assert np.abs(vis_sr.astype(np.int32) - want_sr).max() <= 1


# In-graph padding (for models that need a multiple) and the model without a CVM.


def test_replicate_pad_to_multiple_matches_numpy_edge_pad():
    images = np.random.default_rng(5).random((2, 5, 3, 2)).astype(np.float32)
    got = savedmodel_export.replicate_pad_to_multiple(tf.constant(images), 4).numpy()
    want = np.pad(images, [(0, 0), (0, 3), (0, 1), (0, 0)], mode="edge")
    np.testing.assert_array_equal(got, want)


def test_padding_multiple_crops_outputs_back_exactly(upsampler):
    module = savedmodel_export.CSPSRServingModule(upsampler, SCALE, multiple=8)
    vis = np.random.default_rng(6).random((1, 37, 53, 3)).astype(np.float32)
    got = module.serve_float(tf.constant(vis), tf.zeros([1, 37, 53, 1]))
    assert set(got) == {"vis_sr"}  # no CVM, no disparities
    np.testing.assert_array_equal(got["vis_sr"].numpy(), vis.repeat(SCALE, 1).repeat(SCALE, 2))


def test_infer_scale_checks_the_config(upsampler):
    assert model_io.infer_scale(upsampler) == SCALE
    with pytest.raises(ValueError, match="scale=4"):
        model_io.infer_scale(upsampler, get_config("tiny", "full", scale=4))


# serving_float refuses 0-255 data (issue 9, item 11).


@pytest.mark.parametrize("low, high", [(0.0, 255.0), (-2.0, 0.5), (0.0, 1.2)])
def test_float_signature_refuses_values_outside_0_1(loaded, low, high):
    vis = tf.constant(np.linspace(low, high, 8 * 8 * 3, dtype=np.float32).reshape(1, 8, 8, 3))
    for args in ((vis, tf.fill([1, 8, 8, 1], 0.5)), (tf.fill([1, 8, 8, 3], 0.5), vis[..., :1])):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"serving_float takes float32"):
            loaded.signatures["serving_float"](vis_lr=args[0], nir_lr=args[1])


def test_float_signature_tolerates_resampling_overshoot(loaded):
    # Bicubic resampling of a [0, 1] image overshoots a little; that still runs.
    vis = tf.constant(np.linspace(-0.09, 1.09, 8 * 8 * 3, dtype=np.float32).reshape(1, 8, 8, 3))
    got = loaded.signatures["serving_float"](vis_lr=vis, nir_lr=tf.fill([1, 8, 8, 1], 1.05))
    assert got["vis_sr"].shape == (1, 16, 16, 3)


# The atomic write.


def test_crash_during_save_leaves_no_target_and_no_temporary_dir(upsampler, tmp_path, monkeypatch):
    monkeypatch.setattr(tf.saved_model, "save", _crashing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        savedmodel_export.export_savedmodel(upsampler, None, str(tmp_path / "model"))
    assert os.listdir(tmp_path) == []


def test_an_interrupted_exports_temporary_dir_is_removed_by_the_next_export(upsampler, tmp_path):
    """Issue 9: a kill -9 mid-export left `.model.tmp-*` for good; only dead ones go."""
    stale = tmp_path / ".model.tmp-abcd1234"  # left by a killed export of the same target
    (stale / "variables").mkdir(parents=True)
    live = tmp_path / ".model.tmp-live0000"  # an export still running: it holds the lock
    live.mkdir()
    young = tmp_path / ".model.tmp-young000"  # just made, its lock not yet taken
    young.mkdir()
    others = [tmp_path / ".other.tmp-abcd1234", tmp_path / ".model.tmp-abcd1234.keep"]
    for path in others:
        path.mkdir()
    for path in (stale, live, *others):
        os.utime(path, (1, 1))
    live_lock = scratch_dirs._try_lock(str(live))
    try:
        savedmodel_export.export_savedmodel(upsampler, None, str(tmp_path / "model"))
    finally:
        os.close(live_lock)
    names = {live.name, young.name, "model", *(p.name for p in others)}
    assert set(os.listdir(tmp_path)) == names


def test_existing_target_is_kept_without_overwrite(upsampler, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match=re.escape(str(target))):
        savedmodel_export.export_savedmodel(upsampler, None, str(target))
    assert os.listdir(tmp_path) == ["model"]
    assert os.listdir(target) == ["keep.txt"]


def test_overwrite_replaces_the_target(upsampler, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    savedmodel_export.export_savedmodel(upsampler, None, str(target), overwrite=True)
    assert os.listdir(tmp_path) == ["model"]
    assert "stale.txt" not in os.listdir(target)
    assert os.path.isfile(target / "saved_model.pb")
    loaded = tf.saved_model.load(str(target))
    vis = tf.constant(np.arange(6, dtype=np.uint8).reshape(1, 1, 2, 3))
    got = loaded.signatures["serving_default"](vis_lr=vis, nir_lr=tf.zeros([1, 1, 2, 1], tf.uint8))
    np.testing.assert_array_equal(got["vis_sr"].numpy(), vis.numpy().repeat(2, 1).repeat(2, 2))


def test_crash_during_overwrite_keeps_the_old_target(upsampler, tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    monkeypatch.setattr(tf.saved_model, "save", _crashing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        savedmodel_export.export_savedmodel(upsampler, None, str(target), overwrite=True)
    assert os.listdir(tmp_path) == ["model"]
    assert (target / "keep.txt").read_text() == "old"


# The command line: two subprocess runs (exit codes as a user sees them); the other bad
# inputs through export_from_path, the function the script calls (a subprocess costs seconds).


def test_cli_exports_a_keras_file(tiny, tmp_path):
    # One export through the command line with both speed flags; their defaults are checked
    # through export_from_path below (a command-line export costs seconds).
    model, config = tiny
    keras_path = str(tmp_path / "model.keras")
    save_model(model, config, keras_path)
    out = tmp_path / "saved" / "1"
    result = _run([sys.executable, SCRIPT, "--model", keras_path, "--out", str(out),
                   "--precision", "bfloat16", "--ops", "shift"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(out / "saved_model.pb")
    assert os.listdir(out.parent) == ["1"]
    metadata = json.loads((out / savedmodel_export.METADATA_FILE).read_text())
    assert metadata["precision"] == "bfloat16"
    assert metadata["model_config"]["dynamic_conv_implementation"] == "shift"
    # For a server without XLA: no XLA-compiled function anywhere in the exported graph.
    assert b"_XlaMustCompile" not in (out / "saved_model.pb").read_bytes()


def test_cli_bad_precision_or_ops_exit_2_and_write_nothing(tiny, tmp_path):
    model, config = tiny
    keras_path = str(tmp_path / "model.keras")
    save_model(model, config, keras_path)
    bad = _run([sys.executable, SCRIPT, "--model", keras_path, "--out", str(tmp_path / "bad"),
                "--precision", "fp8"], cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "export_savedmodel: error: --precision='fp8' is not one of: float32, bfloat16, float16, auto"
    ]
    bad = _run([sys.executable, SCRIPT, "--model", keras_path, "--out", str(tmp_path / "bad"),
                "--ops", "magic"], cwd=tmp_path)
    assert bad.returncode == 2 and not (tmp_path / "bad").exists()


def test_export_defaults_are_float32_and_fused(tiny, tmp_path):
    model, config = tiny
    keras_path = str(tmp_path / "model.keras")
    save_model(model, config, keras_path)
    out = savedmodel_export.export_from_path(keras_path, str(tmp_path / "default"))
    metadata = json.loads(open(os.path.join(out, savedmodel_export.METADATA_FILE)).read())
    assert metadata["precision"] == "float32"
    assert metadata["model_config"]["dynamic_conv_implementation"] == "fused"
    assert metadata["nir_side"] == "right"
    assert b"_XlaMustCompile" in open(os.path.join(out, "saved_model.pb"), "rb").read()


def test_cli_missing_model_exits_2_naming_the_file(tmp_path):
    missing = tmp_path / "no_such_model.keras"
    out = tmp_path / "saved"
    args = [sys.executable, SCRIPT, "--model", str(missing), "--out", str(out)]
    result = _run(args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    error_lines = [line for line in lines if line.startswith("export_savedmodel: error:")]
    assert len(error_lines) == 1 and str(missing) in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_export_from_path_names_a_corrupt_keras_file(tmp_path):
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=re.escape(str(corrupt))) as info:
        savedmodel_export.export_from_path(str(corrupt), str(tmp_path / "saved"))
    assert "not a valid .keras file" in str(info.value)
    assert "not found" not in str(info.value).lower()
    assert os.listdir(tmp_path) == ["corrupt.keras"]


def test_export_from_path_checks_the_target_before_loading(upsampler, tmp_path):
    out = tmp_path / "saved"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    # The model path does not exist: the target check comes first.
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        savedmodel_export.export_from_path(str(tmp_path / "missing.keras"), str(out))
    keras_path = str(tmp_path / "model.keras")
    upsampler.save(keras_path)  # no config sidecar: the scale is measured
    savedmodel_export.export_from_path(keras_path, str(out), overwrite=True)
    assert os.path.isfile(out / "saved_model.pb") and not os.path.exists(out / "keep.txt")


def test_export_for_a_registered_camera_serves_zero_disparity(tiny, tmp_path):
    model, config = tiny
    path = str(tmp_path / "tiny.keras")
    model_io.save_model(model, config, path)
    out = savedmodel_export.export_from_path(path, str(tmp_path / "aligned"), geometry="aligned")
    served = tf.saved_model.load(out).signatures["serving_float"]
    registered = build_cspsr(config.replace(geometry="aligned"))  # reference, same weights
    registered.set_weights(model.get_weights())
    rng = np.random.default_rng(3)
    vis, nir = (x.astype(np.float32) / 255.0 for x in _random_pair(rng, 1, 10, 14))
    got = served(vis_lr=tf.constant(vis), nir_lr=tf.constant(nir))
    want = registered({"vis_lr": vis, "nir_lr": nir}, training=False)
    np.testing.assert_allclose(got["vis_sr"].numpy(), want["vis_sr"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(got["disp_l"].numpy(), 0.0)
    stereo = model({"vis_lr": vis, "nir_lr": nir}, training=False)["disp_l"].numpy()
    assert np.abs(stereo).max() > 0.1  # the same weights shift the NIR in the stereo model


# Issue 30: a file where a folder of --out must go, folder modes under the umask, the docs' curl.


def test_out_under_a_file_is_refused_before_the_model_loads(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    out = blocker / "cspsr" / "1"
    # The model does not exist: the target check comes first, with its own message.
    with pytest.raises(savedmodel_export.TargetBlockedError) as info:
        savedmodel_export.export_from_path(str(tmp_path / "missing.keras"), str(out))
    assert str(info.value) == f"{out}: {blocker} is a file, not a folder"
    assert blocker.read_text() == "keep" and os.listdir(tmp_path) == ["a_file"]


def test_cli_out_under_a_file_exits_2_in_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    out = blocker / "1"
    result = _run([sys.executable, SCRIPT, "--model", str(tmp_path / "m.keras"), "--out", str(out)],
                  cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"export_savedmodel: error: --out {out}: {blocker} is a file, not a folder"
    ]


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_export_folders_follow_the_umask(upsampler, tmp_path, umask):
    # TensorFlow makes variables/ and assets/ 0755 minus the umask: under umask 002 they were
    # 0755 while the folders this project makes were 0775.
    old = os.umask(umask)
    try:
        out = savedmodel_export.export_savedmodel(upsampler, None, str(tmp_path / "m" / "1"))
    finally:
        os.umask(old)
    folders, files = [], []
    for folder, subfolders, names in os.walk(out):
        folders += [os.path.join(folder, name) for name in subfolders]
        files += [os.path.join(folder, name) for name in names]
    assert {os.path.basename(path) for path in folders} >= {"variables", "assets", "assets.extra"}
    for path in [out, *folders]:
        assert os.stat(path).st_mode & 0o777 == 0o777 & ~umask, path
    for path in files:
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask, path


def _curl_bodies(path):
    """The JSON bodies of the `curl ... -d '...'` examples of a Markdown file."""
    with open(path) as f:
        text = f.read()
    return [json.loads(body) for body in re.findall(r"curl [^`]*? -d '(\{.*?\})'", text, re.S)]


@pytest.mark.parametrize("doc", ["docs/serving.md", "export/SERVING.md"])
def test_the_documented_curl_body_runs_through_its_signature(loaded, doc):
    bodies = _curl_bodies(os.path.join(ROOT, doc))
    assert len(bodies) == 1
    body = bodies[0]
    signature = loaded.signatures[body["signature_name"]]
    specs = signature.structured_input_signature[1]
    assert sorted(body["inputs"]) == sorted(specs) == ["nir_lr", "vis_lr"]
    inputs = {name: tf.constant(value, specs[name].dtype) for name, value in body["inputs"].items()}
    outputs = signature(**inputs)
    height, width = inputs["vis_lr"].shape[1:3]
    assert outputs["vis_sr"].shape == (1, height * SCALE, width * SCALE, 3)
    assert outputs["disp_l"].shape == (1, height, width, 1)
    assert np.all(np.isfinite(outputs["vis_sr"].numpy()))


def test_the_serving_docs_start_the_server_with_xla_and_export_x4_as_x4():
    # The default --ops=fused export needs XLA:CPU in TensorFlow Serving; an x4 model is not
    # exported to a folder named x2; the README names files that training writes.
    for doc in ("docs/serving.md", "export/SERVING.md"):
        with open(os.path.join(ROOT, doc)) as f:
            text = f.read()
        docker = re.search(r"docker run .*?tensorflow/serving[^\n]*", text, re.S).group(0)
        assert "--xla_cpu_compilation_enabled=true" in docker, doc
        for model, out in re.findall(r"--model (\S+) --out (\S+)", text):
            assert re.search(r"_x(\d)", model).group(1) == re.search(r"_x(\d)", out).group(1), (
                doc, model, out)
    with open(os.path.join(ROOT, "export", "README.md")) as f:
        readme = f.read()
    models = re.findall(r"--model (\S+)", readme)
    assert models and all(os.path.basename(m) in ("best.keras", "final.keras") for m in models)
