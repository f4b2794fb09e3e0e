"""Tests for nirvis_synthetic: TFDS contract, disparity convention, determinism."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy import ndimage

import datasets.nirvis_synthetic  # noqa: F401  (registers "nirvis_synthetic")

from .. import _common, _testing
from . import nirvis_synthetic_dataset_builder as module
from . import synthesis

N_TRAIN = 1 + module.MOTO_TRAIN_CROPS + len(module.TRAIN_PHOTOS) * module.TRAIN_VARIANTS_PER_PHOTO
N_TEST = 1 + len(module.TEST_PHOTOS) * module.TEST_VARIANTS_PER_PHOTO


class NirvisSyntheticTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = module.Builder
    SPLITS = {"train": 24, "test": 5}
    EXAMPLE_DIR = str(_testing.dummy_dir(__file__))  # Exists but holds no input.
    # The os/open/np.load mocks guard against local-only file access in builders that read
    # user data; this one only reads scikit-image's bundled files, and skimage.data calls
    # np.load with a path, which the mock rejects.
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Both splits built once with the documented `tfds.load` call."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    config = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    out = {}
    for split in ("train", "test"):
        ds = tfds.load(
            "nirvis_synthetic",
            data_dir=data_dir,
            split=split,
            shuffle_files=False,
            download_and_prepare_kwargs={"download_config": config},
        )
        out[split] = _testing.as_examples(ds)
    return out


def _luminance(vis):
    return vis.astype(np.float64) @ [0.299, 0.587, 0.114]


def _corr(a, b, mask):
    a = a[mask] - a[mask].mean()
    b = b[mask] - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_counts_features_and_sources(splits):
    assert len(splits["train"]) == N_TRAIN == 24
    assert len(splits["test"]) == N_TEST == 5
    examples = splits["train"] + splits["test"]
    _testing.check_common_features(examples, geometry=_common.STEREO)
    assert len({ex["id"] for ex in examples}) == len(examples)
    for ex in examples:
        h, w = ex["vis"].shape[:2]
        assert h <= 512 and w <= 750
        assert ex["disparity"].shape == (h, w, 1) and ex["disparity"].dtype == np.float32
        assert ex["disparity_valid"].shape == (h, w, 1) and ex["disparity_valid"].dtype == np.uint8
        assert np.isfinite(ex["disparity"]).all() and ex["disparity"].min() >= 0
        assert ex["disparity"].max() <= 31
        assert set(np.unique(ex["disparity_valid"])) <= {0, 1}
        assert ex["disparity_valid"].mean() > 0.5
    # Held-out sources: photos in test are never in train; the motorcycle is split by rows.
    train_sources = {ex["id"].split("/")[0] for ex in splits["train"]}
    test_sources = {ex["id"].split("/")[0] for ex in splits["test"]}
    assert train_sources & test_sources == {"motorcycle"}
    assert {i["id"] for i in splits["test"] if i["id"].startswith("motorcycle")} == {
        "motorcycle/bottom_full"
    }


def test_disparity_convention(splits):
    """vis(i, j) matches nir(i, j - d(i, j)) much better than nir(i, j)."""
    for ex in splits["train"] + splits["test"]:
        lum = _luminance(ex["vis"])
        nir = ex["nir"][:, :, 0].astype(np.float64)
        d = ex["disparity"][:, :, 0].astype(np.float64)
        valid = ex["disparity_valid"][:, :, 0] > 0
        rows, cols = np.mgrid[0 : d.shape[0], 0 : d.shape[1]]
        warped = ndimage.map_coordinates(nir, [rows, cols - d], order=1)
        flipped = ndimage.map_coordinates(nir, [rows, cols + d], order=1, mode="nearest")
        aligned = _corr(lum, warped, valid)
        assert aligned > 0.8, ex["id"]
        assert aligned > _corr(lum, nir, valid) + 0.03, ex["id"]
        assert aligned > _corr(lum, flipped, valid) + 0.03, ex["id"]


def test_motorcycle_disparity_is_middlebury_ground_truth(splits):
    """Independent check: the stored disparity is skimage's ground truth at half scale."""
    from skimage import data

    left, _, gt = data.stereo_motorcycle()
    h, w = gt.shape[0] // 2, gt.shape[1] // 2
    blocks = gt[: 2 * h, : 2 * w].reshape(h, 2, w, 2)
    known = np.isfinite(blocks).all(axis=(1, 3))
    half = np.where(known, np.where(np.isfinite(blocks), blocks, 0).mean(axis=(1, 3)) / 2, 0)
    (top,) = [ex for ex in splits["train"] if ex["id"] == "motorcycle/top_full"]
    (bottom,) = [ex for ex in splits["test"] if ex["id"] == "motorcycle/bottom_full"]
    rows = module.MOTO_SPLIT_ROW
    np.testing.assert_allclose(top["disparity"][:, :, 0], half[:rows], atol=1e-4)
    np.testing.assert_allclose(bottom["disparity"][:, :, 0], half[rows:], atol=1e-4)
    assert not top["disparity_valid"][:, :, 0][~known[:rows]].any()  # unknown -> invalid
    # Left image: the real left view, downscaled by 2.
    assert abs(float(top["vis"].mean()) - float(left[: 2 * rows].mean())) < 2


def test_deterministic():
    first = next(module.photo_examples("chelsea", 1, crop=True))
    second = next(module.photo_examples("chelsea", 1, crop=True))
    assert first[0] == second[0]
    for key in ("vis", "nir", "disparity", "disparity_valid"):
        assert np.array_equal(first[1][key], second[1][key]), key


def test_forward_projection_occlusion():
    """A near square hides the background on its left in the right view."""
    disp = np.full((20, 60), 2.0, np.float32)
    disp[5:15, 30:40] = 10.0
    z = synthesis.forward_disparity(disp)
    valid = synthesis.visible_mask(disp, z)
    assert valid[10, 35] == 1  # near surface: visible
    assert valid[10, 25] == 0  # background just left of it: covered by the square
    assert valid[10, 50] == 1  # background to the right: visible
    assert valid[10, 0] == 0  # j - d < 0: outside the NIR frame
