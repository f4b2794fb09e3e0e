"""Tests of cspsr_tf.evaluate.evaluation on a tiny random model and a tiny in-memory dataset.

Expected numbers are recomputed here with numpy, OpenCV and scikit-image from the model's
raw outputs and the LR inputs, never taken from the evaluation code.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from cspsr_tf.data.pipeline import make_eval_dataset  # noqa: E402
from cspsr_tf.evaluate import evaluation  # noqa: E402
from cspsr_tf.infer import tiling  # noqa: E402
from cspsr_tf.model.build import build_cspsr  # noqa: E402
from cspsr_tf.model.configs import get_config  # noqa: E402

# One xdist worker runs this module (make test: --dist loadgroup), so its module fixtures
# (models, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("test_evaluation")

SCALE = 2
HEIGHT, WIDTH = 24, 34
IDS = ["videoA/000", "videoA/001", "videoB/000"]


def _frames():
    """Smooth random frames (so bicubic is a sensible baseline) and disparities."""
    rng = np.random.default_rng(7)
    vis, nir, disparity = [], [], []
    for _ in IDS:
        coarse = rng.uniform(20, 230, (HEIGHT // 4 + 1, WIDTH // 4 + 1, 3)).astype(np.float32)
        image = cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
        vis.append(image)
        nir.append(image[..., 1:2].copy())
        d = rng.uniform(0.5, 6.0, (HEIGHT, WIDTH, 1)).astype(np.float32)
        d[: HEIGHT // 3] = 0.0  # unknown
        disparity.append(d)
    return np.stack(vis), np.stack(nir), np.stack(disparity)


@pytest.fixture(scope="module")
def source():
    vis, nir, disparity = _frames()
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "vis": vis,
            "nir": nir,
            "disparity": disparity,
            "id": np.array(IDS),
            "geometry": np.array(["stereo"] * len(IDS)),
        }
    )
    return {"vis": vis, "nir": nir, "disparity": disparity, "ds": ds}


@pytest.fixture(scope="module")
def eval_ds(source):
    return make_eval_dataset(source["ds"], scale=SCALE)


@pytest.fixture(scope="module")
def model_and_config():
    keras.utils.set_random_seed(3)
    config = get_config("tiny", scale=SCALE)
    model = build_cspsr(config)
    # The model zero-initialises its reconstruction convs (output = bicubic); small random
    # kernels make the SR output differ from bicubic while keeping realistic PSNRs.
    rng = np.random.default_rng(3)
    for name in ("vis_recon_conv", "nir_recon_conv"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(0, 0.01, kernel.shape).astype(np.float32), bias])
    return model, config


@pytest.fixture(scope="module")
def evaluated(model_and_config, eval_ds, tmp_path_factory):
    model, config = model_and_config
    out_dir = str(tmp_path_factory.mktemp("eval"))
    results = evaluation.evaluate_dataset(
        model, config, eval_ds, scale=SCALE, out_dir=out_dir, save_disparity_npy=True
    )
    return results, out_dir


def _lr_inputs(eval_ds):
    return [(inputs["vis_lr"].numpy(), inputs["nir_lr"].numpy()) for inputs, _, _ in eval_ds]


def _round_uint8(image):
    return np.round(np.clip(np.asarray(image, np.float64), 0, 1) * 255).astype(np.uint8)


def _numpy_psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def _skimage_ssim(a, b):
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255, channel_axis=-1,
    )


def test_writes_results_with_bicubic_beside_model(evaluated):
    results, out_dir = evaluated
    with open(os.path.join(out_dir, "results.json")) as f:
        saved = json.load(f)
    assert [frame["id"] for frame in saved["frames"]] == IDS
    assert [frame["group"] for frame in saved["frames"]] == ["videoA", "videoA", "videoB"]
    for method in ("bicubic", "model"):
        for protocol in ("paper", "standard"):
            assert set(saved["mean"][method][protocol]) == {"psnr", "ssim"}
    assert saved["mean"]["num_frames"] == 3
    assert sorted(saved["groups"]) == ["videoA", "videoB"]
    assert saved["mean"]["model"]["paper"]["psnr"] == pytest.approx(
        results["mean"]["model"]["paper"]["psnr"]
    )
    with open(os.path.join(out_dir, "results.md")) as f:
        markdown = f.read()
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| Bicubic |") and rows[2].startswith("| cspsr |")
    assert f"{saved['mean']['bicubic']['paper']['psnr']:.2f}" in rows[1]
    assert "videoB" in markdown and "EPE" in markdown
    assert not [name for name in os.listdir(out_dir) if name.startswith(".tmp")]


def test_bicubic_metrics_match_independent_computation(evaluated, eval_ds, source):
    results, _ = evaluated
    for frame, (vis_lr, _), hr in zip(results["frames"], _lr_inputs(eval_ds), source["vis"],
                                      strict=True):
        upscaled = tf.image.resize(vis_lr, [HEIGHT, WIDTH], method="bicubic").numpy()[0]
        bicubic = _round_uint8(upscaled)
        assert frame["bicubic"]["paper"]["psnr"] == pytest.approx(
            peak_signal_noise_ratio(hr, bicubic, data_range=255), abs=1e-9
        )
        assert frame["bicubic"]["paper"]["psnr"] == pytest.approx(
            _numpy_psnr(bicubic, hr), abs=1e-9
        )
        assert frame["bicubic"]["paper"]["ssim"] == pytest.approx(
            _skimage_ssim(bicubic, hr), abs=1e-9
        )
        # The standard protocol: BT.601 Y (16-235) with a `scale`-pixel border shaved.
        def luma(image):
            return image.astype(np.float64) / 255 @ [65.481, 128.553, 24.966] + 16

        shave = (slice(SCALE, -SCALE), slice(SCALE, -SCALE))
        assert frame["bicubic"]["standard"]["psnr"] == pytest.approx(
            _numpy_psnr(luma(bicubic)[shave], luma(hr)[shave]), abs=1e-9
        )
        assert 15 < frame["bicubic"]["paper"]["psnr"] < 50


def test_model_metrics_are_those_of_the_written_png(evaluated, source):
    results, out_dir = evaluated
    for frame, hr in zip(results["frames"], source["vis"], strict=True):
        stem = frame["id"].replace("/", "__")
        png = cv2.cvtColor(cv2.imread(os.path.join(out_dir, "sr", stem + ".png")),
                           cv2.COLOR_BGR2RGB)
        assert png.shape == hr.shape
        assert frame["model"]["paper"]["psnr"] == pytest.approx(_numpy_psnr(png, hr), abs=1e-9)
        assert os.path.isfile(os.path.join(out_dir, "figures", stem + ".png"))
        colour = cv2.imread(os.path.join(out_dir, "disparity", stem + ".png"))
        assert colour.shape == (HEIGHT // SCALE, WIDTH // SCALE, 3)
        raw = np.load(os.path.join(out_dir, "disparity", stem + ".npy"))
        assert raw.shape == (HEIGHT // SCALE, WIDTH // SCALE) and raw.dtype == np.float32


def test_aggregates_are_means_of_frames(evaluated):
    results, _ = evaluated
    frames = results["frames"]
    for method in ("bicubic", "model"):
        for protocol in ("paper", "standard"):
            for metric in ("psnr", "ssim"):
                values = [f[method][protocol][metric] for f in frames]
                group_a = results["groups"]["videoA"][method][protocol][metric]
                assert group_a == pytest.approx((values[0] + values[1]) / 2, abs=1e-12)
                group_b = results["groups"]["videoB"][method][protocol][metric]
                assert group_b == pytest.approx(values[2], abs=1e-12)
                overall = results["mean"][method][protocol][metric]
                assert overall == pytest.approx(sum(values) / 3, abs=1e-12)
    epes = [f["disparity"]["epe"] for f in frames]
    assert results["groups"]["videoA"]["disparity"]["epe"] == pytest.approx(
        (epes[0] + epes[1]) / 2
    )
    assert results["mean"]["disparity"]["num_frames"] == 3


def test_disparity_errors_match_numpy(evaluated, model_and_config, eval_ds, source):
    results, _ = evaluated
    model, _ = model_and_config
    for frame, (vis_lr, nir_lr), gt in zip(
        results["frames"], _lr_inputs(eval_ds), source["disparity"], strict=True
    ):
        disp_l = model({"vis_lr": vis_lr, "nir_lr": nir_lr}, training=False)["disp_l"]
        disp_l = np.asarray(disp_l)[0, ..., 0]
        # OpenCV's bilinear resize uses the same half-pixel centres as tf.image.resize.
        upsampled = cv2.resize(disp_l, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR) * SCALE
        valid = gt[..., 0] > 0
        error = np.abs(upsampled[valid] - gt[..., 0][valid])
        assert frame["disparity"]["valid_pixels"] == valid.sum() == (HEIGHT - HEIGHT // 3) * WIDTH
        assert frame["disparity"]["epe"] == pytest.approx(error.mean(), abs=1e-4)
        assert frame["disparity"]["bad1"] == pytest.approx(np.mean(error > 1), abs=1e-9)


def test_self_ensemble_is_mean_of_plain_and_flipped_pass(model_and_config, eval_ds, source):
    model, config = model_and_config
    results = evaluation.evaluate_dataset(
        model, config, eval_ds, scale=SCALE, self_ensemble=True, max_frames=1
    )
    assert len(results["frames"]) == 1
    vis_lr, nir_lr = _lr_inputs(eval_ds)[0]
    plain = model({"vis_lr": vis_lr, "nir_lr": nir_lr}, training=False)
    flipped = model(
        {"vis_lr": vis_lr[:, ::-1].copy(), "nir_lr": nir_lr[:, ::-1].copy()}, training=False
    )
    means = {
        key: (np.asarray(plain[key])[0] + np.asarray(flipped[key])[0, ::-1]) / 2
        for key in ("vis_sr", "disp_l")
    }
    expected = _numpy_psnr(_round_uint8(means["vis_sr"]), source["vis"][0])
    assert results["frames"][0]["model"]["paper"]["psnr"] == pytest.approx(expected, abs=1e-6)
    # The float outputs behind it: each is the two-pass mean, which differs from the single
    # pass (the model is not flip-invariant).
    ensembled = tiling.predict(model, vis_lr, nir_lr, SCALE, self_ensemble=True)
    for key, mean in means.items():
        np.testing.assert_allclose(ensembled[key][0], mean, atol=1e-5, err_msg=key)
    assert np.abs(ensembled["vis_sr"][0] - np.asarray(plain["vis_sr"])[0]).max() > 1e-5


def test_tiled_evaluation_close_to_whole_frame(evaluated, model_and_config, eval_ds):
    results, _ = evaluated
    model, config = model_and_config
    tiled = evaluation.evaluate_dataset(
        model, config, eval_ds, scale=SCALE, tile=8, overlap=2, context=4, max_frames=2
    )
    for frame, reference in zip(tiled["frames"], results["frames"][:2], strict=True):
        assert frame["model"]["paper"]["psnr"] == pytest.approx(
            reference["model"]["paper"]["psnr"], abs=0.05
        )


def test_ids_without_group_and_errors(model_and_config):
    model, config = model_and_config
    assert evaluation.frame_group("plain_id") == "all"
    assert evaluation.frame_group("cat/sub/x") == "cat"
    with pytest.raises(ValueError, match="scale=4"):
        evaluation.evaluate_dataset(model, config, [], scale=4)
    with pytest.raises(ValueError, match="no frames"):
        evaluation.evaluate_dataset(model, config, [], scale=SCALE)
