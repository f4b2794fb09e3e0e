"""Tests of cspsr_tf.predict: the library function, the file readers and the CLI."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess  # noqa: E402
import sys  # noqa: E402

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cspsr_tf import predict  # noqa: E402
from cspsr_tf.configs import get_config  # noqa: E402
from cspsr_tf.model import build_cspsr  # noqa: E402
from cspsr_tf.model_io import save_model  # noqa: E402

SCALE = 2
HEIGHT, WIDTH = 13, 17  # odd on purpose
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    keras.utils.set_random_seed(5)
    config = get_config("tiny", scale=SCALE)
    model = build_cspsr(config)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    save_model(model, config, path)
    return model, config, path


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    vis = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    nir = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    vis_path, nir_path = str(tmp_path / "left.png"), str(tmp_path / "right.png")
    cv2.imwrite(vis_path, cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
    cv2.imwrite(nir_path, nir)
    return vis, nir, vis_path, nir_path


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "cspsr_tf.predict", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_predict_pair_matches_model(saved_model, pair):
    model, config, _ = saved_model
    vis, nir, _, _ = pair
    result = predict.predict_pair(model, config, vis, nir)
    outputs = model(
        {
            "vis_lr": (vis.astype(np.float32) / 255)[np.newaxis],
            "nir_lr": (nir.astype(np.float32) / 255)[np.newaxis, ..., np.newaxis],
        },
        training=False,
    )
    expected = np.round(np.clip(np.asarray(outputs["vis_sr"])[0], 0, 1) * 255).astype(np.uint8)
    assert result["sr"].dtype == np.uint8
    assert result["sr"].shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
    # float32 round-off may move a value sitting on a rounding boundary by one level.
    assert np.abs(result["sr"].astype(int) - expected).max() <= 1
    np.testing.assert_allclose(result["disp_l"], np.asarray(outputs["disp_l"])[0, ..., 0],
                               atol=1e-5)
    tiled = predict.predict_pair(model, None, vis, nir[..., np.newaxis], tile=8, overlap=2)
    assert tiled["sr"].shape == result["sr"].shape and tiled["scale"] == SCALE


def test_cli_super_resolves_a_pair(saved_model, pair, tmp_path):
    _, _, model_path = saved_model
    _, _, vis_path, nir_path = pair
    out, disp = str(tmp_path / "out" / "sr.png"), str(tmp_path / "disp.png")
    proc = _cli("--model", model_path, "--vis", vis_path, "--nir", nir_path, "--out", out,
                "--disparity_out", disp)
    assert proc.returncode == 0, proc.stderr
    sr = cv2.imread(out, cv2.IMREAD_UNCHANGED)
    assert sr.dtype == np.uint8 and sr.shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
    assert cv2.imread(disp).shape == (HEIGHT, WIDTH, 3)
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".tmp")]


def test_cli_size_mismatch_exits_2(saved_model, pair, tmp_path):
    _, _, model_path = saved_model
    _, _, vis_path, _ = pair
    other = str(tmp_path / "wide.png")
    cv2.imwrite(other, np.zeros((HEIGHT, WIDTH + 1), np.uint8))
    out = str(tmp_path / "sr.png")
    proc = _cli("--model", model_path, "--vis", vis_path, "--nir", other, "--out", out)
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert f"{WIDTH}x{HEIGHT}" in message and f"{WIDTH + 1}x{HEIGHT}" in message
    assert vis_path in message and other in message
    assert not os.path.exists(out)


def test_cli_unreadable_and_missing_files_exit_2(saved_model, pair, tmp_path):
    _, _, model_path = saved_model
    _, _, vis_path, nir_path = pair
    broken = str(tmp_path / "broken.png")
    with open(broken, "wb") as f:
        f.write(b"not a png at all")
    out = str(tmp_path / "sr.png")
    proc = _cli("--model", model_path, "--vis", broken, "--nir", nir_path, "--out", out)
    assert proc.returncode == 2
    assert broken in proc.stderr.strip().splitlines()[-1]
    missing = str(tmp_path / "nope.png")
    proc = _cli("--model", model_path, "--vis", vis_path, "--nir", missing, "--out", out)
    assert proc.returncode == 2 and missing in proc.stderr
    assert not os.path.exists(out)


def test_missing_model_is_an_input_error(pair, tmp_path):
    _, _, vis_path, nir_path = pair
    out = str(tmp_path / "sr.png")
    missing = str(tmp_path / "missing.keras")
    with pytest.raises(predict.InputError, match="missing.keras"):
        predict.run(missing, vis_path, nir_path, out)
    assert not os.path.exists(out)


def test_16_bit_input_gives_16_bit_output(saved_model, tmp_path):
    _, _, model_path = saved_model
    rng = np.random.default_rng(1)
    vis = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
    nir = rng.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
    vis_path, nir_path = str(tmp_path / "v16.png"), str(tmp_path / "n16.tif")
    cv2.imwrite(vis_path, cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
    cv2.imwrite(nir_path, np.repeat(nir[..., np.newaxis], 3, axis=-1))  # 3 equal channels
    out, disp = str(tmp_path / "sr16.png"), str(tmp_path / "disp.npy")
    result = predict.run(model_path, vis_path, nir_path, out, disparity_out=disp)
    written = cv2.imread(out, cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16 and written.shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
    np.testing.assert_array_equal(cv2.cvtColor(written, cv2.COLOR_BGR2RGB), result["sr"])
    np.testing.assert_allclose(written[..., ::-1] / 65535.0, result["sr_float"], atol=1e-5)
    assert np.load(disp).shape == (HEIGHT, WIDTH)
    # 16-bit precision is kept: not just 8-bit values times 257.
    assert np.any(written % 257 != 0)


def test_readers_channel_rules(tmp_path):
    rng = np.random.default_rng(2)
    bgra = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    path = str(tmp_path / "rgba.png")
    cv2.imwrite(path, bgra)
    np.testing.assert_array_equal(predict.read_vis(path), bgra[..., 2::-1])
    grey_path = str(tmp_path / "grey.png")
    cv2.imwrite(grey_path, bgra[..., 0])
    with pytest.raises(predict.InputError, match="1 channel"):
        predict.read_vis(grey_path)
    colour_path = str(tmp_path / "colour.png")
    cv2.imwrite(colour_path, bgra[..., :3])
    np.testing.assert_array_equal(
        predict.read_nir(colour_path), cv2.cvtColor(bgra[..., :3], cv2.COLOR_BGR2GRAY)
    )
    equal_path = str(tmp_path / "equal.png")
    cv2.imwrite(equal_path, np.repeat(bgra[..., :1], 3, axis=-1))
    np.testing.assert_array_equal(predict.read_nir(equal_path), bgra[..., 0])


def test_bad_output_arguments(pair, tmp_path):
    _, _, vis_path, nir_path = pair
    with pytest.raises(predict.InputError, match="unsupported extension"):
        predict.run("m.keras", vis_path, nir_path, str(tmp_path / "sr.gif"))
    with pytest.raises(predict.InputError, match="--tile"):
        predict.run("m.keras", vis_path, nir_path, str(tmp_path / "sr.png"), tile=0)
