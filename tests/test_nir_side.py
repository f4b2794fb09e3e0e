"""Rigs with the NIR camera on the left (`--nir_side=left`): mirrored in, run, mirrored back.

Every check compares a NIR-left pair (a NIR-right pair mirrored left-right, which is what a
NIR-left rig records of the mirrored scene) run with `nir_side="left"` against the mirror
image of the NIR-right pair's outputs, computed by calling the model directly.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from cspsr_tf import from_preset, predict  # noqa: E402
from cspsr_tf.data import pipeline  # noqa: E402
from cspsr_tf.export import litert_export, savedmodel_export  # noqa: E402
from cspsr_tf.infer import tiling  # noqa: E402
from cspsr_tf.model import model_io, runtime  # noqa: E402
from tests.cross_spectral_pairs import cross_spectral_pair  # noqa: E402
from tests.model_helpers import tiny_perturbed_model  # noqa: E402

# One xdist worker runs this module (make test: --dist loadgroup), so its module fixtures
# (models, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("test_nir_side")

SCALE = 2
HEIGHT, WIDTH = 24, 40


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model, config = tiny_perturbed_model(scale=SCALE, seed=3)
    path = str(tmp_path_factory.mktemp("nir_side") / "tiny.keras")
    model_io.save_model(model, config, path)
    return model, config, path


@pytest.fixture(scope="module")
def right_pair():
    rng = np.random.default_rng(1)
    vis = rng.random((1, HEIGHT, WIDTH, 3), dtype=np.float32)
    nir = rng.random((1, HEIGHT, WIDTH, 1), dtype=np.float32)
    return vis, nir


def _direct(model, vis, nir):
    outputs = model({"vis_lr": vis, "nir_lr": nir}, training=False)
    return {key: np.asarray(value) for key, value in outputs.items()}


def _mirrored(array):
    return np.ascontiguousarray(np.asarray(array)[:, :, ::-1])


def test_mirror_views_reverses_the_width_axis_only():
    image = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # H, W, C
    assert np.array_equal(tiling.mirror_views(image)[:, 0], image[:, 2])
    batch = np.arange(1 * 2 * 3 * 1).reshape(1, 2, 3, 1)
    assert np.array_equal(tiling.mirror_views(batch)[0, :, :, 0], batch[0, :, ::-1, 0])
    assert np.array_equal(tiling.mirror_views(np.array([[1, 2, 3]])), [[3, 2, 1]])


@pytest.mark.parametrize("tile", [None, 32])
def test_left_pair_gives_the_mirrored_outputs_of_the_right_pair(tiny, right_pair, tile):
    model, config, _ = tiny
    vis, nir = right_pair
    expected = _direct(model, vis, nir)
    got = tiling.predict(model, _mirrored(vis), _mirrored(nir), SCALE, tile=tile,
                         overlap=4, config=config, nir_side="left",
                         keys=("vis_sr", "disp_l"))
    # Tiled runs match the whole frame to round-off (tests/test_tiling.py).
    tolerance = 1e-5 if tile is None else 2e-3
    np.testing.assert_allclose(got["vis_sr"], _mirrored(expected["vis_sr"]), atol=tolerance)
    np.testing.assert_allclose(got["disp_l"], _mirrored(expected["disp_l"]), atol=tolerance)
    # Run as a right pair, the mirrored pair gives something else (the check can fail).
    plain = tiling.predict(model, _mirrored(vis), _mirrored(nir), SCALE, keys=("vis_sr",))
    assert np.abs(plain["vis_sr"] - got["vis_sr"]).max() > 1e-3


def test_unknown_side_is_refused(tiny, right_pair):
    model, config, _ = tiny
    with pytest.raises(ValueError, match="nir_side must be one of right, left"):
        tiling.predict(model, *right_pair, SCALE, nir_side="top")
    with pytest.raises(runtime.RunSetupError, match="--nir_side='top'"):
        runtime.needs_mirroring(model, "top")


def test_shipped_preset_finds_the_disparity_of_a_left_rig_only_when_told():
    """The trained preset on a NIR-left pair: with nir_side=left its disparity is the true
    one; run as a right pair, the NIR lies on the wrong side and the disparity is lost."""
    model = from_preset("cspsr_small_x4")
    scale = 4
    shift = 4
    vis, nir = cross_spectral_pair(np.random.default_rng(7), 48, 96, shift, sigma=2.0)
    right = tiling.predict(model, vis, nir, scale, keys=("disp_l",))["disp_l"]
    left_vis, left_nir = _mirrored(vis), _mirrored(nir)
    told = tiling.predict(model, left_vis, left_nir, scale, keys=("disp_l",),
                          nir_side="left")["disp_l"]
    untold = tiling.predict(model, left_vis, left_nir, scale, keys=("disp_l",))["disp_l"]
    interior = (slice(None), slice(8, -8), slice(16, -16))  # away from the borders
    np.testing.assert_allclose(told, _mirrored(right), atol=1e-4)
    assert abs(np.median(told[interior]) - shift) < 1.0
    assert abs(np.median(untold[interior]) - shift) > 2.0


def _write_pair(folder, name, vis, nir):
    vis_path, nir_path = str(folder / f"{name}_rgb.png"), str(folder / f"{name}_nir.png")
    cv2.imwrite(vis_path, cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
    cv2.imwrite(nir_path, nir)
    return vis_path, nir_path


def test_predict_cli_path_mirrors_both_outputs(tiny, tmp_path):
    model, _, path = tiny
    rng = np.random.default_rng(2)
    vis = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    nir = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    vis_path, nir_path = _write_pair(tmp_path, "left_rig", vis[:, ::-1], nir[:, ::-1])
    out, disparity = str(tmp_path / "sr.png"), str(tmp_path / "disp.npy")
    predict.run(path, vis_path, nir_path, out, disparity_out=disparity, precision="float32",
                nir_side="left")
    expected = _direct(model, vis[np.newaxis].astype(np.float32) / 255,
                       nir[np.newaxis, ..., np.newaxis].astype(np.float32) / 255)
    sr = cv2.cvtColor(cv2.imread(out), cv2.COLOR_BGR2RGB)
    want = np.round(np.clip(expected["vis_sr"][0], 0, 1) * 255)[:, ::-1]
    assert np.abs(sr.astype(int) - want.astype(int)).max() <= 1
    np.testing.assert_allclose(np.load(disparity), expected["disp_l"][0, :, ::-1, 0], atol=1e-4)


def test_predict_pairs_take_the_side_too(tiny, tmp_path):
    _, _, path = tiny
    rng = np.random.default_rng(4)
    vis = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    nir = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    _write_pair(tmp_path, "a", vis, nir)
    (tmp_path / "pairs.csv").write_text("rgb,nir\na_rgb.png,a_nir.png\n")
    one = str(tmp_path / "one.png")
    predict.run(path, str(tmp_path / "a_rgb.png"), str(tmp_path / "a_nir.png"), one,
                precision="float32", nir_side="left")
    summary = predict.run_pairs(path, str(tmp_path / "pairs.csv"), str(tmp_path / "sr"),
                                precision="float32", nir_side="left", progress=lambda _: None)
    assert summary["written"] == 1 and not summary["failed"]
    assert np.array_equal(cv2.imread(one), cv2.imread(str(tmp_path / "sr" / "a_rgb.png")))


def test_savedmodel_export_bakes_the_mirroring_in(tiny, right_pair, tmp_path):
    model, config, path = tiny
    vis, nir = right_pair
    out = savedmodel_export.export_from_path(path, str(tmp_path / "left" / "1"), ops="shift",
                                             nir_side="left")
    with open(os.path.join(out, model_io.METADATA_FILE)) as f:
        assert json.load(f)["nir_side"] == "left"
    serving = tf.saved_model.load(out).signatures["serving_float"]
    got = serving(vis_lr=tf.constant(_mirrored(vis)), nir_lr=tf.constant(_mirrored(nir)))
    expected = _direct(model, vis, nir)
    np.testing.assert_allclose(got["vis_sr"], _mirrored(expected["vis_sr"]), atol=1e-5)
    np.testing.assert_allclose(got["disp_l"], _mirrored(expected["disp_l"]), atol=1e-5)
    # Loaded back, the export takes left pairs as they are; asked for a right pair, it is
    # mirrored around the baked-in mirroring.
    loaded, _ = model_io.load_model(out)
    assert runtime.model_nir_side(loaded) == "left"
    assert not runtime.needs_mirroring(loaded, None)
    assert not runtime.needs_mirroring(loaded, "left")
    assert runtime.needs_mirroring(loaded, "right")
    right = tiling.predict(loaded, vis, nir, SCALE, nir_side="left")  # mirrored twice
    np.testing.assert_allclose(right["vis_sr"], expected["vis_sr"], atol=1e-5)


def test_litert_file_of_a_left_rig(tiny, right_pair, tmp_path):
    model, _, path = tiny
    vis, nir = right_pair
    out = str(tmp_path / "left.tflite")
    litert_export.export_from_path(path, out, lr_size=(HEIGHT, WIDTH), nir_side="left")
    got = litert_export.LiteRTRunner(out)(_mirrored(vis), _mirrored(nir))
    expected = _direct(model, vis, nir)
    np.testing.assert_allclose(got["vis_sr"], _mirrored(expected["vis_sr"]), atol=1e-4)
    np.testing.assert_allclose(got["disp_l"], _mirrored(expected["disp_l"]), atol=1e-3)


def _frames(ds):
    return [{key: np.asarray(value) for key, value in {**inputs, **targets}.items()}
            for inputs, targets, _ in ds]


def test_eval_and_training_data_of_a_left_rig_are_mirrored():
    rng = np.random.default_rng(0)
    examples = {
        "vis": rng.integers(0, 256, (2, 16, 24, 3), dtype=np.uint8),
        "nir": rng.integers(0, 256, (2, 16, 24, 1), dtype=np.uint8),
        "id": np.array([b"a", b"b"]),
    }
    raw = tf.data.Dataset.from_tensor_slices(examples)
    plain = _frames(pipeline.make_eval_dataset(raw, scale=SCALE))
    mirrored = _frames(pipeline.make_eval_dataset(raw, scale=SCALE, mirror=True))
    for a, b in zip(plain, mirrored, strict=True):
        for key in ("vis_lr", "nir_lr", "vis_hr"):
            np.testing.assert_allclose(b[key], _mirrored(a[key]), atol=1e-6)
    # Training: whole-frame patches, no random downscale or flips, so the crop is the frame.
    square = raw.map(lambda e: {**e, "vis": e["vis"][:, :16], "nir": e["nir"][:, :16]})
    options = dict(scale=SCALE, hr_patch_size=16, batch_size=1, seed=0, random_downscale=None,
                   vertical_flip=False, shuffle_buffer=0, repeat=False)
    plain = list(pipeline.make_training_dataset(square, **options))
    mirrored = list(pipeline.make_training_dataset(square, mirror=True, **options))
    assert len(plain) == 2
    for (a_in, a_out), (b_in, b_out) in zip(plain, mirrored, strict=True):
        np.testing.assert_allclose(b_in["vis_lr"], _mirrored(a_in["vis_lr"]), atol=1e-6)
        np.testing.assert_allclose(b_in["nir_lr"], _mirrored(a_in["nir_lr"]), atol=1e-6)
        np.testing.assert_allclose(b_out["vis_hr"], _mirrored(a_out["vis_hr"]), atol=1e-6)


def test_training_config_checks_the_side():
    from cspsr_tf.model.configs import CSPSRConfig
    from cspsr_tf.train import run_config

    train = run_config.TrainConfig(nir_side="up", model_dir="unused")
    with pytest.raises(run_config.ConfigError, match=r"--nir_side='up' is not one of: right, left"):
        run_config.validate_configs(train, CSPSRConfig(scale=2))
