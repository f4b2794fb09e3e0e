"""studies/oracle_guide_samples.py: the NIR of each pair replaced by the VIS's own luma."""

import csv

import cv2
import numpy as np
import pytest

from datasets.nirvis_folder.nirvis_folder_dataset_builder import read_rows
from studies.oracle_guide_samples import write_oracle_folder


def _write_samples(folder):
    (folder / "scene").mkdir(parents=True)
    rgb8 = np.zeros((2, 2, 3), np.uint8)
    rgb8[0, 0] = (255, 0, 0)  # RGB red -> luma 0.299 * 255 = 76.245 -> 76
    rgb8[0, 1] = (0, 255, 0)  # green -> 149.685 -> 150
    rgb8[1, 0] = (0, 0, 255)  # blue -> 29.07 -> 29
    rgb8[1, 1] = (10, 20, 30)  # 2.99 + 11.74 + 3.42 = 18.15 -> 18
    cv2.imwrite(str(folder / "scene" / "a_rgb.png"), rgb8[..., ::-1])
    # 16-bit: decoded to 8-bit by round(v / 257) first, as nirvis_folder does.
    rgb16 = np.full((2, 3, 3), 257 * 100, np.uint16)
    cv2.imwrite(str(folder / "scene" / "b_rgb.png"), rgb16)
    for name in ("a_nir.png", "b_nir.png"):
        cv2.imwrite(str(folder / "scene" / name), np.zeros((2, 2), np.uint8))
    (folder / "pairs.csv").write_text(
        "rgb,nir,geometry\nscene/a_rgb.png,scene/a_nir.png,stereo\nscene/b_rgb.png,scene/b_nir.png,aligned\n"
    )


def test_the_guide_is_the_hand_computed_luma_and_ids_are_kept(tmp_path):
    _write_samples(tmp_path / "real")
    assert write_oracle_folder(tmp_path / "real", tmp_path / "oracle") == 2
    with open(tmp_path / "oracle" / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["geometry"] for r in rows] == ["aligned", "aligned"]
    guide_a = cv2.imread(str(tmp_path / "oracle" / rows[0]["nir"]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(guide_a, [[76, 150], [29, 18]])
    guide_b = cv2.imread(str(tmp_path / "oracle" / rows[1]["nir"]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(guide_b, np.full((2, 3), 100))
    # Same example ids, so the benchmark's split rule puts every pair where it was.
    ids = [r[0] for r in read_rows(tmp_path / "oracle" / "pairs.csv")]
    assert ids == [r[0] for r in read_rows(tmp_path / "real" / "pairs.csv")]
    # Written again, the folder is replaced, and no temporary folder is left.
    write_oracle_folder(tmp_path / "real", tmp_path / "oracle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oracle", "real"]


def test_missing_or_empty_pairs_csv_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="pairs.csv not found"):
        write_oracle_folder(tmp_path, tmp_path / "oracle")
    (tmp_path / "pairs.csv").write_text("rgb,nir\n")
    with pytest.raises(ValueError, match="lists no pairs"):
        write_oracle_folder(tmp_path, tmp_path / "oracle")
    assert not (tmp_path / "oracle").exists()
