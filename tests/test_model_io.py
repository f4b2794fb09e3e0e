"""Tests of cspsr_tf/model/model_io.py: what load_model says about files that are not a CSPSR model.

Issue 9: a non-CSPSR `.keras` gave "Cannot tell the scale" deep in inference, and a corrupt
one was reported as "File not found"; issue 10: `.keras` loading must keep Keras's safe mode.
"""

import ast
import os
import zipfile

import keras
import numpy as np
import pytest

from cspsr_tf.model import model_io, runtime
from tests.model_helpers import tiny_perturbed_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    model, config = tiny_perturbed_model(scale=2)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    model_io.save_model(model, config, path)
    return model, path


def test_round_trip_keeps_the_perturbed_weights(saved_tiny):
    model, path = saved_tiny
    loaded, config = model_io.load_model(path)
    assert config.scale == 2
    rng = np.random.default_rng(0)
    inputs = {"vis_lr": rng.random((1, 6, 7, 3), np.float32),
              "nir_lr": rng.random((1, 6, 7, 1), np.float32)}
    want, got = model(inputs)["vis_sr"].numpy(), loaded(inputs)["vis_sr"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def _dense_model_file(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    return path


def test_a_keras_file_of_another_model_is_refused_in_one_line(tmp_path):
    path = _dense_model_file(tmp_path)
    with pytest.raises(model_io.ModelLoadError) as info:
        model_io.load_model(path)
    message = str(info.value)
    assert path in message and "is not a CSPSR model" in message
    assert "\n" not in message and "\x1b" not in message
    assert isinstance(info.value, ValueError)  # what predict / evaluate / export catch


def test_an_sr_model_without_vis_sr_is_refused(tmp_path):
    vis = keras.Input((None, None, 3), name="vis_lr")
    nir = keras.Input((None, None, 1), name="nir_lr")
    model = keras.Model({"vis_lr": vis, "nir_lr": nir}, {"sr": keras.layers.UpSampling2D(2)(vis)})
    path = str(tmp_path / "renamed.keras")
    model.save(path)
    with pytest.raises(model_io.ModelLoadError, match="vis_sr"):
        model_io.load_model(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_keras_file_is_not_called_missing(saved_tiny, tmp_path, damage):
    _, good = saved_tiny
    path = tmp_path / f"{damage}.keras"
    data = open(good, "rb").read()
    path.write_bytes(b"\x00garbage" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(model_io.ModelLoadError) as info:
        model_io.load_model(str(path))
    message = str(info.value)
    assert str(path) in message and "not a valid .keras file" in message
    assert "not found" not in message.lower()


def test_a_keras_zip_without_a_model_inside_names_the_file(tmp_path):
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no model here")
    with pytest.raises(model_io.ModelLoadError, match=f"Cannot load model {path}"):
        model_io.load_model(str(path))


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        model_io.load_model(str(tmp_path / "missing.keras"))


def test_keras_files_load_in_safe_mode(tmp_path):
    """A Lambda layer carries Python bytecode: safe mode refuses to deserialise it."""
    vis = keras.Input((None, None, 3), name="vis_lr")
    nir = keras.Input((None, None, 1), name="nir_lr")
    brighter = keras.layers.Lambda(lambda x: x * 2.0, name="brighter")(vis)
    vis_sr = keras.layers.UpSampling2D(2, name="vis_sr")(brighter)
    model = keras.Model({"vis_lr": vis, "nir_lr": nir}, {"vis_sr": vis_sr})
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(model_io.ModelLoadError, match="safe_mode") as info:
        model_io.load_model(path)
    assert path in str(info.value) and "\n" not in str(info.value)
    # The same file loads with safe mode off: the refusal above is safe mode's, not damage.
    assert keras.saving.load_model(path, safe_mode=False) is not None


def test_model_io_does_not_import_export():
    """export.py imports model_io; the reverse import made a circle (issue 9, item 12)."""
    with open(os.path.join(ROOT, "cspsr_tf", "model", "model_io.py")) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert not {name for name in imported if name.startswith("cspsr_tf.export.savedmodel_export")}


def test_select_ops_rebuilds_with_the_same_weights_and_numbers(saved_tiny):
    # A model trained with `shift` ops runs `fused` by default at inference (and back), with
    # the same outputs: the choice changes speed, not the numbers.
    model, path = saved_tiny
    loaded, config = model_io.load_model(path)
    shift_model, shift_config = runtime.select_ops(loaded, config, "shift")
    assert shift_config.dynamic_conv_implementation == "shift"
    assert shift_model.get_layer("dmf1").nir_filter.implementation == "shift"
    fused_model, fused_config = runtime.select_ops(shift_model, shift_config)  # the default
    assert fused_config.dynamic_conv_implementation == runtime.DEFAULT_OPS == "fused"
    assert fused_model.get_layer("dmf1").fusion.implementation == "fused"
    same, same_config = runtime.select_ops(fused_model, fused_config, "fused")
    assert same is fused_model and same_config is fused_config
    rng = np.random.default_rng(1)
    inputs = {"vis_lr": rng.random((1, 9, 11, 3), np.float32),
              "nir_lr": rng.random((1, 9, 11, 1), np.float32)}
    want = shift_model(inputs)["vis_sr"].numpy()
    np.testing.assert_allclose(fused_model(inputs)["vis_sr"].numpy(), want, atol=1e-5)
    assert np.abs(want - model(inputs)["vis_sr"].numpy()).max() < 1e-5


def test_select_ops_refuses_unknown_ops_and_models_it_cannot_rebuild(saved_tiny):
    model, path = saved_tiny
    loaded, config = model_io.load_model(path)
    with pytest.raises(ValueError, match="ops must be one of fused, shift, patches"):
        runtime.select_ops(loaded, config, "magic")
    with pytest.raises(ValueError, match="no CSPSR config"):
        runtime.select_ops(loaded, None, "shift")
    # Without a config and without an explicit choice the model runs as it is.
    assert runtime.select_ops(loaded, None) == (loaded, None)
