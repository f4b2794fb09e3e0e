"""studies/nir_residual_oracle.py: design matrix, folds and fits against hand values and lstsq."""

import numpy as np
import pytest

from studies import nir_linear_oracle as linear
from studies import nir_residual_oracle as residual


def _frame(rng, h, w, s):
    return rng.random((h, w, 3)), rng.random((h, w, 1)), 16 + 200 * rng.random((h * s, w * s))


def _frames_with_nir_term(rng, h, w, s, nir_term):
    """4 synthetic frames whose HR luma is a random network output plus `nir_term(NIR)` per LR pixel."""
    frames, net_ys = [], []
    for k in range(4):
        vis, nir, _ = _frame(rng, h, w, s)
        net_y = 40 + 100 * rng.random((h * s, w * s))
        hr_y = net_y + np.repeat(np.repeat(nir_term(nir[..., 0]), s, axis=0), s, axis=1)
        frames.append((f"f{k}", vis, nir, hr_y))
        net_ys.append(net_y)
    return frames, net_ys


def test_residual_features_hold_network_blocks_then_vis_then_nir_then_a_constant():
    h, w, s = 3, 4, 2
    net_y = 255.0 * np.arange(h * s * w * s).reshape(h * s, w * s)  # 255 * (8 * row + col)
    vis = np.arange(h * w * 3, dtype=np.float64).reshape(h, w, 3)
    nir = 1000 + np.arange(h * w, dtype=np.float64).reshape(h, w, 1)
    x = residual.residual_features(net_y, vis, nir, s, net_radius=0, radius=0)
    assert x.shape == (h * w, s * s + 3 + 1 + 1)
    # LR pixel (1, 2) (row 6): its HR block rows 2-3, columns 4-5, phase by phase.
    # Scaled to [0, 1] like the LR inputs.
    np.testing.assert_array_equal(x[6, :4], [20, 21, 28, 29])
    np.testing.assert_array_equal(x[6, 4:7], vis[1, 2])
    assert x[6, 7] == nir[1, 2, 0] and x[6, 8] == 1
    # With windows: the block channels of the neighbours come first, then the VIS and NIR windows.
    x1 = residual.residual_features(net_y, vis, nir, s, net_radius=1, radius=1)
    assert x1.shape == (h * w, 4 * 9 + 3 * 9 + 9 + 1)
    blocks = linear.phase_targets(net_y / 255, s).reshape(h, w, 4)
    np.testing.assert_array_equal(x1[:, :36], linear.window_features(blocks, 1))
    np.testing.assert_array_equal(x1[:, 63:72], linear.window_features(nir, 1))
    with pytest.raises(ValueError, match="sizes differ"):
        residual.residual_features(net_y[:-1], vis, nir, s, 1, 1)


def test_net_columns_drop_exactly_the_nir_window():
    rng = np.random.default_rng(0)
    vis, nir, net_y = _frame(rng, 5, 6, 2)
    x = residual.residual_features(net_y, vis, nir, 2, net_radius=1, radius=2)
    cols = residual.residual_columns("net", 2, net_radius=1, radius=2)
    blocks = linear.phase_targets(net_y / 255, 2).reshape(5, 6, 4)
    by_hand = np.concatenate([linear.window_features(blocks, 1), linear.window_features(vis, 2),
                              np.ones((30, 1))], axis=1)
    np.testing.assert_array_equal(x[:, cols], by_hand)
    np.testing.assert_array_equal(residual.residual_columns("net_nir", 2, 1, 2), np.arange(x.shape[1]))
    with pytest.raises(ValueError, match="feature_set"):
        residual.residual_columns("nir", 2, 1, 2)


def test_folds_deal_sorted_ids_round_robin():
    assert residual.fold_of(["d", "a", "c", "b", "e"]) == {"a": 0, "b": 1, "c": 0, "d": 1, "e": 0}


def test_add_sums_equals_adding_the_frames():
    rng = np.random.default_rng(1)
    parts = [(rng.standard_normal((30, 3)), rng.standard_normal((30, 2))) for _ in range(3)]
    direct, a, b = linear.NormalEquations(), linear.NormalEquations(), linear.NormalEquations()
    for x, y in parts:
        direct.add(x, y)
    a.add(*parts[0])
    b.add(*parts[1])
    b.add(*parts[2])
    merged = linear.NormalEquations()
    merged.add_sums(a)
    merged.add_sums(b)
    np.testing.assert_allclose(merged.xtx, direct.xtx)
    np.testing.assert_allclose(merged.xty, direct.xty)
    assert a.xtx is not merged.xtx  # merging copies: later adds do not change the source


def test_cross_fit_scores_each_frame_with_the_other_folds_least_squares_map():
    rng = np.random.default_rng(2)
    s, h, w = 2, 8, 7
    frames, net_ys = [], []
    for k in range(4):
        vis, nir, hr_y = _frame(rng, h, w, s)
        frames.append((f"f{k}", vis, nir, hr_y))
        net_ys.append(hr_y + 10 * rng.standard_normal(hr_y.shape))
    means, per_frame = residual.measure(frames, net_ys, s, net_radius=0, radius=1)
    folds = residual.fold_of([f[0] for f in frames])
    cols = residual.residual_columns("net", s, 0, 1)
    for (frame_id, vis, nir, hr_y), net_y, row in zip(frames, net_ys, per_frame, strict=True):
        others = [(f, n) for f, n in zip(frames, net_ys, strict=True) if folds[f[0]] != folds[frame_id]]
        x_fit = np.vstack([residual.residual_features(n, f[1], f[2], s, 0, 1)[:, cols] for f, n in others])
        y_fit = np.vstack([linear.phase_targets(f[3], s) for f, _ in others])
        weights = np.linalg.lstsq(x_fit, y_fit, rcond=None)[0]
        x = residual.residual_features(net_y, vis, nir, s, 0, 1)[:, cols]
        expected = linear.y_psnr(linear.assemble(x @ weights, h, w, s), hr_y, s)
        assert row["cross/net"] == pytest.approx(expected, abs=1e-3)
        assert row["net"] == pytest.approx(linear.y_psnr(net_y, hr_y, s))
        # The nested fit with the NIR never loses on the frame it was fitted on.
        assert row["oracle/net_nir"] >= row["oracle/net"] - 1e-6
    assert means["net"] == pytest.approx(np.mean([row["net"] for row in per_frame]))


def test_only_the_nir_set_recovers_what_the_network_missed_from_the_nir():
    # HR luma = the network's output + 60 * the NIR of the LR pixel: the NIR fit reproduces it
    # (across folds too), the network-only fit cannot.
    rng = np.random.default_rng(3)
    s = 2
    frames, net_ys = _frames_with_nir_term(rng, 8, 7, s, lambda nir: 60 * nir)
    means, _ = residual.measure(frames, net_ys, s, net_radius=1, radius=1)
    assert means["cross/net_nir"] > 60 and means["oracle/net_nir"] > 60
    assert means["cross/net_nir"] - means["cross/net"] > 20


def test_mlp_learns_a_non_linear_nir_term_that_the_linear_maps_cannot():
    # HR luma = the network's output + 80 * |NIR - 0.5| of the LR pixel: no linear map of the
    # NIR window explains it (the term is symmetric about the NIR's mean); the MLP given the
    # NIR learns it across folds, the one without cannot.
    rng = np.random.default_rng(4)
    s = 2
    frames, net_ys = _frames_with_nir_term(rng, 16, 16, s, lambda nir: 80 * np.abs(nir - 0.5))
    means, _ = residual.measure(frames, net_ys, s, net_radius=0, radius=0)
    assert abs(means["cross/net_nir"] - means["cross/net"]) < 1
    psnrs = residual.mlp_cross_fit(frames, net_ys, s, net_radius=0, radius=0, epochs=40, hidden=32,
                                   batch_size=32)
    assert set(psnrs) == set(residual.FEATURE_SETS)
    assert all(len(v) == 4 and None not in v for v in psnrs.values())
    assert np.mean(psnrs["net_nir"]) - np.mean(psnrs["net"]) > 6
    assert np.mean(psnrs["net_nir"]) - means["cross/net_nir"] > 6
