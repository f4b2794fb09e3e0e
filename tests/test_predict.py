"""Tests of cspsr_tf.predict: the library function, the file readers and the CLI."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import errno  # noqa: E402
import io  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cspsr_tf import predict  # noqa: E402
from cspsr_tf.infer import tiling  # noqa: E402
from cspsr_tf.model.model_io import save_model  # noqa: E402
from tests.cli_runner import run_cli, start_cli  # noqa: E402
from tests.model_helpers import tiny_perturbed_model  # noqa: E402

# One xdist worker runs this module (make test: --dist loadgroup), so its module fixtures
# (models, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("test_predict")

SCALE = 2
HEIGHT, WIDTH = 13, 17  # odd on purpose
# The frame for tiles: large enough for several tiles of the smallest size (32).
BIG_HEIGHT, BIG_WIDTH = 67, 101
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    # Random weights everywhere: an untrained model's vis_sr is just the bicubic image.
    keras.utils.set_random_seed(5)
    model, config = tiny_perturbed_model(scale=SCALE, seed=5)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    save_model(model, config, path)
    return model, config, path


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    """A baseline (no CVM, no CSFT pooling) model: every op is local, so tiles are exact."""
    keras.utils.set_random_seed(6)
    model, config = tiny_perturbed_model(scale=SCALE, ablation="baseline", seed=6)
    path = str(tmp_path_factory.mktemp("model") / "local.keras")
    save_model(model, config, path)
    return model, config, path


def _model_outputs(model, vis, nir):
    """The model called directly on the pair, outside the code under test."""
    peak = float(np.iinfo(vis.dtype).max)
    outputs = model(
        {
            "vis_lr": (vis.astype(np.float32) / peak)[np.newaxis],
            "nir_lr": (nir.astype(np.float32) / peak)[np.newaxis, ..., np.newaxis],
        },
        training=False,
    )
    sr = np.clip(np.asarray(outputs["vis_sr"], np.float64)[0], 0, 1)
    expected = np.round(sr * peak).astype(vis.dtype)
    disp = np.asarray(outputs["disp_l"])[0, ..., 0] if "disp_l" in outputs else None
    return expected, disp


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    vis = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    nir = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    vis_path, nir_path = str(tmp_path / "left.png"), str(tmp_path / "right.png")
    cv2.imwrite(vis_path, cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
    cv2.imwrite(nir_path, nir)
    return vis, nir, vis_path, nir_path


@pytest.fixture
def big_pair(tmp_path):
    rng = np.random.default_rng(10)
    vis = rng.integers(0, 256, (BIG_HEIGHT, BIG_WIDTH, 3), dtype=np.uint8)
    nir = rng.integers(0, 256, (BIG_HEIGHT, BIG_WIDTH), dtype=np.uint8)
    vis_path, nir_path = str(tmp_path / "big_left.png"), str(tmp_path / "big_right.png")
    cv2.imwrite(vis_path, cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
    cv2.imwrite(nir_path, nir)
    return vis, nir, vis_path, nir_path


def _leftovers(folder):
    return [name for name in os.listdir(folder) if name.startswith(".tmp")]


def _cli(*args, umask=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # float32 unless a test asks otherwise: the outputs are compared with float32 references
    # (the command line's default, auto, is bfloat16 on CPUs with AVX512_BF16).
    if not any(str(arg).startswith("--precision") for arg in args):
        args = (*args, "--precision=float32")
    return run_cli(
        [sys.executable, "-m", "cspsr_tf.predict", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        umask=umask,
    )


def test_predict_pair_matches_model(saved_model, pair):
    model, config, _ = saved_model
    vis, nir, _, _ = pair
    result = predict.predict_pair(model, config, vis, nir)
    expected, disp = _model_outputs(model, vis, nir)
    bicubic = cv2.resize(vis, (WIDTH * SCALE, HEIGHT * SCALE), interpolation=cv2.INTER_CUBIC)
    assert np.abs(expected.astype(int) - bicubic).mean() > 2  # the body shapes the output
    assert result["sr"].dtype == np.uint8
    assert result["sr"].shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
    # float32 round-off may move a value sitting on a rounding boundary by one level.
    assert np.abs(result["sr"].astype(int) - expected).max() <= 1
    np.testing.assert_allclose(result["disp_l"], disp, atol=1e-5)
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
    expected, _ = _model_outputs(saved_model[0], *pair[:2])
    assert np.abs(sr[..., ::-1].astype(int) - expected).max() <= 1
    assert cv2.imread(disp).shape == (HEIGHT, WIDTH, 3)
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".tmp")]


def test_cli_default_precision_is_auto_and_logged(saved_model, pair, tmp_path):
    from cspsr_tf.model.runtime import auto_precision

    _, _, model_path = saved_model
    _, _, vis_path, nir_path = pair
    out = str(tmp_path / "sr.png")
    proc = run_cli(  # no --precision: the command line's default
        [sys.executable, "-m", "cspsr_tf.predict", "--model", model_path, "--vis", vis_path,
         "--nir", nir_path, "--out", out],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
        text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    precision, why = auto_precision()
    assert f"--precision=auto: {precision} ({why})" in proc.stderr
    assert f"in {precision}" in proc.stderr  # the run's own log line names what it ran in
    expected, _ = _model_outputs(saved_model[0], *pair[:2])
    sr = cv2.imread(out, cv2.IMREAD_UNCHANGED)[..., ::-1].astype(int)
    assert np.abs(sr - expected).max() <= (1 if precision == "float32" else 8)


def test_cli_tiled_output_is_streamed_and_exact(local_model, saved_model, big_pair, tmp_path):
    """Tiles of a local model stitch exactly; the streamed PNG decodes to the model output."""
    model, _, model_path = local_model
    vis, nir, vis_path, nir_path = big_pair
    out = str(tmp_path / "tiled.png")
    proc = _cli("--model", model_path, "--vis", vis_path, "--nir", nir_path, "--out", out,
                "--tile", "32", "--tile_overlap", "4")
    assert proc.returncode == 0, proc.stderr
    expected, _ = _model_outputs(model, vis, nir)
    written = cv2.imread(out, cv2.IMREAD_UNCHANGED)
    assert written.shape == expected.shape
    assert np.abs(written[..., ::-1].astype(int) - expected).max() <= 1
    # The full model: the disparity (local CVM, disparity margins) is stitched exactly too.
    disp_path = str(tmp_path / "disp.npy")
    stats = predict.run(saved_model[2], vis_path, nir_path, str(tmp_path / "full.png"),
                        disparity_out=disp_path, tile=32, overlap=4)
    assert stats["tiles"] == 12
    assert stats["output_size"] == (BIG_WIDTH * SCALE, BIG_HEIGHT * SCALE)
    _, disp = _model_outputs(saved_model[0], vis, nir)
    np.testing.assert_allclose(np.load(disp_path), disp, atol=1e-4)


@pytest.mark.parametrize("case", ["folder", "under_a_file"])
def test_cli_out_path_that_cannot_be_a_file_exits_2(saved_model, pair, tmp_path, case):
    _, _, model_path = saved_model
    _, _, vis_path, nir_path = pair
    if case == "folder":
        out = str(tmp_path)
    else:
        out = str(tmp_path / "left.png" / "sr.png")  # left.png is a file
    proc = _cli("--model", model_path, "--vis", vis_path, "--nir", nir_path, "--out", out)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and out in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["left.png", "right.png"]


def test_cli_existing_out_needs_overwrite(saved_model, pair, tmp_path):
    _, _, model_path = saved_model
    _, _, vis_path, nir_path = pair
    out = str(tmp_path / "sr.png")
    with open(out, "wb") as f:
        f.write(b"keep me")
    os.chmod(out, 0o644)
    args = ("--model", model_path, "--vis", vis_path, "--nir", nir_path, "--out", out)
    proc = _cli(*args)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr.strip().splitlines()[-1]
    with open(out, "rb") as f:
        assert f.read() == b"keep me"
    # Replaced, it gets the mode a new file gets under the umask (not mkstemp's 0600).
    proc = _cli(*args, "--overwrite", umask=0o002)
    assert proc.returncode == 0, proc.stderr
    assert cv2.imread(out).shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
    assert os.stat(out).st_mode & 0o777 == 0o664


def test_not_enough_memory_is_one_line_with_a_tile_hint(saved_model, pair, tmp_path,
                                                        monkeypatch):
    _, _, model_path = saved_model
    _, _, vis_path, nir_path = pair
    out = str(tmp_path / "sr.png")
    monkeypatch.setattr(tiling, "available_memory_bytes", lambda: 1000)
    with pytest.raises(predict.InputError, match=r"17x13 frame needs about .* GiB.*--tile"):
        predict.run(model_path, vis_path, nir_path, out)
    assert not os.path.exists(out)


def test_memory_estimate_of_a_large_frame(saved_model):
    """The issue's 8000x8000 x2 pair: far too big in one pass, small with --tile=256."""
    model = saved_model[0]
    gib = 2**30
    kwargs = dict(overlap=8, self_ensemble=False, out_path="sr.png")
    whole = predict.memory_need(model, 8000, 8000, SCALE, tile=None, **kwargs)
    tiled = predict.memory_need(model, 8000, 8000, SCALE, tile=256, **kwargs)
    # Layer outputs alone: the tiny model keeps > 600 bytes per LR pixel (32 MPx -> > 35 GiB).
    assert whole > 35 * gib and tiled < 1 * gib
    with pytest.raises(predict.InputError, match=r"8000x8000 .* use --tile=1024"):
        predict._check_memory_against(model, 8000, 8000, SCALE, None, 4 * gib, **kwargs)


def test_memory_estimate_counts_the_whole_frame_cvm_of_a_group_norm_model():
    """A group-norm CVM runs on the whole frame in tiled inference: memory grows with it."""
    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config

    model = build_cspsr(get_config("tiny", scale=SCALE, cvm_normalization="group"))
    kwargs = dict(overlap=8, self_ensemble=False, out_path="sr.png")
    tiled = predict.memory_need(model, 1500, 1500, SCALE, tile=256, **kwargs)
    frame_cvm = tiling.frame_matching_bytes(model, 1500, 1500)
    assert frame_cvm > 1500 * 1500 * 750  # at least the measured ~1 KB per LR pixel
    assert tiled > frame_cvm
    # Above FRAME_MATCHING_MAX_PIXELS the tiles match alone: memory bounded by the tile.
    huge = predict.memory_need(model, 8000, 8000, SCALE, tile=256, **kwargs)
    assert huge < tiling.frame_matching_bytes(model, 8000, 8000) / 10


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
    model, _, model_path = saved_model
    rng = np.random.default_rng(1)
    vis = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
    nir = rng.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
    vis_path, nir_path = str(tmp_path / "v16.png"), str(tmp_path / "n16.tif")
    cv2.imwrite(vis_path, cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
    cv2.imwrite(nir_path, np.repeat(nir[..., np.newaxis], 3, axis=-1))  # 3 equal channels
    expected, disp = _model_outputs(model, vis, nir)
    for tile in (None, 32):
        out, disp_path = str(tmp_path / f"sr16_{tile}.png"), str(tmp_path / f"d_{tile}.npy")
        predict.run(model_path, vis_path, nir_path, out, disparity_out=disp_path, tile=tile,
                    overlap=2)
        written = cv2.imread(out, cv2.IMREAD_UNCHANGED)
        assert written.dtype == np.uint16
        assert written.shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
        assert np.load(disp_path).shape == (HEIGHT, WIDTH)
        # 16-bit precision is kept: not just 8-bit values times 257.
        assert np.any(written % 257 != 0)
        if tile is None:
            assert np.abs(written[..., ::-1].astype(int) - expected).max() <= 1
            np.testing.assert_allclose(np.load(disp_path), disp, atol=1e-5)


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


def test_registered_geometry_predicts_with_zero_disparity(saved_model, pair, tmp_path):
    model, config, model_path = saved_model
    vis, nir, vis_path, nir_path = pair
    out, disp = str(tmp_path / "sr.png"), str(tmp_path / "disp.npy")
    predict.run(model_path, vis_path, nir_path, out, disparity_out=disp, geometry="aligned")
    # Reference: the same weights in a model built for a registered rig.
    from cspsr_tf.model.build import build_cspsr

    registered = build_cspsr(config.replace(geometry="aligned"))
    registered.set_weights(model.get_weights())
    expected, _ = _model_outputs(registered, vis, nir)
    _, stereo_disparity = _model_outputs(model, vis, nir)
    sr = cv2.imread(out, cv2.IMREAD_UNCHANGED)[..., ::-1].astype(int)
    assert np.abs(sr - expected).max() <= 1
    assert np.abs(stereo_disparity).max() > 0.1  # the stereo model does shift the NIR
    np.testing.assert_array_equal(np.load(disp), 0.0)


def test_cli_precision_bfloat16_and_an_unknown_precision(saved_model, pair, tmp_path):
    model, _, model_path = saved_model
    vis, nir, vis_path, nir_path = pair
    bad = _cli("--model", model_path, "--vis", vis_path, "--nir", nir_path,
               "--out", str(tmp_path / "bad.png"), "--precision", "float64")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "predict: error: --precision='float64' is not one of: float32, bfloat16, float16, auto"
    ]
    out, disp = str(tmp_path / "sr.png"), str(tmp_path / "disp.npy")
    proc = _cli("--model", model_path, "--vis", vis_path, "--nir", nir_path, "--out", out,
                "--disparity_out", disp, "--precision", "bfloat16")
    assert proc.returncode == 0, proc.stderr
    expected, disparity = _model_outputs(model, vis, nir)  # float32
    sr = cv2.imread(out, cv2.IMREAD_UNCHANGED)[..., ::-1].astype(int)
    assert np.abs(sr - expected).max() <= 1
    # The disparity is float32; only the CVM's bfloat16 convolutions move it (hundredths of a px).
    np.testing.assert_allclose(np.load(disp), disparity, atol=0.03)


# --- An exported SavedModel as --model (issue 30, item 1) ---------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny stereo model with plain-TensorFlow ops (`shift`), exported as a SavedModel."""
    from cspsr_tf.export.savedmodel_export import export_savedmodel
    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config
    from tests.model_helpers import perturb_weights

    config = get_config("tiny", scale=SCALE, dynamic_conv_implementation="shift")
    keras.utils.set_random_seed(8)
    model = perturb_weights(build_cspsr(config), seed=8)
    path = str(tmp_path_factory.mktemp("export") / "tiny_savedmodel")
    export_savedmodel(model, config, path)
    return model, config, path


def test_savedmodel_predicts_whole_and_tiled(exported, pair, big_pair, tmp_path):
    model, config, path = exported
    vis, nir, vis_path, nir_path = pair
    out, disp = str(tmp_path / "sr.png"), str(tmp_path / "disp.npy")
    predict.run(path, vis_path, nir_path, out, disparity_out=disp)
    expected, disparity = _model_outputs(model, vis, nir)
    assert np.abs(cv2.imread(out)[..., ::-1].astype(int) - expected).max() <= 1
    np.testing.assert_allclose(np.load(disp), disparity, atol=1e-4)
    # Tiled: the SavedModel is one graph, so its CVM runs tile by tile, with the context of
    # its config's receptive field (11) plus the CVM's cost volume (20).
    vis, nir, vis_path, nir_path = big_pair
    out = str(tmp_path / "tiled.png")
    stats = predict.run(path, vis_path, nir_path, out, tile=32, overlap=8,
                        geometry=config.geometry)
    assert stats["frame_matching"] is False and stats["context"] == 31
    reference = tiling.tiled_predict(model, vis, nir[..., np.newaxis], SCALE, tile=32, overlap=8,
                                     frame_matching=False, config=config, keys=["vis_sr"])
    reference = predict._sr_to_dtype(np.clip(reference["vis_sr"][0], 0, 1), np.uint8)
    assert np.abs(cv2.imread(out)[..., ::-1].astype(int) - reference).max() <= 1
    assert not _leftovers(tmp_path)


def test_savedmodel_with_another_geometry_is_one_line(exported, pair, tmp_path):
    _, _, path = exported
    _, _, vis_path, nir_path = pair
    out = str(tmp_path / "sr.png")
    proc = _cli("--model", path, "--vis", vis_path, "--nir", nir_path, "--out", out,
                "--geometry", "aligned")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--geometry=aligned" in lines[0] and "export it again" in lines[0]
    assert "SavedModel exported for stereo pairs" in lines[0]
    assert not os.path.exists(out)


def test_savedmodel_memory_estimate_comes_from_its_config(exported):
    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.model_io import load_model

    _, config, path = exported
    adapter, loaded_config = load_model(path)
    assert not isinstance(adapter, keras.Model)
    per_pixel = tiling.forward_bytes_per_pixel(adapter, loaded_config)
    assert per_pixel == tiling.forward_bytes_per_pixel(build_cspsr(config)) > 100
    kwargs = dict(overlap=8, self_ensemble=False, out_path="sr.png", config=loaded_config)
    with pytest.raises(predict.InputError, match=r"8000x8000 .* use --tile="):
        predict._check_memory_against(adapter, 8000, 8000, SCALE, None, 2**30, **kwargs)

    class Opaque:  # no layers and no config: no estimate, nothing refused
        name = "opaque"

    assert tiling.forward_bytes_per_pixel(Opaque()) is None
    predict._check_memory_against(Opaque(), 8000, 8000, SCALE, None, 1, overlap=8,
                                  self_ensemble=False, out_path="sr.png")


# --- A full disk (item 2) -------------------------------------------------------------------


class _FullDisk(io.RawIOBase):
    """A file on a disk with `room[0]` bytes left (shared by every file): what does not fit
    fails with ENOSPC, as a real full disk does, also when the buffer is flushed at close."""

    def __init__(self, fd, room):
        super().__init__()
        self._fd, self._room = fd, room

    def writable(self):
        return True

    def fileno(self):
        return self._fd

    def write(self, data):
        data = bytes(data)
        if not self._room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(self._fd, data[: self._room[0]])
        self._room[0] -= written
        return written

    def close(self):
        if not self.closed:
            os.close(self._fd)
        super().close()


def _full_disk(monkeypatch, room):
    from cspsr_tf.util import atomic_files

    left = [room]
    monkeypatch.setattr(atomic_files, "_fdopen",
                        lambda fd, mode: io.BufferedWriter(_FullDisk(fd, left)))


def _main(*args):
    """predict's command line in this process: (exit code, stderr lines)."""
    predict.FLAGS.unparse_flags()
    predict.FLAGS(["predict", *args])
    try:
        predict.main(["predict"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        predict.FLAGS.unparse_flags()
    return code


def test_full_disk_mid_stream_is_one_line_and_leaves_nothing(saved_model, big_pair, tmp_path,
                                                             monkeypatch, capsys):
    """ENOSPC while the tiled PNG streams out: the cleanup used to fail on the same full disk
    and leave .tmp-* files (and a traceback, exit 1)."""
    _, _, model_path = saved_model
    _, _, vis_path, nir_path = big_pair
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, disp = str(out_dir / "sr.png"), str(out_dir / "disp.npy")
    _full_disk(monkeypatch, room=5000)
    capsys.readouterr()
    code = _main(f"--model={model_path}", f"--vis={vis_path}", f"--nir={nir_path}",
                 f"--out={out}", f"--disparity_out={disp}", "--tile=32")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert lines == [f"predict: error: cannot write --out {out}: No space left on device; "
                     "nothing was written"]
    assert os.listdir(out_dir) == []


def test_full_disk_at_the_final_flush_is_one_line(saved_model, pair, tmp_path, monkeypatch):
    """A small output fits in the file buffer: the disk fills when the commit flushes it."""
    _, _, model_path = saved_model
    _, _, vis_path, nir_path = pair
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = str(out_dir / "sr.png")
    _full_disk(monkeypatch, room=100)
    with pytest.raises(predict.InputError, match=r"cannot write --out .*sr.png: No space left"):
        predict.run(model_path, vis_path, nir_path, out, disparity_out=str(out_dir / "d.png"))
    assert os.listdir(out_dir) == []


def test_staged_files_discard_survives_files_that_cannot_be_flushed(tmp_path, monkeypatch):
    from cspsr_tf.util import atomic_files

    _full_disk(monkeypatch, room=10)
    with pytest.raises(OSError) as raised:
        with atomic_files.StagedFiles() as staged:
            for name in ("a.bin", "b.bin", "c.bin"):
                staged.open(str(tmp_path / name)).write(b"x" * 100)  # buffered
            staged.commit()  # the first flush fails
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / "a.bin")
    assert os.listdir(tmp_path) == []


# --- SIGTERM / SIGINT (item 3) --------------------------------------------------------------


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_removes_temporary_files(saved_model, tmp_path, signum, code):
    """A tiled run of a large frame stopped once its staged output exists: exit 128 + the
    signal's number, one line, and nothing left beside --out."""
    _, _, model_path = saved_model
    rng = np.random.default_rng(11)
    vis_path, nir_path = str(tmp_path / "l.png"), str(tmp_path / "r.png")
    cv2.imwrite(vis_path, rng.integers(0, 256, (400, 600, 3), dtype=np.uint8))
    cv2.imwrite(nir_path, rng.integers(0, 256, (400, 600), dtype=np.uint8))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = str(out_dir / "sr.png")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = start_cli(
        [sys.executable, "-m", "cspsr_tf.predict", "--model", model_path, "--vis", vis_path,
         "--nir", nir_path, "--out", out, "--disparity_out", str(out_dir / "d.npy"),
         "--tile", "32"],
        cwd=REPO, env=env,
    )
    try:
        deadline = time.monotonic() + 180
        while not _leftovers(out_dir) and process.poll() is None:
            assert time.monotonic() < deadline, "the staged output never appeared"
            time.sleep(0.05)
        time.sleep(1.0)  # into the tiles
        assert process.poll() is None, "finished before the signal: make the frame larger"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, stderr
    name = signal.Signals(signum).name
    assert stderr.strip().splitlines()[-1] == (
        f"predict: stopped by {name}; its temporary files were removed")
    assert "Traceback" not in stderr
    assert os.listdir(out_dir) == []


def test_exit_codes_are_documented():
    assert predict.EXIT_SIGTERM == 143 and predict.EXIT_SIGINT == 130
    assert "143 stopped by\nSIGTERM, 130 by SIGINT" in predict.__doc__


# --- Tile size (item 4) -----------------------------------------------------------------------


def test_tile_below_the_minimum_is_refused_before_loading(pair, tmp_path):
    """The issue's `--tile 1 --tile_overlap 0` ran for minutes; now one line, and before the
    model is even loaded (this model does not exist)."""
    _, _, vis_path, nir_path = pair
    out = str(tmp_path / "sr.png")
    proc = _cli("--model", str(tmp_path / "absent.keras"), "--vis", vis_path, "--nir", nir_path,
                "--out", out, "--tile", "1", "--tile_overlap", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "predict: error: --tile=1 is below the minimum of 32 LR pixels (more for deep models: "
        "see --help); use --tile=32 or more, or no --tile for one pass"
    ]
    assert predict.MIN_TILE == tiling.MIN_TILE


def test_tile_below_the_model_minimum_names_it(saved_model, big_pair, tmp_path):
    _, _, model_path = saved_model
    _, _, vis_path, nir_path = big_pair
    out = str(tmp_path / "sr.png")
    # Twice the overlap plus one: 33 > 32.
    with pytest.raises(predict.InputError, match=r"--tile=32 is below the minimum of 33 LR "
                       r"pixels for this model \(a context of 11 px"):
        predict.run(model_path, vis_path, nir_path, out, tile=32, overlap=16)
    assert not os.path.exists(out)


def test_tiles_of_predict_have_one_input_shape(saved_model, big_pair, tmp_path, monkeypatch):
    """Edge tiles are moved inwards instead of clipped: one input shape for every tile, the
    flipped ones included, so the XLA-compiled ops are traced once."""
    model, _, model_path = saved_model
    vis, nir, vis_path, nir_path = big_pair
    shapes = []
    run_model = tiling._run_model

    def recording(runner, vis_tiles, nir_tiles, keys=None):
        shapes.append(vis_tiles.shape)
        return run_model(runner, vis_tiles, nir_tiles, keys)

    monkeypatch.setattr(tiling, "_run_model", recording)
    out = str(tmp_path / "sr.png")
    stats = predict.run(model_path, vis_path, nir_path, out, tile=32, overlap=8,
                        self_ensemble=True)
    assert stats["tiles"] == 12 and len(shapes) == 24
    assert set(shapes) == {(1, 54, 54, 3)}  # 32 + 2 * 11 (the tiny model's context)
    whole = predict.predict_pair(model, None, vis, nir, self_ensemble=True)["sr"]
    assert np.abs(cv2.imread(out)[..., ::-1].astype(int) - whole).mean() < 0.05
