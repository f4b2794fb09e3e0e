"""Exposure conditioning: whole-frame statistics, the layers, the model, training and tiling."""

import json

import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.infer import tiling
from cspsr_tf.model import model_io
from cspsr_tf.model.build import build_cspsr, build_cspsr_with_training_twin
from cspsr_tf.model.configs import CSPSRConfig, get_config
from cspsr_tf.model.layers.exposure import (
    ExposureConditioning,
    ExposureGain,
    FeatureModulation,
    FrameStatistics,
)
from cspsr_tf.ops.frame_statistics import frame_statistics, statistics_size
from tests.layer_test_utils import run_layer_checks
from tests.model_helpers import perturb_weights
from tests.test_guided_filter import random_pair


def _frame(seed=0, height=12, width=15):
    """A VIS frame with some clipped and some black pixels, and a NIR frame."""
    rng = np.random.default_rng(seed)
    vis = (0.05 + 0.85 * rng.random((1, height, width, 3))).astype(np.float32)
    vis[0, :2, :4] = 1.0  # clipped (any colour >= 250/255 counts)
    vis[0, 3, :5, 1] = 251 / 255
    vis[0, -2:, -3:] = 0.0  # black
    nir = (0.9 * rng.random((1, height, width, 1))).astype(np.float32)
    nir[0, 0, :6] = 1.0
    return vis, nir


def _numpy_statistics(vis, nir):
    """frame_statistics by plain numpy loops over the pixels (float64)."""
    v, n = vis[0].astype(np.float64), nir[0, ..., 0].astype(np.float64)
    h, w, _ = v.shape
    luma = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            luma[y, x] = 0.299 * v[y, x, 0] + 0.587 * v[y, x, 1] + 0.114 * v[y, x, 2]
    def log4(value):
        return np.log(value + 1e-4) / 4

    def mean_abs_dx(image):
        return np.mean([abs(image[y, x + 1] - image[y, x]) for y in range(h) for x in range(w - 1)])

    clipped = sum(max(v[y, x]) >= 250 / 255 for y in range(h) for x in range(w)) / (h * w)
    black = sum(luma[y, x] < 2 / 255 for y in range(h) for x in range(w)) / (h * w)
    vis_part = [*v.mean(axis=(0, 1)), luma.std(), log4(luma.mean()), clipped, black,
                log4(mean_abs_dx(luma))]
    nir_part = [n.mean(), n.std(), (n >= 250 / 255).mean(), log4(mean_abs_dx(n)),
                log4(luma.mean()) - log4(n.mean())]
    return np.array(vis_part), np.array(vis_part + nir_part)


def test_frame_statistics_against_numpy():
    vis, nir = _frame()
    want_vis, want_both = _numpy_statistics(vis, nir)
    np.testing.assert_allclose(frame_statistics(vis).numpy()[0], want_vis, atol=1e-5)
    np.testing.assert_allclose(frame_statistics(vis, nir).numpy()[0], want_both, atol=1e-5)
    assert statistics_size(False) == want_vis.size and statistics_size(True) == want_both.size
    # Clipped: the 2x4 white block and 5 pixels of green 251; black: the 2x3 corner.
    assert want_both[5] == pytest.approx(13 / 180) and want_both[6] == pytest.approx(6 / 180)
    assert want_both[10] == pytest.approx(6 / 180)


def test_statistics_follow_a_darkened_and_an_over_exposed_frame():
    vis, nir = _frame(1, 20, 20)
    vis[0, :4, :5] = vis[0, -2:, -3:] = 0.5  # no clipped, no black pixels
    base = frame_statistics(vis, nir).numpy()[0]
    dark = frame_statistics(vis * 0.25, nir).numpy()[0]
    bright = frame_statistics(np.minimum(vis * 2, 1.0), nir).numpy()[0]
    # The VIS log mean and the VIS / NIR log ratio drop by log(4) / 4 (up to the 1e-4 floor).
    np.testing.assert_allclose(dark[4] - base[4], np.log(0.25) / 4, atol=1e-3)
    np.testing.assert_allclose(dark[12] - base[12], np.log(0.25) / 4, atol=1e-3)
    assert base[5] == 0 and bright[5] > 0.3  # clipped share
    np.testing.assert_array_equal(dark[8:12], base[8:12])  # the NIR's own statistics


def test_layers():
    vis, nir = _frame()
    run_layer_checks(FrameStatistics, {"use_nir": True}, (vis, nir), expected_output_shapes=(1, 13))
    stats = frame_statistics(vis, nir).numpy()
    conditioning = ExposureConditioning(8)
    log_gain, film = conditioning(stats)
    # Zero-initialised heads: gain 1 and identity FiLM at the start.
    np.testing.assert_array_equal(log_gain.numpy(), np.zeros((1, 3)))
    np.testing.assert_array_equal(film.numpy(), np.zeros((1, 16)))
    conditioning.gain_head.bias.assign([1.0, -1.0, 0.05])
    want = 3.0 * np.tanh(10.0 * np.array([1.0, -1.0, 0.05]) / 3.0)
    np.testing.assert_allclose(conditioning(stats)[0].numpy()[0], want, rtol=1e-5)
    with pytest.raises(ValueError, match="must be > 0"):
        ExposureConditioning(8, rate=0.0)
    image = np.random.default_rng(2).random((2, 4, 5, 3)).astype(np.float32)
    gains = np.log([[2.0, 1.0, 0.5], [1.0, 4.0, 1.0]]).astype(np.float32)
    np.testing.assert_allclose(ExposureGain()((image, gains)).numpy(),
                               image * np.exp(gains)[:, None, None, :], rtol=1e-6)
    features = np.random.default_rng(3).random((2, 4, 5, 2)).astype(np.float32)
    film = np.array([[0.5, -0.5, 0.1, 0.2], [0.0, 0.0, 0.0, 0.0]], np.float32)
    want = features.copy()
    want[0] = features[0] * [1.5, 0.5] + [0.1, 0.2]
    np.testing.assert_allclose(FeatureModulation()((features, film)).numpy(), want, rtol=1e-6)


def _conditioned_and_plain(ablation, seed=0):
    plain = perturb_weights(build_cspsr(get_config("tiny", ablation, scale=2)), seed=seed)
    model = build_cspsr(get_config("tiny", ablation, scale=2, exposure_conditioning=True))
    for layer in plain.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return model, plain


@pytest.mark.parametrize("ablation", ["baseline", "full_zero_conv"])
def test_untrained_conditioning_is_the_unconditioned_model(ablation):
    model, plain = _conditioned_and_plain(ablation)
    inputs = random_pair(2, 10, 12, seed=1)
    np.testing.assert_allclose(model(inputs)["vis_sr"].numpy(), plain(inputs)["vis_sr"].numpy(),
                               atol=1e-6)
    # The statistics use the NIR exactly when the model does.
    assert model.get_layer("frame_statistics").use_nir == (ablation != "baseline")


def test_the_gain_brightens_the_vis_input_and_its_skip():
    """An untrained baseline outputs the bicubic skip; with gains set it outputs the bicubic
    of the gained input, i.e. (bicubic being linear) the plain output times the gains."""
    model = build_cspsr(get_config("tiny", "baseline", scale=2, exposure_conditioning=True))
    plain = build_cspsr(get_config("tiny", "baseline", scale=2))
    inputs = random_pair(1, 6, 7, seed=2)
    gains = np.array([2.0, 1.0, 0.5])
    # tanh(10 u / 3) * 3 = log(gain)  <=>  u = 0.3 * artanh(log(gain) / 3)
    model.get_layer("exposure_conditioning").gain_head.bias.assign(0.3 * np.arctanh(np.log(gains) / 3))
    np.testing.assert_allclose(model(inputs)["vis_sr"].numpy(), plain(inputs)["vis_sr"].numpy() * gains,
                               rtol=1e-5, atol=1e-6)


def test_the_training_twin_takes_the_whole_frames_statistics():
    config = get_config("tiny", "full_zero_conv", scale=2, exposure_conditioning=True)
    model, twin = build_cspsr_with_training_twin(config)
    perturb_weights(model, seed=4)
    inputs = {k: tf.constant(v) for k, v in random_pair(2, 10, 12, seed=5).items()}
    stereo = tf.ones((2, 1))
    own = frame_statistics(inputs["vis_lr"], inputs["nir_lr"])
    out = model(inputs)["vis_sr"].numpy()
    np.testing.assert_allclose(twin({**inputs, "stereo": stereo, "frame_stats": own})["vis_sr"].numpy(),
                               out, atol=1e-6)
    other = twin({**inputs, "stereo": stereo, "frame_stats": own * 0.5})["vis_sr"].numpy()
    assert np.abs(other - out).max() > 1e-4


def test_pipeline_feeds_the_statistics_of_the_whole_frame():
    from cspsr_tf.data import pipeline
    from cspsr_tf.ops.resize import bicubic_downscale

    rng = np.random.default_rng(6)
    vis = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    vis[:20] //= 4  # a dark top half: a patch's statistics differ from the frame's
    nir = (rng.random((40, 48, 1)) * 255).astype(np.uint8)
    source = tf.data.Dataset.from_tensors({"vis": vis, "nir": nir})
    ds = pipeline.make_training_dataset(
        source, scale=2, hr_patch_size=16, batch_size=4, seed=0, random_downscale=None,
        vertical_flip=False, shuffle_buffer=0, frame_statistics_of="vis_nir")
    inputs, _ = next(iter(ds))
    whole = frame_statistics(bicubic_downscale(vis[None] / 255.0, 2), bicubic_downscale(nir[None] / 255.0, 2))
    np.testing.assert_allclose(inputs["frame_stats"].numpy(), np.repeat(whole.numpy(), 4, axis=0), atol=1e-6)
    patches = frame_statistics(inputs["vis_lr"], inputs["nir_lr"]).numpy()
    assert np.abs(patches - whole.numpy()).max() > 1e-2
    vis_only = pipeline.make_training_dataset(
        source, scale=2, hr_patch_size=16, batch_size=1, seed=0, random_downscale=None,
        frame_statistics_of="vis")
    assert next(iter(vis_only))[0]["frame_stats"].shape == (1, statistics_size(False))


def test_tiles_are_steered_by_the_whole_frame():
    """Tiled inference passes the whole frame's statistics to every tile: a local model with
    conditioning then tiles exactly (its tiles' own statistics would differ)."""
    config = get_config("tiny", "baseline", scale=2, exposure_conditioning=True)
    model = perturb_weights(build_cspsr(config), seed=9)  # the heads too
    rng = np.random.default_rng(10)
    lr = rng.random((30, 37, 3)).astype(np.float32)
    lr[:15] *= 0.2
    nir = rng.random((30, 37, 1)).astype(np.float32)
    whole = tiling.predict_whole(model, lr, nir)["vis_sr"]
    tiled = tiling.tiled_predict(model, lr, nir, 2, tile=(13, 17), overlap=3, batch=2)["vis_sr"]
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    top_stats = frame_statistics(lr[None, :15])  # the baseline reads the VIS alone
    runner = tiling.with_statistics_input(model, after_matching=False)
    assert tiling.with_statistics_input(model, after_matching=False) is runner
    own_stats = runner([tf.constant(lr[None, :15]), tf.constant(nir[None, :15]), top_stats])["vis_sr"].numpy()
    assert np.abs(own_stats - whole[:, :30]).max() > 1e-3


def test_after_matching_runner_with_statistics_matches_the_model():
    model = perturb_weights(build_cspsr(get_config("tiny", "full_zero_conv", scale=2,
                                                   exposure_conditioning=True)), seed=11)
    inputs = random_pair(1, 16, 20, seed=12)
    whole = tiling.predict_whole(model, inputs["vis_lr"], inputs["nir_lr"])
    matched = tiling.match_frame(model.get_layer("cvm"), inputs["vis_lr"][0], inputs["nir_lr"][0])
    stats = tiling.whole_frame_statistics(model.get_layer("frame_statistics"), inputs["vis_lr"][0],
                                          inputs["nir_lr"][0])
    runner = tiling.with_statistics_input(model, after_matching=True)
    outputs = runner([tf.constant(x) for x in (
        inputs["vis_lr"], *(matched[None, ..., i : i + 1] for i in range(3)), stats)])
    for key, value in whole.items():
        np.testing.assert_allclose(np.asarray(outputs[key]), value, atol=1e-5, err_msg=key)


def test_saved_model_round_trip_and_legacy_configs(tmp_path):
    config = get_config("tiny", "full_zero_conv", scale=2, exposure_conditioning=True)
    model = perturb_weights(build_cspsr(config), seed=13)
    path = str(tmp_path / "model.keras")
    model_io.save_model(model, config, path)
    loaded, loaded_config = model_io.load_model(path)
    assert loaded_config == config
    inputs = random_pair(1, 8, 9, seed=14)
    np.testing.assert_allclose(loaded(inputs)["vis_sr"].numpy(), model(inputs)["vis_sr"].numpy(), atol=1e-6)
    values = json.loads(get_config("tiny").to_json())
    del values["exposure_conditioning"]
    assert CSPSRConfig.from_dict(values).exposure_conditioning is False


def test_two_blind_training_steps_with_conditioning(synthetic_data_dir, tmp_path):
    """train.py's code path: the twin gets each patch's whole-frame statistics."""
    from cspsr_tf.train import loop, run_config

    train, model = run_config.build_configs(
        dict(dataset="nirvis_synthetic", data_dir=synthetic_data_dir, preset="tiny",
             ablation="full_zero_conv", degradation="blind", batch_size=2, patch_size=32,
             cvm_steps=0, eval_every=0, steps=2, model_dir=str(tmp_path / "run")),
        dict(scale=2, exposure_conditioning=True),
    )
    summary = loop.run_training(train, model)
    assert summary["step"] == 2 and all(np.isfinite(v) for v in summary["losses"].values())
    final, config = model_io.load_model(str(tmp_path / "run" / "final.keras"))
    assert config.exposure_conditioning
    head = final.get_layer("exposure_conditioning").gain_head
    assert np.abs(head.kernel.numpy()).max() > 0  # the heads were trained


def test_savedmodel_and_litert_exports_compute_the_statistics_of_their_input(tmp_path):
    from cspsr_tf.export import litert_export, savedmodel_export

    config = get_config("tiny", "full_zero_conv", scale=2, geometry="aligned", exposure_conditioning=True)
    model = perturb_weights(build_cspsr(config), seed=15)
    vis, nir = (v.astype(np.float32) for v in random_pair(1, 16, 20, seed=16).values())
    vis[:, :8] *= 0.3  # statistics away from the random frame's
    want = model({"vis_lr": vis, "nir_lr": nir})["vis_sr"].numpy()
    exported = tf.saved_model.load(savedmodel_export.export_savedmodel(model, config, str(tmp_path / "sm")))
    got = exported.signatures["serving_float"](vis_lr=tf.constant(vis), nir_lr=tf.constant(nir))
    np.testing.assert_allclose(got["vis_sr"].numpy(), want, atol=1e-5)
    path = str(tmp_path / "model.tflite")
    litert_export.export_litert(model, path, (16, 20))
    np.testing.assert_allclose(litert_export.LiteRTRunner(path, num_threads=1)(vis, nir)["vis_sr"], want,
                               atol=1e-4)


def test_an_exported_conditioned_model_refuses_to_tile(tmp_path):
    from cspsr_tf.export import savedmodel_export

    config = get_config("tiny", "baseline", scale=2, exposure_conditioning=True)
    out = savedmodel_export.export_savedmodel(build_cspsr(config), config, str(tmp_path / "sm"))
    exported, loaded_config = model_io.load_model(out)
    assert loaded_config.exposure_conditioning
    vis, nir = random_pair(1, 40, 40, seed=17).values()
    with pytest.raises(ValueError, match="exposure conditioning: its tiles"):
        tiling.tiled_predict(exported, vis, nir, 2, tile=16)


def test_bfloat16_keeps_the_statistics_and_the_gain_in_float32():
    config = get_config("tiny", "baseline", scale=2, exposure_conditioning=True)
    model = perturb_weights(build_cspsr(config, precision="float32"), seed=18)
    low = build_cspsr(config, precision="bfloat16")
    low.set_weights(model.get_weights())
    for name in ("frame_statistics", "exposure_conditioning", "exposure_gain"):
        assert low.get_layer(name).compute_dtype == "float32", name
    assert low.get_layer("vis_modulation").compute_dtype == "bfloat16"
    inputs = random_pair(1, 10, 12, seed=19)
    np.testing.assert_allclose(low(inputs)["vis_sr"].numpy(), model(inputs)["vis_sr"].numpy(), atol=0.02)
