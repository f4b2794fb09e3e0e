import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.model import model_io
from cspsr_tf.model.build import build_cspsr, build_cspsr_with_training_twin, with_geometry
from cspsr_tf.model.configs import ABLATIONS, PRESETS, CSPSRConfig, get_config
from cspsr_tf.train.losses import cspsr_loss
from tests.model_helpers import perturb_weights


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


@pytest.mark.parametrize("ablation", ["full", "full_gf", "full_gf_skip", "full_zero_conv"])
def test_keras_save_and_reload_gives_same_outputs(tmp_path, ablation):
    config = get_config("tiny", ablation, scale=2)
    model = perturb_weights(build_cspsr(config), seed=3, stddev=0.05)
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
    # Per normalisation: parameters per output channel (group: gamma, beta); the conv has a
    # bias only without normalisation.
    norm_per_channel = {"group": 2, "none": 0}[config.cvm_normalization]

    def conv_norm(cin, cout):
        return conv_params(3, cin, cout, bias=norm_per_channel == 0) + norm_per_channel * cout

    # Cost volumes: candidates 0, 2, ..., max at half resolution, learned and NCC^2, 2 views.
    volumes = 4 * (math.ceil(config.max_disparity / 2) + 1)
    cvm = 1  # the soft-argmin temperature
    for view_channels in (3, 1):  # matching feature extractors
        cvm += conv_params(3, view_channels, b) + 2 * conv_params(3, b, b)
    cvm += conv_norm(4, b)
    skip = {0: b}
    for level in range(1, depth + 1):
        prev, ch = skip[level - 1], b * 2**level
        cvm += conv_norm(prev, ch) + conv_norm(ch, ch)
        skip[level] = ch + (volumes if level == 1 else 0)
    incoming = b * 2**depth
    for step, level in enumerate(range(depth - 1, -1, -1)):
        ch = b * 2**level
        cin = incoming + skip[level] + (2 if step else 0)
        cvm += conv_norm(cin, ch) + conv_params(3, ch, 2)
        incoming = ch
    return sr, cvm


@pytest.mark.parametrize(
    "preset, cvm_normalization",
    [("paper", "group"), ("small", "none")],
)
def test_parameter_count_equals_hand_count(preset, cvm_normalization):
    # The paper preset with its default CVM; the other CVM normalisations and the two-conv VIS
    # path on the cheaper `small` preset (the hand count does not depend on the preset).
    config = PRESETS[preset].replace(cvm_normalization=cvm_normalization)
    if preset == "paper":
        assert (config.channels, config.num_modules, config.kernel_size) == (64, 15, 3)
    model = build_cspsr(config)
    sr, cvm = hand_count(config)
    assert model.count_params() == sr + cvm
    cvm_layer = next(layer for layer in model.layers if layer.name == "cvm")
    assert cvm_layer.count_params() == cvm


def test_two_steps_change_every_trainable_weight():
    # The reconstruction convs start at zero (the untrained model is bicubic), so the first
    # step reaches only them; from the second step on, every weight must learn.
    config = get_config("tiny", scale=2)
    model, twin = build_cspsr_with_training_twin(config)
    inputs = random_pair(2, 8, 8)
    rng = np.random.default_rng(5)
    targets = {
        "vis_hr": rng.random((2, 16, 16, 3), dtype=np.float32),
        "nir_hr": rng.random((2, 16, 16, 1), dtype=np.float32),
    }
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    optimizer = keras.optimizers.Adam(1e-3)
    for _ in range(2):
        with tf.GradientTape() as tape:
            outputs = twin({**inputs, "stereo": np.ones((2, 1), np.float32)}, training=True)
            loss = cspsr_loss(outputs, targets, config.scale, config.lambda_cssc)["total"]
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    unchanged = [
        v.path for v in model.trainable_variables if np.array_equal(v.numpy(), before[v.path])
    ]
    assert not unchanged, f"{len(unchanged)} weights did not move: {unchanged}"


@pytest.mark.parametrize("ablation", ["full", "wo_cvm", "w_nir", "full_zero_conv"])
def test_vis_sr_depends_on_the_nir_input(ablation):
    model = perturb_weights(build_cspsr(get_config("tiny", ablation, scale=2)), seed=1, stddev=0.1)
    inputs = random_pair(1, 12, 16, seed=2)
    other_nir = np.random.default_rng(3).random((1, 12, 16, 1), dtype=np.float32)
    sr = model(inputs)["vis_sr"].numpy()
    sr_other = model({**inputs, "nir_lr": other_nir})["vis_sr"].numpy()
    # Far above float round-off (~1e-7); random weights give 9e-4 (full) to 1e-2 (w_nir).
    assert np.abs(sr - sr_other).mean() > 1e-4


def test_zero_conv_fusion_starts_as_the_vis_only_model():
    """`fusion="zero_conv"`: the VIS path is the VIS-only network (same layer names, so its
    weights load by name) and the NIR joins through 1x1 convs initialised at zero; untrained,
    the model is the VIS-only model whatever the NIR."""
    c, t = 8, 2
    vis_only = perturb_weights(build_cspsr(get_config("tiny", "baseline", scale=2)), seed=4, stddev=0.1)
    model = build_cspsr(get_config("tiny", "full_zero_conv", scale=2))
    assert (c, t) == (model.get_layer("dmf1").channels, get_config("tiny").num_modules)
    for layer in vis_only.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    inputs = random_pair(1, 7, 9, seed=6)
    expected = vis_only(inputs)["vis_sr"].numpy()
    other_nir = np.random.default_rng(7).random((1, 7, 9, 1), dtype=np.float32)
    for nir in (inputs["nir_lr"], other_nir):
        got = model({**inputs, "nir_lr": nir})["vis_sr"].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)
    # Beyond the paper's model: a residual block (two 3x3 convs) and a 1x1 conv per module.
    full = build_cspsr(get_config("tiny", "full", scale=2))
    assert model.count_params() - full.count_params() == t * (2 * conv_params(3, c, c) + conv_params(1, c, c))
    # Configs saved before the field existed are the paper's fusion.
    legacy = {k: v for k, v in get_config("tiny").to_dict().items() if k != "fusion"}
    assert CSPSRConfig.from_dict(legacy).fusion == "dmf"
    with pytest.raises(ValueError, match="fusion is a dual-branch switch"):
        get_config("tiny", "baseline", fusion="zero_conv")


def test_registered_pairs_get_zero_disparity_in_both_mechanisms():
    config = get_config("tiny", scale=2)
    model, twin = build_cspsr_with_training_twin(config)
    perturb_weights(model, seed=4, stddev=0.1)
    inputs = random_pair(2, 12, 16, seed=5)
    flagged = twin({**inputs, "stereo": np.array([[1.0], [0.0]], np.float32)})
    aligned_model, aligned_config = with_geometry(model, config, "aligned")
    assert aligned_config.geometry == "aligned"
    aligned = aligned_model(inputs)
    stereo = model(inputs)
    assert float(np.abs(stereo["disp_l"].numpy()).min()) > 0.0  # the stereo model shifts
    np.testing.assert_array_equal(aligned["disp_l"].numpy(), 0.0)
    np.testing.assert_array_equal(aligned["nir_l"].numpy(), inputs["nir_lr"])
    np.testing.assert_array_equal(flagged["disp_l"].numpy()[1], 0.0)
    np.testing.assert_allclose(flagged["vis_sr"].numpy()[1], aligned["vis_sr"].numpy()[1], atol=1e-6)
    np.testing.assert_allclose(flagged["vis_sr"].numpy()[0], stereo["vis_sr"].numpy()[0], atol=1e-6)


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

    @tf.function(autograph=False)
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
    # Configs saved with a retired switch: at its neutral value they load as today's model;
    # set, they fail in one line naming the field.
    saved = get_config("tiny").to_dict()
    neutral = {"dmf_vis_convs": 1, "nir_early_fusion": False, "learned_guide": False,
               "lambda_guide": 0.0}
    assert CSPSRConfig.from_dict({**saved, **neutral}) == get_config("tiny")
    for field, value in [("dmf_vis_convs", 2), ("nir_early_fusion", True),
                         ("learned_guide", True), ("lambda_guide", 1.0)]:
        with pytest.raises(ValueError, match=rf"^{field}={value!r} was retired \("):
            CSPSRConfig.from_dict({**saved, field: value})
    with pytest.raises(ValueError, match="Unknown ablation|ablation must be one of"):
        get_config("tiny", "full_vis2")


def test_mixed_precision_layers_compute_in_float16_and_outputs_stay_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        config = get_config("tiny", scale=2)
        model = build_cspsr(config)
        dmf = model.get_layer("dmf1")
        assert dmf.compute_dtype == "float16" and dmf.nir_filter.compute_dtype == "float16"
        assert model.get_layer("cvm").compute_dtype == "float16"  # its convolutions; disparity float32
        assert all(head.compute_dtype == "float32" for head in model.get_layer("cvm").heads)
        out = model(random_pair(1, 9, 12))
        assert all(v.dtype == tf.float32 for v in out.values())
        assert np.isfinite(out["vis_sr"].numpy()).all()
        targets = {"vis_hr": np.zeros((1, 18, 24, 3), np.float32),
                   "nir_hr": np.zeros((1, 18, 24, 1), np.float32)}
        loss = cspsr_loss(out, targets, 2)["total"]
        assert loss.dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")
