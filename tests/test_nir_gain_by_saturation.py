"""Tests of benchmarks/nir_gain_by_saturation.py's region split, against hand-computed values."""

import numpy as np
import pytest

from benchmarks.nir_gain_by_saturation import (
    REGIONS,
    clip_regions,
    gains,
    pooled_psnr,
    region_errors,
)


def test_clip_regions_by_clipped_channels_repeated_to_hr():
    vis_lr = np.array([[[1.0, 1.0, 1.0], [1.0, 0.3, 0.2]],
                       [[0.9, 0.99, 0.5], [0.2, 1.0, 1.0]]], np.float32)
    regions = clip_regions(vis_lr[None], scale=2)
    expected_lr = np.array([[0, 1], [2, 1]])
    assert regions.shape == (4, 4)
    np.testing.assert_array_equal(regions, np.kron(expected_lr, np.ones((2, 2), int)))


def test_clip_regions_rejects_a_grey_input():
    with pytest.raises(ValueError, match="vis_lr must be"):
        clip_regions(np.zeros((4, 4, 1)), scale=2)


def test_region_errors_of_a_known_difference():
    scale = 2
    hr = np.full((12, 12, 3), 100, np.uint8)
    regions = np.full((12, 12), 2)
    regions[2:6, 2:10] = 0  # 32 pixels, all inside the shaved frame
    regions[8:10, 2:4] = 1  # 4 pixels
    sr = hr.copy()
    sr[regions == 0] = 110  # grey +10: Y differs by 10 * 219 / 255
    errors = region_errors(sr, hr, regions, scale)
    y_step = 10 * 219 / 255
    assert errors["saturated"] == (pytest.approx(32 * y_step**2), 32)
    assert errors["partly"] == (0.0, 4)
    assert errors["unclipped"] == (0.0, 8 * 8 - 36)
    assert pooled_psnr(*errors["saturated"]) == pytest.approx(20 * np.log10(255 / y_step))
    assert pooled_psnr(0.0, 0) is None


def test_gains_are_seed_means_over_the_vis_row():
    def row(psnrs):
        return {"regions": {r: {"psnr_db": p} for r, p in zip(REGIONS, psnrs, strict=True)}}

    rows = {"c/baseline/seed0": row([20.0, 25.0, 30.0]), "c/baseline/seed1": row([21.0, 25.0, 30.0]),
            "c/full/seed0": row([23.0, 25.5, 29.9]), "c/full/seed1": row([23.0, 25.5, 30.1]),
            "c/w_nir/seed2": row([30.0, 30.0, 30.0])}  # no VIS row with seed 2: left out
    out = gains(rows, "baseline")
    assert set(out) == {"full"}
    assert out["full"]["seeds"] == ["seed0", "seed1"]
    assert out["full"]["regions"] == pytest.approx({"saturated": 2.5, "partly": 0.5, "unclipped": 0.0})
