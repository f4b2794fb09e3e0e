"""Tests of cspsr_tf/model/precision.py: one trained model run in float32, bfloat16 or float16.

The model is the `tiny` preset with every weight re-drawn at random (stddev 0.05,
`perturb_weights`): a new model's zero-initialised reconstruction convs would make `vis_sr`
exactly the bicubic skip, which runs in float32 in every precision, and hide the body's
rounding. With these weights the residual (vis_sr - bicubic) is about 0.06 on average.

Measured with this module's setting (2 x 24 x 150 random LR inputs, weight and input seeds
0-2; x86 CPU with AVX512_BF16, TF 2.21): max |vis_sr - float32| and max |nir_sr - float32| of
0.7e-3 to 1.9e-3 in bfloat16 and 0.9e-4 to 2.5e-4 in float16. The bounds asserted are about
2.5x the largest of these.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.model import model_io
from cspsr_tf.model.build import build_cspsr, build_cspsr_with_training_twin, with_geometry
from cspsr_tf.model.configs import get_config
from cspsr_tf.model.precision import PRECISIONS, model_precision, policy_name
from cspsr_tf.model.runtime import select_precision, with_precision
from cspsr_tf.ops.resize import bicubic_upscale
from cspsr_tf.ops.warp import warp_by_disparity
from tests.model_helpers import perturb_weights

# One xdist worker runs this module (make test: --dist loadgroup), so its module fixtures
# (models, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("test_precision")

SCALE = 2
# max |vis_sr - vis_sr in float32|: measured x ~3 (seeds 0-2: 1.7e-3 / 1.9e-4).
MAX_ABS_DIFF = {"bfloat16": 5e-3, "float16": 6e-4}
# nir_sr follows the disparity through the warp: measured 0.048 / 0.0062 at most (seeds 0-2,
# normalisation scales near 1 as `perturb_weights` sets them now), x ~3.
MAX_NIR_ABS_DIFF = {"bfloat16": 0.15, "float16": 0.02}
# LR pixels; bfloat16 CVM features moved the disparity (up to 23 px) by at most 0.073 (seeds
# 0-2), x ~3.
MAX_DISPARITY_DIFF = 0.25


@pytest.fixture(scope="module")
def tiny():
    config = get_config("tiny", scale=SCALE)
    keras.utils.set_random_seed(0)
    return perturb_weights(build_cspsr(config, precision="float32"), seed=0, stddev=0.05), config


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    # 150 LR columns: sample positions past 128, where bfloat16 steps by 1 px.
    return {
        "vis_lr": rng.random((2, 24, 150, 3), dtype=np.float32),
        "nir_lr": rng.random((2, 24, 150, 1), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def reference(tiny, pair):
    model, _ = tiny
    return {k: v.numpy() for k, v in model(pair, training=False).items()}


def test_policy_names_and_unknown_precisions():
    assert [policy_name(p) for p in PRECISIONS] == ["float32", "mixed_bfloat16", "mixed_float16"]
    for bad in ("float64", "bf16", "mixed_bfloat16", None):
        with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, float16"):
            policy_name(bad)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_outputs_are_float32_and_close_to_float32(tiny, pair, reference, precision):
    model, config = tiny
    before = keras.config.dtype_policy().name
    low = with_precision(model, config, precision)
    assert keras.config.dtype_policy().name == before == "float32"
    assert low is not model and low.name == model.name and model_precision(low) == precision
    assert model_precision(model) == "float32"  # the original is untouched
    outputs = low(pair, training=False)
    assert set(outputs) == set(reference)
    for key, value in outputs.items():
        assert value.dtype == tf.float32, key
        assert np.isfinite(value.numpy()).all(), key
    residual = np.abs(reference["vis_sr"] - bicubic_upscale(pair["vis_lr"], SCALE).numpy())
    assert residual.mean() > 0.03  # the body shapes the output (not just the bicubic skip)
    for key, bound in (("vis_sr", MAX_ABS_DIFF), ("nir_sr", MAX_NIR_ABS_DIFF)):
        difference = np.abs(outputs[key].numpy() - reference[key]).max()
        assert 0 < difference < bound[precision], (key, difference)
    # The variables stay float32 (copied, not rounded): back in float32 the outputs match.
    assert {v.dtype for v in low.weights} == {"float32"}
    back = with_precision(low, config, "float32")
    np.testing.assert_array_equal(back(pair, training=False)["vis_sr"].numpy(), reference["vis_sr"])


def test_disparity_and_warp_run_in_float32(tiny, pair, reference):
    model, config = tiny
    low = with_precision(model, config, "bfloat16")
    cvm = low.get_layer("cvm")
    assert cvm.compute_dtype == "bfloat16"  # its convolutions
    assert all(head.compute_dtype == "float32" for head in cvm.heads)
    outputs = low(pair, training=False)
    assert np.abs(reference["disp_l"]).max() > 0.5  # a real shift to get right
    disp_l = outputs["disp_l"].numpy()
    # Only the CVM's features are rounded, not the disparity: it stays close to float32's ...
    assert np.abs(disp_l - reference["disp_l"]).max() < MAX_DISPARITY_DIFF
    # ... and is not on bfloat16's grid (8 mantissa bits: steps of 1/16 px above 2 px).
    on_grid = tf.cast(tf.cast(disp_l, tf.bfloat16), tf.float32).numpy() == disp_l
    assert on_grid.mean() < 0.5
    # The warp ran in float32 on the float32 NIR: the same as warping it here in float32.
    expected, _ = warp_by_disparity(tf.constant(pair["nir_lr"]), tf.constant(disp_l), "right_to_left")
    np.testing.assert_array_equal(outputs["nir_l"].numpy(), expected.numpy())


def test_float32_islands_and_low_precision_body(tiny):
    model, config = tiny
    low = with_precision(model, config, "bfloat16")
    dtypes = {layer.name: layer.compute_dtype for layer in low.layers}
    for name in ("vis_bicubic", "vis_global_skip", "nir_bicubic", "nir_global_skip",
                 "vis_sr", "nir_sr", "disp_l", "disp_r", "nir_l"):
        assert dtypes[name] == "float32", name
    for name in ("vis_conv1", "vis_resblock", "dmf1", "dmf2", "vis_recon_conv", "nir_recon_conv"):
        assert dtypes[name] == "bfloat16", name
    # Batch norm: float32 statistics (Keras upcasts bfloat16 inputs) in float32 variables.
    statistics = [v for v in low.weights if "moving_" in v.path]
    assert statistics and {v.dtype for v in statistics} == {"float32"}
    before = [v.numpy().copy() for v in statistics]
    twin_model, twin = build_cspsr_with_training_twin(config, precision="bfloat16")
    twin_model.set_weights(low.get_weights())
    rng = np.random.default_rng(1)
    batch = {"vis_lr": rng.random((2, 16, 16, 3), dtype=np.float32),
             "nir_lr": rng.random((2, 16, 16, 1), dtype=np.float32),
             "stereo": np.ones((2, 1), np.float32)}
    out = twin(batch, training=True)
    assert all(v.dtype == tf.float32 for v in out.values())
    after = [v for v in twin_model.weights if "moving_" in v.path]
    assert all(np.isfinite(v.numpy()).all() for v in after)
    assert any(not np.array_equal(a.numpy(), b) for a, b in zip(after, before, strict=True))


def test_global_policy_is_neither_read_nor_changed_by_an_explicit_precision(tiny, pair):
    model, config = tiny
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        low = with_precision(model, config, "bfloat16")
        assert model_precision(low) == "bfloat16"
        assert model_precision(build_cspsr(config, precision="float32")) == "float32"
        assert keras.config.dtype_policy().name == "mixed_float16"
        # Without `precision` the global policy decides (what the benchmarks rely on).
        assert model_precision(build_cspsr(config)) == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model_precision(build_cspsr(config)) == "float32"


def test_same_precision_is_the_model_itself_and_errors_are_clear(tiny, tmp_path):
    model, config = tiny
    assert with_precision(model, config, "float32") is model
    assert select_precision(model, config, None) is model
    with pytest.raises(ValueError, match="Received: 'float64'"):
        with_precision(model, config, "float64")
    with pytest.raises(ValueError, match=r"\.config\.json"):
        with_precision(model, None, "bfloat16")
    adapter = object.__new__(model_io.SavedModelAdapter)  # an exported float32 model
    adapter.name, adapter.precision = "exported", "float32"
    assert with_precision(adapter, config, "float32") is adapter
    with pytest.raises(ValueError, match="exported in float32 and its precision is baked"):
        with_precision(adapter, config, "bfloat16")
    adapter.precision = "bfloat16"
    assert select_precision(adapter, config, None) is adapter  # its own precision by default


def test_auto_precision_follows_the_hardware(tiny):
    from cspsr_tf.model.runtime import auto_precision

    assert auto_precision({"avx2", "avx512_bf16"}, [])[0] == "bfloat16"
    assert auto_precision({"amx_bf16"}, [])[0] == "bfloat16"
    assert auto_precision({"avx2", "avx512f"}, []) == ("float32", "CPU without AVX512_BF16 or AMX")
    assert auto_precision(set(), [(8, 0)])[0] == "bfloat16"
    assert auto_precision({"avx512_bf16"}, [(7, 5)])[0] == "float32"  # the GPU runs it
    model, config = tiny
    assert model_precision(select_precision(model, config, "auto")) == auto_precision()[0]
    adapter = object.__new__(model_io.SavedModelAdapter)
    adapter.name, adapter.precision = "exported", "float32"
    assert select_precision(adapter, config, "auto") is adapter  # baked in


def test_geometry_change_keeps_the_precision_and_files_hold_float32(tiny, pair, tmp_path):
    model, config = tiny
    low = with_precision(model, config, "bfloat16")
    aligned, _ = with_geometry(low, config, "aligned")
    assert model_precision(aligned) == "bfloat16"
    np.testing.assert_array_equal(aligned(pair, training=False)["disp_l"].numpy(), 0.0)
    path = str(tmp_path / "low.keras")
    model_io.save_model(low, config, path)
    loaded, loaded_config = model_io.load_model(path)
    assert model_precision(loaded) == "float32" and loaded_config == config
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_export_in_bfloat16_computes_in_bfloat16_with_float32_signatures(tiny, pair, tmp_path):
    from cspsr_tf.export import savedmodel_export

    model, config = tiny
    path = str(tmp_path / "tiny.keras")
    model_io.save_model(model, config, path)
    out = savedmodel_export.export_from_path(path, str(tmp_path / "bf16"), precision="bfloat16")
    with open(os.path.join(out, savedmodel_export.METADATA_FILE)) as f:
        assert json.load(f)["precision"] == "bfloat16"
    signatures = tf.saved_model.load(out).signatures
    got = signatures["serving_float"](vis_lr=tf.constant(pair["vis_lr"]), nir_lr=tf.constant(pair["nir_lr"]))
    assert got["vis_sr"].dtype == tf.float32 and got["disp_l"].dtype == tf.float32
    # Graph mode rounds at other points than eager Keras (fused ops), so the export is
    # compared with float32 like the Keras model in bfloat16 is.
    want = model(pair, training=False)
    difference = np.abs(got["vis_sr"].numpy() - want["vis_sr"].numpy()).max()
    assert 1e-5 < difference < MAX_ABS_DIFF["bfloat16"]  # bfloat16, not float32
    # The CVM's convolutions ran in bfloat16 too; its disparity itself is float32.
    np.testing.assert_allclose(got["disp_l"].numpy(), want["disp_l"].numpy(), atol=MAX_DISPARITY_DIFF)
    uint8 = signatures["serving_default"](
        vis_lr=tf.constant((pair["vis_lr"] * 255).astype(np.uint8)),
        nir_lr=tf.constant((pair["nir_lr"] * 255).astype(np.uint8)),
    )
    assert uint8["vis_sr"].dtype == tf.uint8
    adapter, _ = model_io.load_model(out)
    assert model_precision(adapter) == "bfloat16"
    with pytest.raises(ValueError, match="export it again with export/export_savedmodel.py --precision=float32"):
        with_precision(adapter, config, "float32")


def test_training_precision_settings():
    from cspsr_tf.train import run_config, stages

    def resolved(**kwargs):
        train = run_config.resolve_precision(run_config.TrainConfig(**kwargs))
        return train.precision, train.mixed_precision

    assert resolved() == ("float32", False)
    assert resolved(mixed_precision=True) == ("float16", True)  # the older spelling
    assert resolved(precision="float16") == ("float16", True)
    assert resolved(precision="bfloat16") == ("bfloat16", False)
    with pytest.raises(run_config.ConfigError, match="disagrees with --precision=bfloat16"):
        resolved(mixed_precision=True, precision="bfloat16")
    with pytest.raises(run_config.ConfigError, match="--precision='fp8' is not one of"):
        resolved(precision="fp8")
    # Loss scaling is for float16 only: bfloat16 has float32's exponent range.
    for precision, scaled in (("float32", False), ("bfloat16", False), ("float16", True)):
        train = run_config.resolve_precision(run_config.TrainConfig(precision=precision))
        optimizer = stages.make_optimizer(train)
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == scaled, precision


def test_a_run_written_before_the_precision_option_resumes(tmp_path):
    from cspsr_tf.train import run_config, run_dir

    config = get_config("tiny", scale=SCALE)
    for mixed in (False, True):
        train = run_config.resolve_precision(
            run_config.TrainConfig(model_dir=str(tmp_path / f"run{mixed}"), mixed_precision=mixed)
        )
        old = {"train": train.to_dict(), "model": config.to_dict()}
        del old["train"]["precision"]
        os.makedirs(train.model_dir)
        with open(os.path.join(train.model_dir, model_io.CONFIG_FILE), "w") as f:
            json.dump(old, f)
        run_dir.check_model_dir(train, config)  # no difference
        other = run_config.resolve_precision(
            run_config.TrainConfig(model_dir=train.model_dir, precision="bfloat16")
        )
        with pytest.raises(run_config.ConfigError, match="precision: "):
            run_dir.check_model_dir(other, config)
