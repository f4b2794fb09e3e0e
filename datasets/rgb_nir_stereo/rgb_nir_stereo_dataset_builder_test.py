"""Tests for the rgb_nir_stereo builder (dummy data in dummy_data/rgbnir_stereo/)."""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from .. import _common, _testing
from . import rgb_nir_stereo_dataset_builder as module

DUMMY = _testing.dummy_dir(__file__)


class RgbNirStereoTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = module.Builder
    SPLITS = {"train": 2, "test": 1}
    EXAMPLE_DIR = str(DUMMY)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _testing.build(module.Builder, tmp_path_factory.mktemp("data"), DUMMY)


def test_split_rule():
    for collection in ("20170224_0742", "20170222_0951", "20170222_1423", "20170223_1639"):
        assert module.split_of(collection) == "test"
    assert module.split_of("20170221_1357") == "train"


def test_no_test_video_frame_in_train(built):
    train = _testing.load_split(built, "train")
    test = _testing.load_split(built, "test")
    assert train and test
    assert not {ex["id"].split("/")[0] for ex in train} & set(module.TEST_COLLECTIONS)
    assert {ex["id"].split("/")[0] for ex in test} <= set(module.TEST_COLLECTIONS)
    _testing.check_common_features(train + test, geometry=_common.STEREO)
    assert sorted(ex["id"] for ex in train) == [
        "20170221_1357/211357_000010",
        "20170221_1357/211357_000020",
    ]


def test_pixels_are_not_brightened(built):
    (example,) = [
        ex for ex in _testing.load_split(built, "test") if ex["id"] == "20170224_0742/240742_000010"
    ]
    folder = DUMMY / "rgbnir_stereo" / "data" / "20170224_0742"
    vis = _common.read_rgb(folder / "RGBResize" / "240742_000010_RGBResize.png")
    nir = _common.read_nir(folder / "NIRResize" / "240742_000010_NIRResize.png")
    np.testing.assert_array_equal(example["vis"], vis)
    np.testing.assert_array_equal(example["nir"], nir)
    assert example["vis"].mean() < 40  # Dark, as the real frames.


KEYPOINT_FRAME = "20170224_0742/240742_000010"


def test_keypoints_feature(built):
    examples = {
        ex["id"]: ex
        for ex in _testing.load_split(built, "train") + _testing.load_split(built, "test")
    }
    # dummy_data/.../Keypoint/240742_000010_Keypoint.txt on the 16x12 frame (hand-computed).
    np.testing.assert_allclose(
        examples[KEYPOINT_FRAME]["keypoints"],
        [[5, 7, 1.0, 0], [11, 15, 2.0, 4], [2, 0, 0.0, 7]],
    )
    assert examples[KEYPOINT_FRAME]["keypoints"].dtype == np.float32
    for example_id, ex in examples.items():
        if example_id != KEYPOINT_FRAME:  # No keypoint file: no rows.
            assert ex["keypoints"].shape == (0, 4), example_id


def test_parse_keypoints_as_the_authors_convert():
    # At the release's 582x429: 0.25 * 582 = 145.5 and 0.5 * 429 = 214.5 round half to even
    # (Python's round, as cs-stereo test.py) to 146 and 214, minus 1; x = y = 0 gives -1,
    # clipped to 0; x = y = 1 gives the last pixel.
    text = "0.25 0.5 0.01 2\n\n0 0 0.5 7\n1 1 0 0\n0.1 0.9 0.02 5\n"
    expected = [
        [213, 145, 5.82, 2],
        [0, 0, 291.0, 7],
        [428, 581, 0.0, 0],
        [385, 57, 11.64, 5],  # 0.9 * 429 = 386.1, 0.1 * 582 = 58.2
    ]
    np.testing.assert_allclose(module.parse_keypoints(text), expected, rtol=1e-6)
    assert module.parse_keypoints("").shape == (0, 4)


def test_parse_keypoint_file(tmp_path):
    path = tmp_path / "240742_000010_Keypoint.txt"
    path.write_text("0.5 0.5 0.0625 3\n")
    np.testing.assert_allclose(
        module.parse_keypoint_file(path, width=16, height=12), [[5, 7, 1, 3]]
    )
    assert module.KEYPOINT_CLASSES[3] == "Glossy" and len(module.KEYPOINT_CLASSES) == 8


@pytest.mark.parametrize(
    "line, problem",
    [
        ("0.5 0.5 0.01", "3 fields instead of 4"),
        ("0.5 0.5 0.01 1 9", "5 fields instead of 4"),
        ("0.5 0.5 0.01 8", "class 8 outside 0..7"),
        ("0.5 0.5 0.01 -1", "class -1 outside 0..7"),
        ("0.5 0.5 0.01 1.5", "the class must be an integer"),
        ("1.2 0.5 0.01 1", "x and y must lie in [0, 1]"),
        ("0.5 -0.1 0.01 1", "x and y must lie in [0, 1]"),
        ("nan 0.5 0.01 1", "x and y must lie in [0, 1]"),
        ("0.5 0.5 inf 1", "d must be finite"),
        ("a 0.5 0.01 1", "x, y and d must be numbers"),
    ],
)
def test_malformed_keypoint_line(tmp_path, line, problem):
    path = tmp_path / "k_Keypoint.txt"
    path.write_text(f"0.5 0.5 0.01 1\n{line}\n")
    with pytest.raises(_common.AnnotationError) as info:
        module.parse_keypoint_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 2: {problem};") and "\n" not in message


def test_malformed_keypoint_file_stops_the_build(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY, manual)
    bad = manual / "rgbnir_stereo/data/20170224_0742/Keypoint/240742_000010_Keypoint.txt"
    bad.write_text("0.5 0.5 0.01 9\n")
    with pytest.raises(_common.AnnotationError, match="240742_000010_Keypoint.txt, line 1"):
        _testing.build(module.Builder, tmp_path / "data", manual)


def test_missing_or_empty_manual_dir(tmp_path):
    _testing.assert_missing_and_empty_manual_dir_errors(
        module.Builder, tmp_path, ["RGBResize/<key>_RGBResize.png", "_NIRResize.png", "lists/"]
    )


def test_wrong_layout(tmp_path):
    _testing.assert_wrong_layout_error(
        module.Builder, tmp_path, ["RGBResize/<key>_RGBResize.png", "NIRResize/"]
    )


def test_truncated_image(tmp_path):
    _testing.assert_truncated_image_error(
        module.Builder,
        DUMMY,
        tmp_path,
        "rgbnir_stereo/data/20170221_1357/NIRResize/211357_000020_NIRResize.png",
    )


def test_bad_list_line(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "bad.txt").write_text("not_a_collection key 1 2 3 4\n")
    with pytest.raises(ValueError, match="bad.txt, line 1"):
        module.read_lists(lists)


@pytest.mark.parametrize("key", ["../../../../etc/passwd", "..\\..\\secret"])
def test_a_listed_key_cannot_lead_outside_the_collection(tmp_path, key):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "evil.txt").write_text(f"20170221_1357 211357_000001 1 1 1 1\n20170221_1357 {key} 1 1 1 1\n")
    with pytest.raises(_common.PathOutsideManualDirError, match="evil.txt, line 2"):
        module.read_lists(lists)


def test_listed_frame_missing(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY, manual)
    list_file = manual / "rgbnir_stereo" / "lists" / "20170221_1357.txt"
    list_file.write_text(list_file.read_text() + "20170221_1357 211357_999999 1 1 1 1\n")
    with pytest.raises(_common.ImageReadError) as info:
        _testing.build(module.Builder, tmp_path / "data", manual)
    assert "211357_999999_RGBResize.png" in str(info.value)
