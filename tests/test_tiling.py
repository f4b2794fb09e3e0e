"""Tests of cspsr_tf.infer.tiling: tiled inference against whole-frame inference of the same model."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from skimage import data  # noqa: E402

from cspsr_tf.infer import tiling  # noqa: E402
from cspsr_tf.model.build import build_cspsr  # noqa: E402
from cspsr_tf.model.configs import get_config  # noqa: E402

# One xdist worker runs this module (make test: --dist loadgroup), so its module fixtures
# (models, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("test_tiling")

SCALE = 2
# Odd LR size that none of the tile sizes below divides.
LR_HEIGHT, LR_WIDTH = 45, 61


def _numpy_psnr(a, b):
    """PSNR in dB of two [0, 1] float images after 8-bit rounding (numpy only)."""
    a = np.round(np.clip(a, 0, 1) * 255).astype(np.float64)
    b = np.round(np.clip(b, 0, 1) * 255).astype(np.float64)
    mse = np.mean((a - b) ** 2)
    return np.inf if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _random_reconstruction(model, std=0.01, seed=0):
    """Gives the reconstruction convs small random kernels.

    With the bicubic global skip the model zero-initialises them, so an untrained model
    outputs exactly the bicubic image and tiling would be tested on bicubic alone. Small
    random kernels make the SR output depend on every branch (CVM, DMF, CSFT) while keeping
    it at a realistic PSNR against the HR frame, where a 0.05 dB tolerance means something.
    """
    rng = np.random.default_rng(seed)
    for name in ("vis_recon_conv", "nir_recon_conv"):
        try:
            layer = model.get_layer(name)
        except ValueError:
            continue
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(0, std, kernel.shape).astype(np.float32), bias])


@pytest.fixture(scope="module")
def frame():
    hr = data.astronaut()[60 : 60 + LR_HEIGHT * SCALE, 140 : 140 + LR_WIDTH * SCALE]
    hr = hr.astype(np.float32) / 255
    # Box-filter downscaling is enough here: both paths get the same LR input.
    lr = hr.reshape(LR_HEIGHT, SCALE, LR_WIDTH, SCALE, 3).mean(axis=(1, 3))
    # A fake right-view NIR: the luma shifted 3 px to the left (disparity 3).
    nir = np.roll(lr.mean(axis=-1, keepdims=True), -3, axis=1)
    return hr, lr, nir


@pytest.fixture(scope="module")
def dual_model():
    keras.utils.set_random_seed(1)
    model = build_cspsr(get_config("tiny", scale=SCALE))
    _random_reconstruction(model)
    return model


@pytest.fixture(scope="module")
def whole(dual_model, frame):
    _, lr, nir = frame
    return tiling.predict_whole(dual_model, lr, nir)


@pytest.mark.parametrize(
    "tile, overlap, frame_matching",
    [(24, 6, None), ((20, 27), 5, None), (tiling.MIN_TILE, 0, True)],
    ids=["24-overlap6", "20x27-overlap5", "32-no-overlap"],
)
def test_tiled_matches_whole_frame(dual_model, frame, whole, tile, overlap, frame_matching):
    """With the derived context (the receptive field, 11 px here) only CSFT's global pool
    differs, a tile averaging over its own window; below predict's minimum tile that drifts
    further (measured: 0.0023 dB for 16 x 16 tiles without overlap, 38 px windows)."""
    hr, lr, nir = frame
    stats = {}
    tiled = {}
    for _start, _stop, bands in tiling.iter_tiled_rows(
        dual_model, lr, nir, SCALE, tile=tile, overlap=overlap, frame_matching=frame_matching,
        stats=stats,
    ):
        for key, band in bands.items():
            tiled.setdefault(key, []).append(band)
    tiled = {key: np.concatenate(bands)[np.newaxis] for key, bands in tiled.items()}
    # The CVM is not local: it runs on the whole frame by default.
    assert stats["frame_matching"] is True

    assert set(tiled) == set(whole)
    for key, value in whole.items():
        assert tiled[key].shape == value.shape, key
        assert tiled[key].dtype == np.float32
    assert tiled["vis_sr"].shape == (1, LR_HEIGHT * SCALE, LR_WIDTH * SCALE, 3)
    assert tiled["disp_l"].shape == (1, LR_HEIGHT, LR_WIDTH, 1)

    psnr_whole = _numpy_psnr(whole["vis_sr"][0], hr)
    psnr_tiled = _numpy_psnr(tiled["vis_sr"][0], hr)
    assert 20 < psnr_whole < 60  # a realistic regime for the tolerance below
    # What the README claims: tiled is within 0.001 dB of whole-frame inference.
    assert abs(psnr_tiled - psnr_whole) < 0.001
    # Tiled vs whole directly: only the CSFT's global pooling differs between them
    # (measured: 68-73 dB, at most 3e-4 apart).
    assert _numpy_psnr(tiled["vis_sr"][0], whole["vis_sr"][0]) > 60
    np.testing.assert_allclose(tiled["vis_sr"], whole["vis_sr"], atol=2e-3)
    # On the frame, the CVM's outputs are cropped from the whole-frame ones.
    for key in ("disp_l", "disp_r", "nir_l"):
        np.testing.assert_allclose(tiled[key], whole[key], atol=1e-5, err_msg=key)


def test_frames_too_large_for_the_whole_frame_cvm_match_per_tile(dual_model):
    big = int(tiling.FRAME_MATCHING_MAX_PIXELS ** 0.5) + 1
    assert tiling.default_frame_matching(dual_model, 10, 10) is True
    assert tiling.default_frame_matching(dual_model, big, big) is False
    assert tiling.default_frame_matching(dual_model) is True


def test_group_norm_cvm_needs_the_whole_frame_pass():
    """A group-norm CVM normalises over the input it sees (and the NCC^2 floor is relative to
    the whole image): per tile its disparities drift from the whole frame's; the whole-frame
    CVM pass, the default, reproduces them."""
    # Larger than the fixture frame, so that a tile's input (core, context and disparity
    # margin, the CVM's stride: 132 x 180 LR px) is smaller than the frame (160 x 200).
    lr = data.astronaut()[50:370:2, 50:450:2].astype(np.float32) / 255
    nir = np.roll(lr.mean(axis=-1, keepdims=True), -3, axis=1)
    keras.utils.set_random_seed(3)
    model = build_cspsr(get_config("tiny", scale=SCALE, cvm_normalization="group"))
    _random_reconstruction(model)
    # Non-zero heads, so the network's normalised features reach the disparities.
    for layer in model.get_layer("cvm").heads:
        kernel, bias = layer.get_weights()
        layer.set_weights([np.random.default_rng(4).normal(0, 0.05, kernel.shape).astype(
            np.float32), bias])
    whole = tiling.predict_whole(model, lr, nir)
    assert tiling.default_frame_matching(model) is True
    framed = tiling.tiled_predict(model, lr, nir, SCALE, tile=64, overlap=6)
    stats = {}
    per_tile = tiling.tiled_predict(model, lr, nir, SCALE, tile=64, overlap=6,
                                    frame_matching=False, stats=stats)
    assert stats["input_shape"] == (132, 180)
    np.testing.assert_allclose(framed["disp_l"], whole["disp_l"], atol=1e-5)
    np.testing.assert_allclose(framed["vis_sr"], whole["vis_sr"], atol=2e-3)
    drift = np.abs(per_tile["disp_l"] - whole["disp_l"]).max()
    assert drift > 1e-2, drift


def test_after_matching_model_shares_the_layers(dual_model, frame, whole):
    _, lr, nir = frame
    runner = tiling.after_matching_model(dual_model)
    assert tiling.after_matching_model(dual_model) is runner  # built once
    model_weights = {id(v) for v in dual_model.weights}
    assert runner.weights and all(id(v) in model_weights for v in runner.weights)
    assert not any(layer.name == "cvm" for layer in runner.layers)
    matched = tiling.match_frame(dual_model.get_layer("cvm"), lr, nir)
    outputs = runner([lr[np.newaxis], *(matched[np.newaxis, ..., i : i + 1] for i in range(3))])
    for key, value in whole.items():
        np.testing.assert_allclose(np.asarray(outputs[key]), value, atol=1e-6, err_msg=key)


def test_tiled_self_ensemble_matches_whole_frame(dual_model, frame):
    """Each tile averaged with its own flipped pass ~ the whole frame and its flip."""
    _, lr, nir = frame
    whole = tiling.predict(dual_model, lr, nir, SCALE, self_ensemble=True)
    tiled = tiling.predict(dual_model, lr, nir, SCALE, tile=24, overlap=6, self_ensemble=True,
                           keys=("vis_sr", "disp_l"))
    assert set(tiled) == {"vis_sr", "disp_l"}
    np.testing.assert_allclose(tiled["vis_sr"], whole["vis_sr"], atol=2e-3)
    np.testing.assert_allclose(tiled["disp_l"], whole["disp_l"], atol=1e-4)
    plain = tiling.predict(dual_model, lr, nir, SCALE, tile=24, overlap=6, keys=("vis_sr",))
    assert np.abs(plain["vis_sr"] - tiled["vis_sr"]).max() > 1e-3  # the flip did something


def test_rows_are_handed_over_in_bounded_bands(dual_model, frame, whole):
    """Memory: only requested outputs, in bands of at most one tile row, top to bottom."""
    _, lr, nir = frame
    vis8 = np.round(lr * 255).astype(np.uint8)  # integer frames are converted tile by tile
    nir8 = np.round(nir * 255).astype(np.uint8)
    stats = {}
    stops = [0]
    rows = []
    for start, stop, bands in tiling.iter_tiled_rows(
        dual_model, vis8, nir8, SCALE, keys=["vis_sr"], tile=16, overlap=4, stats=stats
    ):
        assert start == stops[-1] and set(bands) == {"vis_sr"}
        assert bands["vis_sr"].shape == ((stop - start) * SCALE, LR_WIDTH * SCALE, 3)
        assert bands["vis_sr"].shape[0] <= 16 * SCALE
        stops.append(stop)
        rows.append(bands["vis_sr"])
    assert stops[-1] == LR_HEIGHT and stats["tiles"] == stats["forward_passes"] == 4 * 5
    stitched = np.concatenate(rows)
    reference = tiling.predict_whole(dual_model, vis8 / 255.0, nir8 / 255.0)["vis_sr"][0]
    assert _numpy_psnr(stitched, reference) > 60


def test_model_output_is_not_just_bicubic(frame, whole):
    """Guards the premise of the comparisons: the SR output depends on the network."""
    _, lr, _ = frame
    bicubic = tf.image.resize(lr[np.newaxis], [LR_HEIGHT * SCALE, LR_WIDTH * SCALE], "bicubic")
    assert np.abs(whole["vis_sr"] - bicubic.numpy()).max() > 0.02


def test_local_model_tiles_exactly(frame):
    """Without CVM and CSFT pooling every op is local: tiling must be exact."""
    _, lr, nir = frame
    keras.utils.set_random_seed(2)
    model = build_cspsr(get_config("tiny", ablation="baseline", scale=SCALE))
    _random_reconstruction(model, std=0.05)
    expected = tiling.predict_whole(model, lr, nir)
    tiled = tiling.tiled_predict(model, lr, nir, SCALE, tile=(19, 23), overlap=4, batch=3)
    assert set(tiled) == {"vis_sr"}
    assert tiled["vis_sr"].shape == (1, LR_HEIGHT * SCALE, LR_WIDTH * SCALE, 3)
    np.testing.assert_allclose(tiled["vis_sr"], expected["vis_sr"], atol=2e-5)


def test_tile_larger_than_frame_is_whole_frame(dual_model, frame, whole):
    _, lr, nir = frame
    tiled = tiling.tiled_predict(dual_model, lr[np.newaxis], nir[np.newaxis], SCALE, tile=500)
    for key, value in whole.items():
        np.testing.assert_allclose(tiled[key], value, atol=1e-6, err_msg=key)


def test_window_starts_cover_the_axis():
    for length, tile, overlap in [(45, 24, 6), (61, 27, 5), (10, 10, 3), (7, 20, 2), (33, 8, 0)]:
        starts = tiling.window_starts(length, tile, overlap)
        covered = np.zeros(length, bool)
        for start in starts:
            covered[start : start + min(tile, length)] = True
        assert covered.all()
        assert starts[0] == 0 and starts[-1] == max(0, length - tile)
        shared = [a + tile - b for a, b in zip(starts, starts[1:], strict=False)]
        assert all(s >= overlap for s in shared)


def test_feather_weights_cross_fade_to_one():
    band = 6
    left = tiling.feather_weights(20, band, ramp_start=False, ramp_end=True)
    right = tiling.feather_weights(20, band, ramp_start=True, ramp_end=False)
    # Two windows overlapping by exactly `band` pixels: the weights add up to one there.
    np.testing.assert_allclose(left[-band:] + right[:band], np.ones(band), atol=1e-6)
    np.testing.assert_array_equal(left[:-band], 1.0)
    assert np.all(right > 0)


def test_bad_arguments(dual_model, frame):
    _, lr, nir = frame
    with pytest.raises(ValueError, match="overlap must be smaller"):
        tiling.tiled_predict(dual_model, lr, nir, SCALE, tile=8, overlap=8)
    with pytest.raises(ValueError, match="differ in size"):
        tiling.tiled_predict(dual_model, lr, nir[:-1], SCALE, tile=16)
    with pytest.raises(ValueError, match="not scale=4"):
        tiling.tiled_predict(dual_model, lr, nir, 4, tile=40, overlap=4)
    baseline = build_cspsr(get_config("tiny", ablation="baseline", scale=SCALE))
    with pytest.raises(ValueError, match="frame_matching needs a model with a stereo CVM"):
        tiling.tiled_predict(baseline, lr, nir, SCALE, tile=16, frame_matching=True)


# --- Receptive field, context and tile shapes (issue 30, items 4-5) -------------------------


def _cut_global_pool(model, config):
    """Zeroes every CSFT's channel-gate kernel, so its global average pool no longer reaches
    the output: the network is then local, with exactly its convolutions' reach."""
    if config.architecture != "dual" or not config.use_csft:
        return model
    for t in range(config.num_modules):
        conv = model.get_layer(f"dmf{t + 1}").fusion.channel_conv
        kernel, bias = conv.get_weights()
        conv.set_weights([np.zeros_like(kernel), bias])
    return model


def _measured_reach(model, width, height=3, seed=0):
    """(left, right): how far from an output column the inputs with a non-zero gradient lie,
    in LR columns (the gradient of every output at that column)."""
    rng = np.random.default_rng(seed)
    vis = tf.constant(rng.random((1, height, width, 3), np.float32))
    nir = tf.constant(rng.random((1, height, width, 1), np.float32))
    column = width // 2
    with tf.GradientTape() as tape:
        tape.watch([vis, nir])
        outputs = model({"vis_lr": vis, "nir_lr": nir}, training=False)
        total = sum(tf.reduce_sum(outputs[key][:, :, column * SCALE : (column + 1) * SCALE])
                    for key in ("vis_sr", "nir_sr") if key in outputs)
    gradients = [g for g in tape.gradient(total, [vis, nir]) if g is not None]
    reached = np.nonzero(sum(np.abs(g.numpy()).sum(axis=(0, 1, 3)) for g in gradients))[0]
    return column - reached.min(), reached.max() - column


def _reach_model(preset, ablation, seed=0, **overrides):
    """A model without CVM (not local) and with CSFT's pool cut, large random weights (so no
    path's gradient underflows), and plain ops (the gradients of every op)."""
    from tests.model_helpers import perturb_weights

    config = get_config(preset, ablation, scale=SCALE, channels=4, use_cvm=False,
                        dynamic_conv_implementation="shift", **overrides)
    keras.utils.set_random_seed(seed)
    model = perturb_weights(build_cspsr(config), seed=seed, stddev=0.3)
    return _cut_global_pool(model, config), config


@pytest.mark.parametrize("ablation, overrides", [
    ("full", {}), ("wo_dyconv", {}), ("wo_csft", {"kernel_size": 5}), ("baseline", {}),
    ("full_gf", {}), ("full_zero_conv", {}),
    ("full_zero_conv", {"use_csft": False, "use_dynamic_conv": False}),
], ids=["full", "wo_dyconv", "wo_csft-k5", "baseline", "guided_filter", "zero_conv",
        "zero_conv-plain-dmf"])
def test_receptive_field_is_the_reach_of_the_built_model(ablation, overrides):
    """The formula against the gradient of a built model: the inputs one output column
    depends on lie exactly `receptive_field` LR columns to either side (tiny depth, where
    no path underflows; each layer type once)."""
    model, config = _reach_model("tiny", ablation, **overrides)
    expected = tiling.receptive_field(config)
    assert _measured_reach(model, width=4 * expected) == (expected, expected)
    # A .keras file without its config: the same figure from the model's layers.
    assert tiling.receptive_field(tiling._config_from_layers(model)) == expected


def test_receptive_field_of_the_presets():
    assert tiling.receptive_field(get_config("paper")) == 50  # 4 + 15 * 3 + 1
    assert tiling.receptive_field(get_config("small")) == 17
    assert tiling.receptive_field(get_config("tiny")) == 11
    assert tiling.receptive_field(get_config("paper", "wo_csft")) == 35
    paper = get_config("paper")
    assert tiling.tile_context(None, paper, frame_matching=True) == 50
    # The CVM tile by tile: its cost volume's reach (5 + 6 + 9 px of Gaussian windows) too.
    assert tiling.MATCHING_CONTEXT == 20
    assert tiling.tile_context(None, paper, frame_matching=False) == 70
    aligned = paper.replace(geometry="aligned")
    assert tiling.tile_context(None, aligned, frame_matching=False) == 50
    assert tiling.minimum_tile(50, overlap=8, align=1) == 50
    assert tiling.minimum_tile(11, overlap=8, align=1) == tiling.MIN_TILE == 32
    assert tiling.minimum_tile(11, overlap=20, align=4) == 44


def test_paper_depth_reach_exceeds_the_old_context_and_stays_within_the_derived_one():
    """At the paper preset's depth (T = 15) a built model's measured reach is far beyond the
    fixed context of 24 px that tiles had, and never beyond the derived context. (Deep paths
    pass many sigmoid gates, so the gradient vanishes a little short of the full 50 px.)"""
    model, config = _reach_model("paper", "full")
    assert config.num_modules == 15
    left, right = _measured_reach(model, width=128)
    context = tiling.tile_context(model, config, frame_matching=True)
    assert context == tiling.receptive_field(config) == 50
    assert tiling.DEFAULT_CONTEXT < min(left, right) <= max(left, right) <= context


@pytest.fixture(scope="module")
def paper_depth():
    """The paper preset's depth (15 DMF modules, a 4-stage CVM), 4 channels (speed), with
    realistic small random weights; an astronaut crop 40 x 200 LR."""
    from tests.model_helpers import perturb_weights

    config = get_config("paper", scale=SCALE, channels=4, cvm_base_channels=4)
    keras.utils.set_random_seed(7)
    model = perturb_weights(build_cspsr(config), seed=7, stddev=0.05)
    hr = data.astronaut()[40 : 40 + 40 * SCALE, 20 : 20 + 200 * SCALE].astype(np.float32) / 255
    lr = hr.reshape(40, SCALE, 200, SCALE, 3).mean(axis=(1, 3))
    nir = np.roll(lr.mean(axis=-1, keepdims=True), -3, axis=1)
    return model, config, hr, lr, nir


def _tiled_vis_sr(model, config, lr, nir, stats):
    bands = tiling.iter_tiled_rows(model, lr, nir, SCALE, keys=["vis_sr"], tile=(40, 48),
                                   overlap=8, config=config, stats=stats)
    return np.concatenate([band["vis_sr"] for _, _, band in bands])[np.newaxis]


def test_tiled_matches_whole_frame_at_the_paper_depth(paper_depth):
    """The README's claim at T = 15: tiles cut every 40-48 columns, each with the derived
    context (50 px), reproduce the whole frame within 0.001 dB; with CSFT's global pool cut
    (the only non-local part after the CVM) they reproduce it to float rounding."""
    model, config, hr, lr, nir = paper_depth
    stats = {}
    whole = tiling.predict_whole(model, lr, nir)["vis_sr"]
    tiled = _tiled_vis_sr(model, config, lr, nir, stats)
    assert stats["context"] == 50 and stats["frame_matching"] is True
    assert stats["tiles"] == 5 and stats["input_shape"] == (40, 148)
    psnr_whole = _numpy_psnr(whole[0], hr)
    assert 20 < psnr_whole < 60
    assert abs(_numpy_psnr(tiled[0], hr) - psnr_whole) < 0.001
    np.testing.assert_allclose(tiled, whole, atol=1e-3)
    _cut_global_pool(model, config)
    local_whole = tiling.predict_whole(model, lr, nir)["vis_sr"]
    local_tiled = _tiled_vis_sr(model, config, lr, nir, {})
    assert np.abs(local_whole - whole).max() > 1e-6  # the cut pool changed the output
    np.testing.assert_allclose(local_tiled, local_whole, atol=2e-6)


def test_tile_plan_windows_have_one_shape_and_hold_their_context():
    rng = np.random.default_rng(0)
    checked = 0
    while checked < 500:
        height, width = (int(v) for v in rng.integers(1, 300, 2))
        tile = int(rng.integers(1, 120))
        overlap = int(rng.integers(0, tile))
        context, disparity = int(rng.integers(0, 60)), float(rng.integers(0, 30))
        align = int(rng.choice([1, 2, 4, 8, 16]))
        plan = tiling.TilePlan(height, width, tile, overlap, context, disparity, align)
        assert set(plan.input_shapes(self_ensemble=True)) == {(plan.in_h, plan.in_w)}
        for y0, y1, cy0, cy1, fy0, fy1 in plan.rows:
            for first, last in ((cy0, cy1), (fy0, fy1)):
                assert 0 <= first and last <= height
                assert first <= max(0, y0 - context) and last >= min(height, y1 + context)
            # Plain windows start on the CVM's grid, flipped ones end on it (from the bottom).
            assert cy0 % align == 0 and (height - fy1) % align == 0
        for x0, x1, cx0, cx1 in plan.cols:
            assert 0 <= cx0 and cx1 <= width and cx0 % align == 0
            assert cx0 <= max(0, x0 - plan.context_h) and cx1 >= min(width, x1 + plan.context_h)
        checked += 1


@pytest.mark.parametrize("self_ensemble, frame_matching", [(False, None), (True, None),
                                                           (False, False)],
                         ids=["plain", "self-ensemble", "cvm-per-tile"])
def test_every_tile_has_one_input_shape(dual_model, monkeypatch, self_ensemble, frame_matching):
    """The issue's 101x67 frame: edge tiles used to be smaller, one trace per shape."""
    rng = np.random.default_rng(3)
    lr = rng.random((67, 101, 3), np.float32)
    nir = rng.random((67, 101, 1), np.float32)
    shapes = []
    run_model = tiling._run_model

    def recording(model, vis, nir_input, keys=None):
        shapes.append((vis.shape, tuple(np.shape(x) for x in (
            nir_input if isinstance(nir_input, list) else [nir_input]))))
        return run_model(model, vis, nir_input, keys)

    monkeypatch.setattr(tiling, "_run_model", recording)
    out = tiling.predict(dual_model, lr, nir, SCALE, tile=32, overlap=8, keys=["vis_sr"],
                         self_ensemble=self_ensemble, frame_matching=frame_matching, batch=3)
    assert out["vis_sr"].shape == (1, 67 * SCALE, 101 * SCALE, 3)
    # 3 rows of 4 tiles (per pass), in batches of 3; a short last batch is filled up.
    passes = 2 if self_ensemble else 1
    assert len(shapes) == 3 * -(-4 * passes // 3)
    assert len(set(shapes)) == 1, set(shapes)
    assert shapes[0][0][0] == 3
