"""Tests for the ranus builder (dummy data in dummy_data/RANUS/)."""

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from .. import _common, _testing
from . import ranus_dataset_builder as module

DUMMY = _testing.dummy_dir(__file__)


class RanusTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = module.Builder
    SPLITS = {"train": 2, "test": 1}  # Subset 01: 2 pairs; subset 50 (test): 1 pair.
    EXAMPLE_DIR = str(DUMMY)


def test_subset_names():
    assert module.subset_number("50") == 50
    assert module.subset_number("050") == 50
    assert module.subset_number("subset_50") == 50
    assert module.subset_number("Subset50") == 50
    assert module.subset_number("RGB") is None
    assert module.split_of(50) == "test" and module.split_of(49) == "train"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _testing.build(module.Builder, tmp_path_factory.mktemp("data"), DUMMY)


def test_examples(built):
    train = _testing.load_split(built, "train")
    test = _testing.load_split(built, "test")
    _testing.check_common_features(train + test, geometry=_common.ALIGNED)
    assert sorted(ex["id"] for ex in train) == ["01/000000", "01/000001"]
    assert [ex["id"] for ex in test] == ["50/000000"]
    # That NIR file has 3 different channels: converted with OpenCV's BGR -> GRAY.
    raw = _common.read_raw(DUMMY / "RANUS" / "50" / "NIR" / "000000_nir.png")
    assert raw.ndim == 3 and not np.array_equal(raw[:, :, 0], raw[:, :, 1])
    expected = np.round(raw.astype(float) @ [0.114, 0.587, 0.299])
    assert np.abs(test[0]["nir"][:, :, 0] - expected).max() <= 1


def test_missing_or_empty_manual_dir(tmp_path):
    _testing.assert_missing_and_empty_manual_dir_errors(
        module.Builder, tmp_path, ["RGB/000000.png", "NIR/000000.png", "50/"]
    )


def test_wrong_layout(tmp_path):
    _testing.assert_wrong_layout_error(module.Builder, tmp_path, ["RGB/000000.png", "NIR/"])


def test_truncated_image(tmp_path):
    _testing.assert_truncated_image_error(
        module.Builder, DUMMY, tmp_path, "RANUS/01/RGB/000001.png"
    )


def test_size_mismatch(tmp_path):
    manual = tmp_path / "manual"
    (manual / "07" / "RGB").mkdir(parents=True)
    (manual / "07" / "NIR").mkdir(parents=True)
    cv2.imwrite(str(manual / "07" / "RGB" / "a.png"), np.zeros((8, 10, 3), np.uint8))
    cv2.imwrite(str(manual / "07" / "NIR" / "a.png"), np.zeros((8, 12), np.uint8))
    with pytest.raises(_common.PairMismatchError) as info:
        _testing.build(module.Builder, tmp_path / "data", manual)
    assert "RGB/a.png" in str(info.value) and "NIR/a.png" in str(info.value)
