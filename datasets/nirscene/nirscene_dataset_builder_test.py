"""Tests for the nirscene builder (dummy data in dummy_data/nirscene1/)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from .. import _common, _testing
from . import nirscene_dataset_builder as module

DUMMY = _testing.dummy_dir(__file__)
# Pairs per category in the full nirscene1 release (477 in all).
FULL_COUNTS = {
    "country": 52,
    "field": 51,
    "forest": 53,
    "indoor": 56,
    "mountain": 55,
    "oldbuilding": 51,
    "street": 50,
    "urban": 58,
    "water": 51,
}


class NirsceneTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = module.Builder
    # country: 7 pairs -> 6 test (5 + the extra one) + 1 train; water: 6 -> 5 test + 1 train.
    SPLITS = {"train": 2, "test": 11}
    EXAMPLE_DIR = str(DUMMY)


def test_test_split_rule_gives_46_pairs():
    assert sum(FULL_COUNTS.values()) == 477
    keys = {c: [f"{i:04d}" for i in range(n)] for c, n in FULL_COUNTS.items()}
    chosen = module.select_test_keys(keys)
    assert len(chosen) == 46
    assert {c for c, _ in chosen} == set(module.CATEGORIES)
    assert ("country", "0005") in chosen and ("field", "0005") not in chosen
    for category in module.CATEGORIES:
        assert {(category, f"{i:04d}") for i in range(5)} <= chosen


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _testing.build(module.Builder, tmp_path_factory.mktemp("data"), DUMMY)


def test_examples(built):
    train = _testing.load_split(built, "train")
    test = _testing.load_split(built, "test")
    _testing.check_common_features(train + test, geometry=_common.ALIGNED)
    assert sorted(ex["id"] for ex in train) == ["country/0006", "water/0005"]
    assert "country/0005" in {ex["id"] for ex in test}
    # country/0000 is TIFF with a 16-bit NIR image: converted by round(v / 257).
    (first,) = [ex for ex in test if ex["id"] == "country/0000"]
    folder = DUMMY / "nirscene1" / "country"
    raw_nir = _common.read_raw(folder / "0000_nir.tiff")
    assert raw_nir.dtype == np.uint16
    np.testing.assert_array_equal(first["nir"][:, :, 0], np.round(raw_nir / 257.0))
    np.testing.assert_array_equal(first["vis"], _common.read_rgb(folder / "0000_rgb.tiff"))


def test_missing_or_empty_manual_dir(tmp_path):
    _testing.assert_missing_and_empty_manual_dir_errors(
        module.Builder, tmp_path, ["0000_rgb.tiff", "0000_nir.tiff", "oldbuilding"]
    )


def test_wrong_layout(tmp_path):
    _testing.assert_wrong_layout_error(module.Builder, tmp_path, ["0000_rgb.tiff", "country/"])


def test_truncated_image(tmp_path):
    _testing.assert_truncated_image_error(
        module.Builder, DUMMY, tmp_path, "nirscene1/water/0003_nir.png"
    )


def test_missing_nir_partner(tmp_path):
    manual = tmp_path / "manual"
    (manual / "forest").mkdir(parents=True)
    (manual / "forest" / "0001_rgb.png").write_bytes(
        (DUMMY / "nirscene1" / "water" / "0001_rgb.png").read_bytes()
    )
    with pytest.raises(_common.ImageReadError, match="0001_nir"):
        _testing.build(module.Builder, tmp_path / "data", manual)
