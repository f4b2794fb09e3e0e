import keras
import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf import model_io
from cspsr_tf.configs import ABLATIONS, PRESETS, CSPSRConfig, get_config
from cspsr_tf.losses import cspsr_loss
from cspsr_tf.model import build_cspsr


def random_pair(batch, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "vis_lr": rng.random((batch, h, w, 3), dtype=np.float32),
        "nir_lr": rng.random((batch, h, w, 1), dtype=np.float32),
    }


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_output_shapes_on_odd_sizes(scale):
    model = build_cspsr(get_config("tiny", scale=scale))
    out = model(random_pair(2, 7, 11))
    assert out["vis_sr"].shape == (2, 7 * scale, 11 * scale, 3)
    assert out["nir_sr"].shape == (2, 7 * scale, 11 * scale, 1)
    for key in ("disp_l", "disp_r", "nir_l"):
        assert out[key].shape == (2, 7, 11, 1)
    assert all(v.dtype == tf.float32 for v in out.values())


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_every_ablation_builds_and_runs(ablation):
    config = get_config("tiny", ablation, scale=2)
    model = build_cspsr(config)
    out = model(random_pair(1, 9, 6))
    assert out["vis_sr"].shape == (1, 18, 12, 3)
    assert ("nir_sr" in out) == (config.architecture == "dual")
    assert ("disp_l" in out) == config.use_cvm
    assert np.isfinite(out["vis_sr"].numpy()).all()


def test_ablation_switches_change_the_graph():
    def layer_types(config):
        return {type(layer).__name__ for layer in build_cspsr(config).layers}

    assert "CrossViewMatching" not in layer_types(get_config("tiny", "wo_cvm"))
    assert "DMF" not in layer_types(get_config("tiny", "baseline"))
    assert "Concatenate" in layer_types(get_config("tiny", "w_nir"))
    assert "CrossViewMatching" in layer_types(get_config("tiny", "w_cvm"))
    dmf = next(layer for layer in build_cspsr(get_config("tiny", "wo_csft")).layers if layer.name == "dmf1")
    assert not dmf.use_csft
    dmf = next(layer for layer in build_cspsr(get_config("tiny", "wo_dyconv")).layers if layer.name == "dmf1")
    assert not dmf.use_dynamic_conv
    # The VIS-only baseline does not depend on the NIR input at all.
    model = build_cspsr(get_config("tiny", "baseline", scale=2))
    a = random_pair(1, 5, 5, seed=1)
    b = dict(a, nir_lr=np.zeros_like(a["nir_lr"]))
    np.testing.assert_array_equal(model(a)["vis_sr"].numpy(), model(b)["vis_sr"].numpy())


def test_keras_save_and_reload_gives_same_outputs(tmp_path):
    config = get_config("tiny", scale=2)
    model = build_cspsr(config)
    inputs = random_pair(2, 6, 9)
    expected = model(inputs)
    path = str(tmp_path / "m.keras")
    model_io.save_model(model, config, path)
    reloaded, reloaded_config = model_io.load_model(path)
    assert reloaded_config == config
    got = reloaded(inputs)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-6)
    # Plain Keras loading works too (layers registered for serialisation, no Lambda).
    plain = keras.saving.load_model(path)
    np.testing.assert_allclose(plain(inputs)["vis_sr"].numpy(), expected["vis_sr"].numpy(), atol=1e-6)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)


def test_corrupt_keras_file_gives_clear_error(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.keras"):
        model_io.load_model(str(path))


def conv_params(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def hand_count(config):
    """Parameters of a dual-branch config, from the architecture description alone."""
    c, s, k, t = config.channels, config.scale, config.kernel_size, config.num_modules
    shallow = lambda cin: conv_params(3, cin, c) + 3 * conv_params(3, c, c)  # noqa: E731
    dmf = (
        conv_params(3, 2 * c, k * k)  # dynamic kernel predictor
        + conv_params(3, c, 1)  # w_s1
        + 2 * 4 * c  # two batch norms (gamma, beta, moving mean, moving variance)
        + conv_params(1, 2 * c, 2 * c)  # w_c
        + conv_params(3, 2 * c, 1)  # w_s2
        + 2 * conv_params(3, c, c)  # the two output convolutions
    )
    sr = shallow(3) + shallow(1) + t * dmf + conv_params(3, c, 3 * s * s) + conv_params(3, c, s * s)
    b, depth = config.cvm_base_channels, config.cvm_depth
    bn = lambda ch: 4 * ch  # noqa: E731
    cvm = conv_params(3, 4, b, bias=False) + bn(b)
    for level in range(1, depth + 1):
        prev, ch = b * 2 ** (level - 1), b * 2**level
        cvm += conv_params(3, prev, ch, False) + bn(ch) + conv_params(3, ch, ch, False) + bn(ch)
    incoming = b * 2**depth
    for step, level in enumerate(range(depth - 1, -1, -1)):
        ch = b * 2**level
        cin = incoming + ch + (2 if step else 0)
        cvm += conv_params(3, cin, ch, False) + bn(ch) + conv_params(3, ch, 2)
        incoming = ch
    return sr, cvm


def test_paper_preset_parameter_count_equals_hand_count():
    config = PRESETS["paper"]
    assert (config.channels, config.num_modules, config.kernel_size) == (64, 15, 3)
    model = build_cspsr(config)
    sr, cvm = hand_count(config)
    assert model.count_params() == sr + cvm
    cvm_layer = next(layer for layer in model.layers if layer.name == "cvm")
    assert cvm_layer.count_params() == cvm


def test_one_step_updates_every_trainable_weight():
    config = get_config("tiny", scale=2)
    model = build_cspsr(config)
    inputs = random_pair(2, 8, 8)
    rng = np.random.default_rng(5)
    targets = {
        "vis_hr": rng.random((2, 16, 16, 3), dtype=np.float32),
        "nir_hr": rng.random((2, 16, 16, 1), dtype=np.float32),
    }
    with tf.GradientTape() as tape:
        loss = cspsr_loss(model(inputs, training=True), targets, config.scale, config.lambda_cssc)["total"]
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads, strict=True) if g is None]
    assert not missing, f"no gradient reaches {missing}"
    keras.optimizers.Adam(1e-3).apply_gradients(zip(grads, model.trainable_variables, strict=True))


def test_two_hundred_steps_halve_the_loss_on_a_fixed_batch():
    # No bicubic skip here, so the starting loss is far from the target and the test shows
    # that the whole network (not the skip) fits a batch.
    config = get_config("tiny", scale=2, global_skip=False)
    model = build_cspsr(config)
    rng = np.random.default_rng(7)
    hr = rng.random((2, 16, 16, 3)).astype(np.float32)
    nir_hr = hr.mean(axis=-1, keepdims=True)
    inputs = {
        "vis_lr": tf.image.resize(hr, (8, 8), antialias=True).numpy(),
        "nir_lr": tf.image.resize(nir_hr, (8, 8), antialias=True).numpy(),
    }
    targets = {"vis_hr": hr, "nir_hr": nir_hr}
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = cspsr_loss(model(inputs, training=True), targets, 2, config.lambda_cssc)["total"]
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    first = float(step())
    for _ in range(199):
        last = float(step())
    assert last < 0.5 * first, (first, last)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="scale=5"):
        CSPSRConfig(scale=5)
    with pytest.raises(ValueError, match="use_cvm=False"):
        CSPSRConfig(architecture="single", single_branch_input="vis", use_cvm=True)
    with pytest.raises(ValueError, match="Unknown config fields"):
        PRESETS["tiny"].replace(chanels=3)
    with pytest.raises(TypeError):
        build_cspsr({"scale": 4})
    assert CSPSRConfig.from_dict(PRESETS["paper"].to_dict()) == PRESETS["paper"]


def test_mixed_precision_layers_compute_in_float16_and_outputs_stay_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        config = get_config("tiny", scale=2)
        model = build_cspsr(config)
        dmf = model.get_layer("dmf1")
        assert dmf.compute_dtype == "float16" and dmf.nir_filter.compute_dtype == "float16"
        assert model.get_layer("cvm").compute_dtype == "float16"
        out = model(random_pair(1, 9, 12))
        assert all(v.dtype == tf.float32 for v in out.values())
        assert np.isfinite(out["vis_sr"].numpy()).all()
        targets = {"vis_hr": np.zeros((1, 18, 24, 3), np.float32),
                   "nir_hr": np.zeros((1, 18, 24, 1), np.float32)}
        loss = cspsr_loss(out, targets, 2)["total"]
        assert loss.dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")
