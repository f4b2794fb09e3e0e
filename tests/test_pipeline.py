"""Tests of cspsr_tf.ops.resize and cspsr_tf.data.pipeline on tiny in-memory datasets.

Expected values come from numpy, PIL or hand computation, never from the code under test.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from cspsr_tf.data import pipeline  # noqa: E402
from cspsr_tf.ops import resize  # noqa: E402

_LUMA = np.array([0.299, 0.587, 0.114], np.float64)


def _source(vis, nir, disparity=None, ids=None, geometry="stereo"):
    """A builder-like dataset over numpy frames stacked on the first axis."""
    n = len(vis)
    data = {
        "vis": np.asarray(vis, np.uint8),
        "nir": np.asarray(nir, np.uint8),
        "id": np.array(ids if ids is not None else [f"frame{i}" for i in range(n)]),
        "geometry": np.array([geometry] * n),
    }
    if disparity is not None:
        data["disparity"] = np.asarray(disparity, np.float32)
    return tf.data.Dataset.from_tensor_slices(data)


def _dynamic_source(vis, nir, ids):
    """Like `_source` but with unknown height and width in the element spec."""

    def generate():
        for v, n, i in zip(vis, nir, ids, strict=True):
            yield {"vis": v, "nir": n, "id": i, "geometry": "stereo"}

    signature = {
        "vis": tf.TensorSpec([None, None, 3], tf.uint8),
        "nir": tf.TensorSpec([None, None, 1], tf.uint8),
        "id": tf.TensorSpec([], tf.string),
        "geometry": tf.TensorSpec([], tf.string),
    }
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def _random_frames(n, height, width, seed=0):
    rng = np.random.default_rng(seed)
    vis = rng.integers(30, 221, (n, height, width, 3), dtype=np.uint8)
    nir = rng.integers(30, 221, (n, height, width, 1), dtype=np.uint8)
    return vis, nir


def _pil_bicubic_down(image, scale):
    """Reference LR: PIL's float bicubic (antialiased, Keys a = -0.5), channel by channel."""
    pil = pytest.importorskip("PIL.Image")
    height, width = image.shape[0] // scale, image.shape[1] // scale
    channels = [
        np.asarray(
            pil.fromarray(np.ascontiguousarray(image[..., c], np.float32), mode="F").resize(
                (width, height), pil.BICUBIC
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(channels, -1), 0.0, 1.0)


def _take(ds, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), element) for element in ds.take(n)]


# ----------------------------------------------------------------------------- resize


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_downscale_matches_pil_float_bicubic(scale):
    rng = np.random.default_rng(scale)
    image = rng.uniform(0.0, 1.0, (12 * scale, 10 * scale, 3)).astype(np.float32)
    got = resize.bicubic_downscale(image, scale).numpy()
    assert got.shape == (12, 10, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, _pil_bicubic_down(image, scale), atol=1e-5)


def test_bicubic_downscale_of_constant_is_constant_and_batched_shape():
    image = np.full((2, 16, 24, 3), 0.3, np.float32)
    got = resize.bicubic_downscale(image, 4).numpy()
    assert got.shape == (2, 4, 6, 3)
    np.testing.assert_allclose(got, 0.3, atol=1e-6)


def test_bicubic_outputs_are_clipped_to_unit_range():
    # A one-pixel checkerboard makes the bicubic kernel overshoot on upscaling.
    board = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)[..., None]
    up = resize.bicubic_upscale(board, 4).numpy()
    assert up.shape == (32, 32, 1)
    assert up.min() >= 0.0 and up.max() <= 1.0
    down = resize.bicubic_downscale(np.kron(board, np.ones((4, 4, 1), np.float32)), 2).numpy()
    assert down.min() >= 0.0 and down.max() <= 1.0


def test_bicubic_upscale_of_constant_is_constant():
    got = resize.bicubic_upscale(np.full((1, 5, 7, 1), 0.6, np.float32), 3).numpy()
    assert got.shape == (1, 15, 21, 1)
    np.testing.assert_allclose(got, 0.6, atol=1e-6)


def test_bicubic_downscale_divisibility_errors():
    with pytest.raises(ValueError, match=r"\(10, 12, 3\).*scale=4"):
        resize.bicubic_downscale(np.zeros((10, 12, 3), np.float32), 4)
    with pytest.raises(ValueError, match="scale"):
        resize.bicubic_downscale(np.zeros((8, 8, 3), np.float32), 0)
    with pytest.raises(TypeError, match="uint8"):
        resize.bicubic_downscale(np.zeros((8, 8, 3), np.uint8), 2)

    # Unknown static shape: the graph assertion reports it at run time.
    traced = tf.function(
        lambda x: resize.bicubic_downscale(x, 4),
        input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
    )
    assert traced(tf.zeros([8, 12, 3])).shape == (2, 3, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="divisible by scale=4"):
        traced(tf.zeros([10, 12, 3]))


# ----------------------------------------------------------------------------- training


def test_training_dataset_contract_with_and_without_disparity():
    vis, nir = _random_frames(3, 40, 52)
    disparity = np.full((3, 40, 52, 1), 4.0, np.float32)
    for source, has_disparity in ((_source(vis, nir), False), (_source(vis, nir, disparity), True)):
        ds = pipeline.make_training_dataset(
            source, scale=4, hr_patch_size=16, batch_size=2, seed=0
        )
        inputs_spec, targets_spec = ds.element_spec
        assert inputs_spec["vis_lr"].shape == (2, 4, 4, 3)
        assert inputs_spec["nir_lr"].shape == (2, 4, 4, 1)
        assert targets_spec["vis_hr"].shape == (2, 16, 16, 3)
        assert targets_spec["nir_hr"].shape == (2, 16, 16, 1)
        assert ("disparity_hr" in targets_spec) == has_disparity
        inputs, targets = _take(ds, 1)[0]
        for key, value in {**inputs, **targets}.items():
            assert value.dtype == np.float32, key
            if key != "disparity_hr":
                assert 0.0 <= value.min() and value.max() <= 1.0, key
        if has_disparity:
            assert targets["disparity_hr"].shape == (2, 16, 16, 1)
            # Random downscaling in [0.5, 1] scales a disparity of 4 into [2, 4].
            assert 2.0 - 1e-5 <= targets["disparity_hr"].min()
            assert targets["disparity_hr"].max() <= 4.0 + 1e-5


def test_lr_inputs_are_bicubic_downscales_of_the_hr_targets():
    vis, nir = _random_frames(2, 32, 32)
    ds = pipeline.make_training_dataset(
        _source(vis, nir), scale=2, hr_patch_size=16, batch_size=2, seed=5
    )
    inputs, targets = _take(ds, 1)[0]
    for b in range(2):
        np.testing.assert_allclose(
            inputs["vis_lr"][b], _pil_bicubic_down(targets["vis_hr"][b], 2), atol=1e-5
        )
        np.testing.assert_allclose(
            inputs["nir_lr"][b], _pil_bicubic_down(targets["nir_hr"][b], 2), atol=1e-5
        )


def test_crop_keeps_stereo_shift_between_views():
    # NIR is the right view: nir(i, k) = luma(vis)(i, k + d), i.e. vis(i, j) matches
    # nir(i, j - d). Same-window cropping and downscaling must keep a shift of d / scale.
    scale, disparity = 2, 8
    rng = np.random.default_rng(1)
    vis = rng.integers(30, 221, (2, 64, 96, 3)).astype(np.uint8)
    luma = vis.astype(np.float64) @ _LUMA
    nir = rng.integers(30, 221, (2, 64, 96)).astype(np.float64)
    nir[:, :, :-disparity] = luma[:, :, disparity:]
    nir = np.round(nir).astype(np.uint8)[..., None]
    ds = pipeline.make_training_dataset(
        _source(vis, nir),
        scale=scale,
        hr_patch_size=48,
        batch_size=4,
        seed=2,
        random_downscale=None,
    )
    inputs, _ = _take(ds, 1)[0]
    vis_luma = inputs["vis_lr"].astype(np.float64) @ _LUMA  # [B, 24, 24]
    nir_lr = inputs["nir_lr"][..., 0].astype(np.float64)
    width, border = vis_luma.shape[2], 2  # skip the crop border the bicubic kernel reaches
    errors = []
    for shift in range(0, 9):
        a = nir_lr[:, :, border : width - shift - border]
        b = vis_luma[:, :, border + shift : width - border]
        errors.append(np.mean(np.abs(a - b)))
    true_shift = disparity // scale
    assert int(np.argmin(errors)) == true_shift
    others = [e for s, e in enumerate(errors) if s != true_shift]
    assert errors[true_shift] < 0.004  # uint8 rounding of the NIR only
    assert errors[true_shift] * 10 < min(others)


def _coordinate_frames(height=60, width=60):
    """VIS red = 4 * row, green = 4 * column; NIR = 255 - 4 * row in both views."""
    rows, cols = np.indices((height, width))
    vis = np.stack([4 * rows, 4 * cols, np.full_like(rows, 128)], -1).astype(np.uint8)
    nir = (255 - 4 * rows).astype(np.uint8)[..., None]
    return vis[None], nir[None]


def test_vertical_flip_moves_both_views_together_and_never_flips_columns():
    vis, nir = _coordinate_frames()
    ds = pipeline.make_training_dataset(
        _source(vis, nir), scale=2, hr_patch_size=16, batch_size=16, seed=7,
        random_downscale=None,
    )
    _, targets = _take(ds, 1)[0]
    red, green = targets["vis_hr"][..., 0], targets["vis_hr"][..., 1]
    step = 4.0 / 255.0
    flipped = 0
    for b in range(16):
        # The row relation between the views holds in every sample, flipped or not.
        np.testing.assert_allclose(targets["nir_hr"][b, ..., 0], 1.0 - red[b], atol=1e-6)
        # Columns always run left to right (no horizontal flip, no rotation).
        np.testing.assert_allclose(np.diff(green[b], axis=1), step, atol=1e-6)
        np.testing.assert_allclose(np.diff(green[b], axis=0), 0.0, atol=1e-6)
        row_step = np.diff(red[b], axis=0)
        assert np.allclose(row_step, step, atol=1e-6) or np.allclose(row_step, -step, atol=1e-6)
        flipped += bool(np.allclose(row_step, -step, atol=1e-6))
    assert 0 < flipped < 16

    no_flip = pipeline.make_training_dataset(
        _source(vis, nir), scale=2, hr_patch_size=16, batch_size=16, seed=7,
        random_downscale=None, vertical_flip=False,
    )
    _, targets = _take(no_flip, 1)[0]
    # Without the flip every sample keeps rows running top to bottom.
    np.testing.assert_allclose(np.diff(targets["vis_hr"][..., 0], axis=1), step, atol=1e-6)


def test_random_downscale_scales_disparity_with_the_image():
    # Green is a column ramp of 2 levels per HR pixel. Downscaling the frame by f makes the
    # ramp steeper by W / W' and the disparity smaller by W' / W: their product is constant.
    height, width, ramp, disparity = 40, 100, 2.0, 10.0
    rows, cols = np.indices((height, width))
    vis = np.stack([rows, ramp * cols, np.full_like(rows, 60)], -1).astype(np.uint8)[None]
    nir = np.full((1, height, width, 1), 90, np.uint8)
    disp = np.full((1, height, width, 1), disparity, np.float32)
    ds = pipeline.make_training_dataset(
        _source(vis, nir, disp), scale=2, hr_patch_size=16, batch_size=8, seed=3,
        random_downscale=(0.5, 1.0), vertical_flip=False,
    )
    _, targets = _take(ds, 1)[0]
    seen = []
    for b in range(8):
        d = targets["disparity_hr"][b]
        assert np.ptp(d) < 1e-5  # a constant map stays constant
        # Interior columns: the antialiased bicubic kernel is exact on a linear ramp there.
        slope = np.mean(np.diff(targets["vis_hr"][b, :, 3:-3, 1], axis=1)) * 255.0
        np.testing.assert_allclose(slope * d[0, 0, 0], ramp * disparity, rtol=0.02)
        assert disparity * 0.5 - 0.1 <= d[0, 0, 0] <= disparity + 1e-5
        seen.append(round(float(d[0, 0, 0]), 3))
    assert len(set(seen)) > 1  # the factor is random


def test_random_downscale_never_goes_below_the_patch():
    # 40 x 100 frame, patch 32, requested factor 0.5: the factor is raised to 32 / 40 = 0.8,
    # so the frame becomes 32 x 80 and the disparity 10 becomes 10 * 80 / 100 = 8.
    vis, nir = _random_frames(1, 40, 100)
    disp = np.full((1, 40, 100, 1), 10.0, np.float32)
    ds = pipeline.make_training_dataset(
        _source(vis, nir, disp), scale=4, hr_patch_size=32, batch_size=2, seed=0,
        random_downscale=(0.5, 0.5),
    )
    inputs, targets = _take(ds, 1)[0]
    assert inputs["vis_lr"].shape == (2, 8, 8, 3)
    np.testing.assert_allclose(targets["disparity_hr"], 8.0, rtol=1e-6)


def test_training_dataset_is_deterministic_per_seed():
    vis, nir = _random_frames(4, 36, 44, seed=3)

    def batches(seed):
        ds = pipeline.make_training_dataset(
            _source(vis, nir), scale=2, hr_patch_size=16, batch_size=3, seed=seed,
            degradation="noise", shuffle_buffer=4,
        )
        return _take(ds, 3)

    first, again, other = batches(11), batches(11), batches(12)
    for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(other), strict=True)
    )


def test_training_argument_errors():
    vis, nir = _random_frames(1, 40, 40)
    source = _source(vis, nir)
    with pytest.raises(ValueError, match=r"hr_patch_size=30, scale=4"):
        pipeline.make_training_dataset(source, scale=4, hr_patch_size=30, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="random_downscale"):
        pipeline.make_training_dataset(
            source, scale=2, hr_patch_size=16, batch_size=1, seed=0, random_downscale=(0.5, 2)
        )
    with pytest.raises(ValueError, match="Valid names"):
        pipeline.make_training_dataset(
            source, scale=2, hr_patch_size=16, batch_size=1, seed=0, degradation="fog"
        )
    with pytest.raises(ValueError, match="smaller than hr_patch_size=48"):
        pipeline.make_training_dataset(source, scale=2, hr_patch_size=48, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="'vis' and 'nir'"):
        pipeline.make_training_dataset(
            tf.data.Dataset.from_tensor_slices({"vis": vis}), scale=2, hr_patch_size=16,
            batch_size=1, seed=0,
        )


def test_frame_smaller_than_patch_raises_with_its_id():
    vis_big, nir_big = _random_frames(1, 40, 40)
    vis_small, nir_small = _random_frames(1, 20, 40)
    source = _dynamic_source(
        [vis_big[0], vis_small[0]], [nir_big[0], nir_small[0]], ["ok_frame", "tiny_frame_7"]
    )
    ds = pipeline.make_training_dataset(
        source, scale=2, hr_patch_size=32, batch_size=1, seed=0, shuffle_buffer=0,
        repeat=False,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="tiny_frame_7"):
        _take(ds, 2)


def test_degradation_touches_only_the_lr_vis_input():
    vis, nir = _random_frames(2, 32, 32)
    ds = pipeline.make_training_dataset(
        _source(vis, nir), scale=2, hr_patch_size=16, batch_size=2, seed=1,
        degradation={"name": "over_exposure", "gain": 2.0},
    )
    inputs, targets = _take(ds, 1)[0]
    for b in range(2):
        clean_vis_lr = _pil_bicubic_down(targets["vis_hr"][b], 2)
        np.testing.assert_allclose(
            inputs["vis_lr"][b], np.minimum(2.0 * clean_vis_lr, 1.0), atol=1e-5
        )
        np.testing.assert_allclose(
            inputs["nir_lr"][b], _pil_bicubic_down(targets["nir_hr"][b], 2), atol=1e-5
        )


# ----------------------------------------------------------------------------- evaluation


def test_eval_dataset_crops_top_left_to_a_multiple():
    rng = np.random.default_rng(4)
    # Dark frames (as the Zhi et al. data): the pipeline must not brighten them.
    vis = rng.integers(0, 51, (2, 45, 50, 3), dtype=np.uint8)
    nir = rng.integers(0, 51, (2, 45, 50, 1), dtype=np.uint8)
    disp = rng.uniform(0, 13, (2, 45, 50, 1)).astype(np.float32)
    ds = pipeline.make_eval_dataset(
        _source(vis, nir, disp, ids=["x", "y"]), scale=2, multiple=4
    )
    elements = _take(ds, 2)
    for index, (inputs, targets, meta) in enumerate(elements):
        # lcm(2, 2 * 4) = 8: 45 x 50 -> 40 x 48, LR 20 x 24 (multiples of 4).
        assert inputs["vis_lr"].shape == (1, 20, 24, 3)
        assert inputs["nir_lr"].shape == (1, 20, 24, 1)
        np.testing.assert_allclose(targets["vis_hr"][0], vis[index, :40, :48] / 255.0, atol=1e-7)
        np.testing.assert_allclose(targets["nir_hr"][0], nir[index, :40, :48] / 255.0, atol=1e-7)
        np.testing.assert_array_equal(targets["disparity_hr"][0], disp[index, :40, :48])
        np.testing.assert_allclose(
            inputs["vis_lr"][0], _pil_bicubic_down(vis[index, :40, :48] / 255.0, 2), atol=1e-5
        )
        assert meta["id"][0] == [b"x", b"y"][index]
        assert meta["geometry"][0] == b"stereo"

    no_disp = pipeline.make_eval_dataset(_source(vis, nir), scale=3)
    inputs, targets, _ = _take(no_disp, 1)[0]
    assert "disparity_hr" not in targets
    assert inputs["vis_lr"].shape == (1, 15, 16, 3)  # 45 x 48 HR


# ----------------------------------------------------------------------------- eager vs map


def _frame(with_disparity=True):
    vis, nir = _random_frames(1, 36, 40, seed=9)
    frame = {
        "vis": tf.constant(vis[0].astype(np.float32) / 255.0),
        "nir": tf.constant(nir[0].astype(np.float32) / 255.0),
    }
    if with_disparity:
        frame["disparity"] = tf.constant(
            np.random.default_rng(2).uniform(0, 9, (36, 40, 1)).astype(np.float32)
        )
    return frame


_SEED = tf.constant([5, 6], tf.int64)
_OPS = {
    "to_float_image": lambda f: pipeline.to_float_image(tf.cast(f["vis"] * 255.0, tf.uint8)),
    "frame_from_example": lambda f: pipeline.frame_from_example(
        {"vis": tf.cast(f["vis"] * 255.0, tf.uint8), "nir": tf.cast(f["nir"] * 255.0, tf.uint8),
         "disparity": f["disparity"]}
    ),
    "random_downscale_frame": lambda f: pipeline.random_downscale_frame(f, _SEED, (0.5, 1.0), 16),
    "random_crop_frame": lambda f: pipeline.random_crop_frame(f, 16, _SEED),
    "random_vertical_flip_frame": lambda f: pipeline.random_vertical_flip_frame(f, _SEED),
    "crop_to_multiple": lambda f: pipeline.crop_to_multiple(f, 7),
    "prepare_pair": lambda f: pipeline.prepare_pair(
        f["vis"], f["nir"], 4, disparity=f["disparity"], degradation="low_light", seed=_SEED
    ),
    "bicubic_downscale": lambda f: resize.bicubic_downscale(f["vis"], 2),
    "bicubic_upscale": lambda f: resize.bicubic_upscale(f["nir"], 3),
}


@pytest.mark.parametrize("name", sorted(_OPS))
def test_op_gives_the_same_result_eagerly_and_in_dataset_map(name):
    op, frame = _OPS[name], _frame()
    eager = op(frame)
    mapped = next(iter(tf.data.Dataset.from_tensors(frame).map(op)))
    # Graph optimisations may reorder float arithmetic: allow float32 rounding, no more.
    for a, b in zip(tf.nest.flatten(eager), tf.nest.flatten(mapped), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)


def test_crop_and_flip_use_one_window_for_every_field():
    frame = _frame()
    cropped = pipeline.random_crop_frame(frame, 16, _SEED)
    vis = frame["vis"].numpy()
    # Locate the window from the VIS crop by brute force, then check the other fields.
    matches = [
        (top, left)
        for top in range(36 - 16 + 1)
        for left in range(40 - 16 + 1)
        if np.array_equal(vis[top : top + 16, left : left + 16], cropped["vis"].numpy())
    ]
    assert len(matches) == 1
    top, left = matches[0]
    for key in ("nir", "disparity"):
        np.testing.assert_array_equal(
            cropped[key].numpy(), frame[key].numpy()[top : top + 16, left : left + 16]
        )
    flips = [
        pipeline.random_vertical_flip_frame(frame, tf.constant([s, 0], tf.int64))
        for s in range(8)
    ]
    for flipped in flips:
        is_flipped = np.array_equal(flipped["vis"].numpy(), vis[::-1])
        assert is_flipped or np.array_equal(flipped["vis"].numpy(), vis)
        for key in ("nir", "disparity"):
            expected = frame[key].numpy()[::-1] if is_flipped else frame[key].numpy()
            np.testing.assert_array_equal(flipped[key].numpy(), expected)
