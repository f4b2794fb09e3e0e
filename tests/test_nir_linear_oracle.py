"""studies/nir_linear_oracle.py: windows, phases and least squares against hand values."""

import numpy as np
import pytest

from studies import nir_linear_oracle as oracle


def test_window_features_replicate_edges_in_channel_then_row_order():
    image = np.arange(12, dtype=np.float64).reshape(3, 4, 1)  # values = 4 * row + col
    x = oracle.window_features(image, radius=1)
    assert x.shape == (12, 9)
    # Pixel (0, 0): its 3x3 window with the border replicated, row by row.
    np.testing.assert_array_equal(x[0], [0, 0, 1, 0, 0, 1, 4, 4, 5])
    # Pixel (1, 2) (row-major index 6) is inside: plain neighbours.
    np.testing.assert_array_equal(x[6], [1, 2, 3, 5, 6, 7, 9, 10, 11])
    two = np.concatenate([image, 100 + image], axis=-1)
    np.testing.assert_array_equal(oracle.window_features(two, 1)[6, 9:], 100 + x[6])


def test_phase_targets_and_assemble_are_inverse_and_put_phases_in_columns():
    rng = np.random.default_rng(0)
    hr = rng.random((6, 9))
    phases = oracle.phase_targets(hr, 3)
    assert phases.shape == (6, 3 * 3)
    # LR pixel (1, 2) -> row 1 * 3 + 2; HR pixel (1*3 + 2, 2*3 + 0) is phase (2, 0) -> column 6.
    assert phases[5, 6] == hr[5, 6]
    np.testing.assert_array_equal(oracle.assemble(phases, 2, 3, 3), hr)
    with pytest.raises(ValueError, match="not a multiple"):
        oracle.phase_targets(np.zeros((5, 6)), 2)


def test_normal_equations_over_frames_equal_one_least_squares_fit():
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((50, 4)), rng.standard_normal((70, 4))
    y1, y2 = rng.standard_normal((50, 2)), rng.standard_normal((70, 2))
    equations = oracle.NormalEquations()
    equations.add(x1, y1)
    equations.add(x2, y2)
    expected = np.linalg.lstsq(np.vstack([x1, x2]), np.vstack([y1, y2]), rcond=None)[0]
    np.testing.assert_allclose(equations.solve(), expected, atol=1e-5)
    # A column subset is the fit on those columns alone.
    subset = np.linalg.lstsq(np.vstack([x1, x2])[:, [0, 3]], np.vstack([y1, y2]), rcond=None)[0]
    np.testing.assert_allclose(equations.solve([0, 3]), subset, atol=1e-5)


def test_vis_columns_of_the_vis_nir_matrix_are_the_vis_design():
    rng = np.random.default_rng(6)
    vis, nir = rng.random((5, 4, 3)), rng.random((5, 4, 1))
    full = oracle.features(vis, nir, "vis_nir", radius=1)
    np.testing.assert_array_equal(full[:, oracle.feature_columns("vis", 1)],
                                  oracle.features(vis, nir, "vis", radius=1))
    np.testing.assert_array_equal(oracle.feature_columns("vis_nir", 1), np.arange(full.shape[1]))


def test_nir_features_recover_a_target_built_from_the_nir():
    # HR luma = 20 + 100 * (the NIR pixel to the right of the LR pixel) at every phase, plus
    # 50 * the VIS green at phase 0: only the vis_nir fit can reproduce it.
    rng = np.random.default_rng(2)
    h, w, s = 12, 10, 2
    vis, nir = rng.random((h, w, 3)), rng.random((h, w, 1))
    right = np.pad(nir[..., 0], ((0, 0), (0, 1)), mode="edge")[:, 1:]
    phases = np.repeat((20 + 100 * right).reshape(-1, 1), s * s, axis=1)
    phases[:, 0] += 50 * vis[..., 1].reshape(-1)
    hr_y = oracle.assemble(phases, h, w, s)
    errors = {}
    for feature_set in oracle.FEATURE_SETS:
        x = oracle.features(vis, nir, feature_set, radius=1)
        assert x.shape[1] == {"vis": 27, "vis_nir": 36}[feature_set] + 1
        equations = oracle.NormalEquations()
        equations.add(x, oracle.phase_targets(hr_y, s))
        errors[feature_set] = np.abs(oracle.assemble(x @ equations.solve(), h, w, s) - hr_y).max()
    assert errors["vis_nir"] < 1e-3
    assert errors["vis"] > 5


def test_y_psnr_of_a_known_error_after_the_shave_and_clip():
    hr = np.full((12, 12), 100.0)
    pred = hr.copy()
    pred[2:10, 2:10] += 5.0  # inside the 2-px shave: an error of 5 everywhere there
    assert oracle.y_psnr(pred, hr, 2) == pytest.approx(10 * np.log10(255.0**2 / 25.0))
    pred[0, 0] = 1000.0  # in the shaved border: no effect
    assert oracle.y_psnr(pred, hr, 2) == pytest.approx(10 * np.log10(255.0**2 / 25.0))
    low = np.full((12, 12), 0.0)  # clipped to 16: an error of 16 - 20 = -4
    assert oracle.y_psnr(low, np.full((12, 12), 20.0), 2) == pytest.approx(10 * np.log10(255.0**2 / 16.0))


def _row(psnrs):
    return {"evaluation": {"frames": [{"id": i, "model": {"standard": {"psnr": p}}} for i, p in psnrs.items()]}}


def test_network_gains_pair_seeds_average_frames_and_let_the_first_file_win():
    first = {"rows_results": {
        "low_light/baseline/seed0": _row({"a": 20.0, "b": 30.0, "stereo": 10.0}),
        "low_light/full/seed0": _row({"a": 21.0, "b": 30.5, "stereo": 0.0}),
        "low_light/full/seed2": _row({"a": 99.0, "b": 99.0}),  # no baseline of seed 2
    }}
    second = {"rows_results": {
        "low_light/full/seed0": _row({"a": 50.0, "b": 50.0}),  # shadowed by the first file
        "low_light/baseline/seed1": _row({"a": 20.0, "b": 30.0}),
        "low_light/full/seed1": _row({"a": 22.0, "b": 30.0}),
        "clean/full/seed1": _row({"a": 0.0, "b": 0.0}),
    }}
    gains = oracle.network_gains([first, second], "low_light", ["a", "b"], ["full", "w_nir"])
    # Seed 0: (1.0 + 0.5) / 2 = 0.75; seed 1: (2.0 + 0.0) / 2 = 1.0; the stereo frame left out.
    assert gains == {"full": {"seeds": ["seed0", "seed1"], "gain_db": pytest.approx(0.875)}}
    with pytest.raises(ValueError, match="frame c was not evaluated"):
        oracle.network_gains([first, second], "low_light", ["a", "c"], ["full"])


def test_measure_scores_bicubic_as_the_tables_and_nested_fits_never_lose_on_their_own_frame():
    from cspsr_tf.ops.metrics import psnr
    from cspsr_tf.ops.resize import bicubic_upscale

    rng = np.random.default_rng(4)
    s, h, w = 2, 16, 12

    def frame(k):
        hr = rng.integers(0, 256, (h * s, w * s, 3), dtype=np.uint8)
        vis = hr[::s, ::s].astype(np.float32)[None] / 255.0
        nir = rng.random((1, h, w, 1), dtype=np.float32)
        return (f"f{k}", vis, nir, hr, "aligned")

    train, test = [frame(0), frame(1)], [frame(2)]
    means, per_frame = oracle.measure(train, test, s, radius=1)
    _, vis, _, hr, _ = test[0]
    assert per_frame[0]["bicubic"] == pytest.approx(
        psnr(np.asarray(bicubic_upscale(vis[0], s)), hr, protocol="standard", scale=s), abs=1e-9)
    # The VIS+NIR features contain the VIS ones: fitted on the frame itself, never worse.
    assert means["oracle/vis_nir"] >= means["oracle/vis"] - 1e-6
    assert set(means) == {"bicubic", "train/vis", "train/vis_nir", "oracle/vis", "oracle/vis_nir"}
