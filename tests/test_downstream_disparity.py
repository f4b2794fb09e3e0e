"""Table 5's fixed cross-spectral matcher and its scores, against known shifts and hand sums."""

import math

import numpy as np
import pytest

from cspsr_tf.evaluate import downstream_disparity as dd
from tests.cli_runner import run_cli
from tests.cross_spectral_pairs import cross_spectral_pair, cross_spectral_scene


@pytest.mark.parametrize("shift", [0, 3, 7])
def test_matcher_recovers_an_integer_shift_of_a_cross_spectral_pair(shift):
    vis, nir = cross_spectral_pair(np.random.default_rng(shift), 48, 64, shift)
    disparity = dd.match_disparity(vis[0], nir[0], max_disparity=10)
    interior = disparity[8:-8, 16:-8]  # away from the borders the windows spill over
    assert np.median(interior) == pytest.approx(shift, abs=0.1)
    # Where the NIR gain crosses 0 the NIR shows no structure to match: a few pixels miss.
    assert np.mean(np.abs(interior - shift) < 0.5) > 0.8


def test_matcher_refines_a_half_pixel_shift():
    vis, nir_right = cross_spectral_scene(np.random.default_rng(1), 48, 64, 6)
    # Linear interpolation halfway between shifts 4 and 5: a left disparity of 4.5.
    nir = 0.5 * (nir_right(4) + nir_right(5))
    disparity = dd.match_disparity(vis[0], nir[0], max_disparity=10)
    assert np.median(disparity[8:-8, 16:-8]) == pytest.approx(4.5, abs=0.2)


def test_matcher_refuses_pairs_of_different_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        dd.match_disparity(np.zeros((8, 8, 3)), np.zeros((8, 9, 1)), 4)


def test_rmse_per_class_and_both_means_by_hand():
    disparity = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    keypoints = np.array([
        [0, 0, 2.0, 0],   # Common: error -1
        [1, 2, 3.0, 0],   # Common: error +3
        [0, 2, 3.5, 4],   # Vegetation: error -0.5
        [5, 5, 1.0, 1],   # outside the frame: skipped
    ])
    table = dd.rmse_by_class(dd.keypoint_squared_errors(disparity, keypoints))
    assert table["Common"] == pytest.approx(math.sqrt((1 + 9) / 2))
    assert table["Vegetation"] == pytest.approx(0.5)
    assert table["Light"] is None and table["Bag"] is None
    assert table["mean"] == pytest.approx((math.sqrt(5) + 0.5) / 2)
    assert table["mean_paper"] == pytest.approx((math.sqrt(5) + 0.5) / 8)
    assert table["points"] == 3


def test_the_papers_mean_is_its_seven_classes_over_eight():
    # The convention `mean_paper` follows, checked on the paper's own rows.
    for values in dd.PAPER_TABLE5.values():
        assert sum(values[:7]) / 8 == pytest.approx(values[7], abs=2e-4)


def test_classes_agree_with_the_builder():
    from datasets.rgb_nir_stereo.rgb_nir_stereo_dataset_builder import KEYPOINT_CLASSES

    assert tuple(KEYPOINT_CLASSES) == dd.KEYPOINT_CLASSES


def test_dense_errors_by_hand():
    disparity = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    truth = np.array([[1.0, 1.0], [5.0, 0.0]])
    valid = np.array([[1, 1], [1, 0]])
    errors = dd.dense_errors(disparity, truth, valid)
    assert errors["epe"] == pytest.approx((0 + 1 + 2) / 3)
    assert errors["rmse"] == pytest.approx(math.sqrt((0 + 1 + 4) / 3))
    assert errors["valid_pixels"] == 3


def test_on_nirvis_synthetic_hr_matches_better_than_bicubic(synthetic_data_dir):
    from cspsr_tf.data import pipeline, sources

    raw = sources.load_split("nirvis_synthetic", "test", synthetic_data_dir)
    eval_ds = pipeline.make_eval_dataset(raw, scale=4)
    results = dd.evaluate_downstream(None, eval_ds, scale=4, max_disparity=32, max_frames=3)
    dense = results["dense"]
    assert set(dense) == {"Bicubic", "HR"} and results["frames"] == 3
    assert dense["HR"]["epe"] < dense["Bicubic"]["epe"]
    markdown = dd.downstream_markdown(results, "nirvis_synthetic test")
    assert "| HR |" in markdown and "| Bicubic |" in markdown
    # The Table 5 layout is there too, empty: nirvis_synthetic has no material keypoints.
    assert "| Method | Common | Light |" in markdown and "no material keypoints" in markdown
    assert all(row["points"] == 0 and row["mean_paper"] is None
               for row in results["keypoints"].values())


def test_evaluate_cli_writes_the_downstream_table(synthetic_data_dir, tmp_path):
    import json
    import os
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "eval"
    result = run_cli(
        [sys.executable, os.path.join(ROOT, "evaluate.py"), "--model=cspsr_small_x4",
         "--dataset=nirvis_synthetic", "--split=test", f"--data_dir={synthetic_data_dir}",
         "--max_frames=2", "--nosave_images", "--downstream=disparity", f"--out_dir={out}"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads((out / "nirvis_synthetic_test" / "downstream_disparity.json").read_text())
    assert table["max_disparity"] == 48 and table["frames"] == 2  # the preset's 12 LR px x 4
    assert set(table["dense"]) == {"Bicubic", "model", "HR"}
    assert table["dense"]["HR"]["epe"] < table["dense"]["Bicubic"]["epe"]
    assert "Downstream disparity" in (out / "summary.md").read_text()
