"""Tests for the nirvis_folder builder (dummy data: dummy_data/pairs.csv and its images)."""

import pathlib

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from .. import _common, _testing
from . import nirvis_folder_dataset_builder as module

DUMMY = _testing.dummy_dir(__file__)
SHARED_SAMPLES = pathlib.Path("/work/shared/data/nirvis_samples")


class NirvisFolderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = module.Builder
    SPLITS = {"train": 3}
    EXAMPLE_DIR = str(DUMMY)


def test_parse_geometry_and_id():
    assert module.parse_geometry("stereo_rgb_left_nir_right", "x") == "stereo"
    assert module.parse_geometry(" Aligned ", "x") == "aligned"
    assert module.parse_geometry("", "x") == module.DEFAULT_GEOMETRY == "stereo"
    assert module.parse_geometry(None, "x") == "stereo"
    with pytest.raises(ValueError, match="unsupported geometry"):
        module.parse_geometry("stereo_nir_left_rgb_right", "x")
    assert module.example_id("a/b/0001_rgb.png") == "a/b/0001_rgb"
    assert module.example_id("scene.v2/img") == "scene.v2/img"


def test_examples(tmp_path):
    builder = _testing.build(module.Builder, tmp_path, DUMMY)
    examples = _testing.load_split(builder, "train")
    _testing.check_common_features(examples)
    geometry = {ex["id"]: ex["geometry"] for ex in examples}
    assert geometry == {
        "stereo_rig/0001_rgb": "stereo",
        "registered/a_rgb": "aligned",
        "misc/b_rgb": "stereo",  # empty geometry cell -> default
    }


def _write_pair(root, rgb_shape, nir_shape):
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "x_rgb.png"), np.full(rgb_shape, 90, np.uint8))
    cv2.imwrite(str(root / "x_nir.png"), np.full(nir_shape, 60, np.uint8))
    (root / "pairs.csv").write_text("rgb,nir\nx_rgb.png,x_nir.png\n")


def test_size_mismatch_names_both_files(tmp_path):
    manual = tmp_path / "manual"
    _write_pair(manual, (10, 12, 3), (10, 14))
    with pytest.raises(_common.PairMismatchError) as info:
        _testing.build(module.Builder, tmp_path / "data", manual)
    assert str(manual / "x_rgb.png") in str(info.value)
    assert str(manual / "x_nir.png") in str(info.value)


def test_missing_columns(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "pairs.csv").write_text("visible,infrared\na.png,b.png\n")
    with pytest.raises(_common.ManualDirLayoutError, match="`rgb` and `nir`"):
        _testing.build(module.Builder, tmp_path / "data", manual)


def test_missing_or_empty_manual_dir(tmp_path):
    _testing.assert_missing_and_empty_manual_dir_errors(
        module.Builder, tmp_path, ["pairs.csv", "rgb,nir,geometry", "stereo_rgb_left_nir_right"]
    )


def test_wrong_layout(tmp_path):
    _testing.assert_wrong_layout_error(module.Builder, tmp_path, ["pairs.csv", "rgb,nir"])


def test_truncated_image(tmp_path):
    _testing.assert_truncated_image_error(module.Builder, DUMMY, tmp_path, "registered/a_nir.jpg")


@pytest.mark.skipif(
    not (SHARED_SAMPLES / "pairs.csv").is_file(),
    reason=f"shared samples not present at {SHARED_SAMPLES}",
)
def test_shared_nirvis_samples(tmp_path):
    """The 57 real pairs of /work/shared/data/nirvis_samples load via tfds.load."""
    config = tfds.download.DownloadConfig(
        manual_dir=str(SHARED_SAMPLES), compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
    ds = tfds.load(
        "nirvis_folder",
        data_dir=str(tmp_path),
        split="train",
        download_and_prepare_kwargs={"download_config": config},
    )
    examples = _testing.as_examples(ds)
    assert len(examples) == 57
    _testing.check_common_features(examples)
    geometries = [ex["geometry"] for ex in examples]
    assert geometries.count("stereo") == 5 and geometries.count("aligned") == 52
