"""Tests for the nirvis_folder builder (dummy data: dummy_data/pairs.csv and its images)."""

import csv
import pathlib

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from .. import _common, _testing
from . import nirvis_folder_dataset_builder as module

DUMMY = _testing.dummy_dir(__file__)
# The real sample pairs, in the `shared/` folder beside the repository root.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED_SAMPLES = REPO_ROOT.parent / "shared" / "data" / "nirvis_samples"


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


def _expected_shared_rows():
    """{id: geometry} read from the shared pairs.csv with the csv module (not the builder)."""
    stereo_words = {"stereo_rgb_left_nir_right", "stereo", ""}
    expected = {}
    with open(SHARED_SAMPLES / "pairs.csv", newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            stem = row["rgb"].strip().rsplit(".", 1)[0]
            geometry = (row.get("geometry") or "").strip().lower()
            expected[stem] = "stereo" if geometry in stereo_words else "aligned"
    return expected


@pytest.mark.skipif(
    not (SHARED_SAMPLES / "pairs.csv").is_file(),
    reason=f"the shared sample pairs are not present ({SHARED_SAMPLES} has no pairs.csv)",
)
def test_shared_nirvis_samples(tmp_path):
    """The real pairs of ../shared/data/nirvis_samples load via tfds.load, one per CSV row."""
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
    expected = _expected_shared_rows()
    assert expected, "the shared pairs.csv lists no pair"
    _testing.check_common_features(examples)
    assert {ex["id"]: ex["geometry"] for ex in examples} == expected


# Listed paths stay inside the manual directory.


def _escape_layout(tmp_path, cell):
    """A manual dir whose pairs.csv lists a good pair, then `cell` as the NIR of line 3."""
    manual = tmp_path / "manual"
    _write_pair(manual, (6, 8, 3), (6, 8))
    (tmp_path / "outside_nir.png").write_bytes((manual / "x_nir.png").read_bytes())
    (manual / "pairs.csv").write_text(f"rgb,nir\nx_rgb.png,x_nir.png\nx_rgb.png,{cell}\n")
    return manual


@pytest.mark.parametrize("cell", ["../outside_nir.png", "../../../../../../../../etc/passwd",
                                  "/etc/passwd", "sub/../../outside_nir.png"])
def test_paths_leading_outside_the_manual_dir_are_refused(tmp_path, cell):
    manual = _escape_layout(tmp_path, cell)
    with pytest.raises(_common.PathOutsideManualDirError) as info:
        module.read_rows(manual / "pairs.csv")
    message = str(info.value)
    assert "line 3" in message and "column nir" in message and cell in message
    assert "\n" not in message


def test_a_symlink_to_a_file_outside_is_refused(tmp_path):
    manual = _escape_layout(tmp_path, "link.png")
    (manual / "link.png").symlink_to(tmp_path / "outside_nir.png")
    with pytest.raises(_common.PathOutsideManualDirError, match="line 3"):
        module.read_rows(manual / "pairs.csv")


def test_build_refuses_an_escaping_row_before_reading_any_image(tmp_path):
    manual = _escape_layout(tmp_path, "../outside_nir.png")
    with pytest.raises(_common.PathOutsideManualDirError, match="line 3"):
        _testing.build(module.Builder, tmp_path / "data", manual)


def test_paths_inside_the_manual_dir_are_accepted(tmp_path):
    manual = _escape_layout(tmp_path, "sub/../x_nir.png")
    absolute = str(manual / "x_rgb.png")
    (manual / "pairs.csv").write_text(f"rgb,nir\n{absolute},sub/../x_nir.png\n")
    (row,) = module.read_rows(manual / "pairs.csv")
    assert str(row[1]) == absolute and row[2].name == "x_nir.png"
