"""studies/nir_capacity_probe.py: its numpy stand-ins against the project's TF functions,
its pack format, and its joint training (one model, independent networks)."""

import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.data.degradations import apply_degradation
from cspsr_tf.ops.resize import bicubic_downscale
from studies import nir_capacity_probe as probe
from tests.cli_runner import run_cli


@pytest.mark.parametrize("shape, scale", [((48, 40, 3), 4), ((36, 52, 1), 4), ((30, 22, 3), 2)])
def test_pil_bicubic_equals_the_tf_downscale(shape, scale):
    image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    expected = bicubic_downscale(tf.constant(image, tf.float32) / 255.0, scale).numpy()
    got = probe.bicubic_downscale(image, scale)
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) < 1e-5


def test_low_light_noise_has_the_tf_degradations_statistics():
    # Constant levels where clipping is negligible: mean gain*x, variance gain*x/400 + 0.005^2.
    levels = np.repeat(np.array([0.2, 0.5, 0.9], np.float32), 200_000)
    ours = probe.low_light(levels, np.random.default_rng(1), **probe.LOW_LIGHT_DEFAULTS)
    theirs = apply_degradation(levels, "low_light", seed=tf.constant([3, 4])).numpy()
    for k, x in enumerate((0.2, 0.5, 0.9)):
        part = slice(k * 200_000, (k + 1) * 200_000)
        mean, var = 0.25 * x, 0.25 * x / 400.0 + 0.005**2
        for values in (ours[part], theirs[part]):
            assert abs(values.mean() - mean) < 4 * np.sqrt(var / 200_000)
            assert abs(values.var() / var - 1.0) < 0.02


def test_learning_rate_warms_up_then_follows_a_cosine():
    rates = [probe.epoch_learning_rate(e, 5, 1.0) for e in range(5)]
    np.testing.assert_allclose(rates, [0.2, 1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4))])
    assert probe.epoch_learning_rate(1, None, 1.0) == 1.0  # before the budget fixes the epochs


def test_parse_degradation_reads_the_nir_benefit_specs():
    assert probe.parse_degradation("none") is None
    assert probe.parse_degradation("low_light") == probe.LOW_LIGHT_DEFAULTS
    assert probe.parse_degradation("low_light:gain=0.05")["gain"] == 0.05
    with pytest.raises(ValueError, match="over_exposure"):
        probe.parse_degradation("over_exposure")


def test_networks_upsample_by_the_scale_and_refuse_others():
    for scale in (2, 4, 8):
        model = probe.build_networks(["clean"], [(4, 1)], scale, seed=0)
        out = model({"nir_lr": np.zeros((1, 5, 6, 1), np.float32), "vis_lr_clean": np.zeros((1, 5, 6, 3), np.float32)})
        assert {tuple(v.shape) for v in out.values()} == {(1, 5 * scale, 6 * scale, 3)}
    with pytest.raises(ValueError, match="scale must be 2, 4 or 8, got 3"):
        probe.build_networks(["clean"], [(4, 1)], 3, seed=0)


def test_pixel_shuffle_is_depth_to_space():
    x = np.random.default_rng(3).normal(size=(2, 3, 5, 12)).astype(np.float32)
    got = np.asarray(probe.pixel_shuffle(tf.constant(x), 2))
    np.testing.assert_array_equal(got, tf.nn.depth_to_space(x, 2).numpy())


def _grey_frames(rng, count, size=64):
    """Frames whose HR VIS is the NIR's grey level (so only the NIR tells it in the dark)."""
    frames = []
    for _ in range(count):
        nir = np.kron(rng.integers(0, 256, size=(size // 8, size // 8, 1)), np.ones((8, 8, 1))).astype(np.uint8)
        frames.append((np.repeat(nir, 3, axis=-1), nir))
    return frames


def _synthetic_pack(root, frames=3):
    made = _grey_frames(np.random.default_rng(4), frames)
    meta = {"scale": 4, "results": "synthetic", "conditions": {"very_dark": "low_light:gain=0.02"},
            "train_ids": [f"t{i}" for i in range(frames)]}
    parts = probe.write_pack(root, meta, {"train": made}, part_mib=1e-4)  # ~100 bytes: several parts
    return made, parts


def test_pack_round_trip_is_lossless_and_split_in_parts():
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "pack")
        made, parts = _synthetic_pack(root)
        assert parts > 1 and sorted(os.listdir(root)) == sorted(f"part{k}" for k in range(parts))
        meta, train = probe.load_frames(root)
    assert meta["train_ids"] == ["t0", "t1", "t2"]
    for (hr, nir), (got_hr, vis_lr, nir_lr) in zip(made, train, strict=True):
        np.testing.assert_array_equal(got_hr, hr)
        np.testing.assert_allclose(nir_lr, probe.bicubic_downscale(nir, 4))
        np.testing.assert_allclose(vis_lr, probe.bicubic_downscale(hr, 4))


def test_sampler_patches_line_up_with_their_lr_patches():
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "pack")
        _synthetic_pack(root)
        _, train = probe.load_frames(root)
    sampler = probe.PatchSampler(train, 4, 32, 5, {"clean": "none"}, seed=0)
    inputs, hr = sampler.batch(7)
    assert hr.shape == (5, 32, 32, 3) and inputs["vis_lr_clean"].shape == (5, 8, 8, 3)
    # The synthetic frames are 8x8 HR blocks, so the LR patch is the HR patch downscaled,
    # except near its edges, where the whole-frame LR also sees the pixels around the patch.
    inner = (slice(None), slice(2, -2), slice(2, -2))
    downscaled = np.stack([probe.bicubic_downscale(np.round(p * 255).astype(np.uint8), 4) for p in hr])
    np.testing.assert_allclose(inputs["vis_lr_clean"][inner], downscaled[inner], atol=0.02)
    np.testing.assert_array_equal(sampler.batch(7)[1], hr)  # the same batch for the same index
    assert not np.array_equal(sampler.batch(8)[1], hr)


def _train(root, sizes, steps_per_epoch, epochs, learning_rate, condition="clean", spec="none"):
    _, train = probe.load_frames(root)
    model = probe.build_networks([condition], sizes, 4, seed=0)
    probe.compile_networks(model, learning_rate=learning_rate)
    model.run_eagerly = steps_per_epoch * epochs < 20  # a few steps: tracing would cost more
    probe.train(model, probe.PatchSampler(train, 4, 32, 4, {condition: spec}, seed=0), steps_per_epoch=steps_per_epoch,
                peak_lr=learning_rate, epochs=epochs, log=lambda _: None)
    return model


def test_networks_of_one_model_train_as_if_alone():
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "pack")
        _synthetic_pack(root)
        weights = [_train(root, sizes, 3, 3, 1e-2).get_layer(probe.network_name("clean", 4, 1, "vis_nir") + ".head")
                   .get_weights()[0] for sizes in ([(4, 1)], [(4, 1), (6, 2)])]
    assert not np.allclose(weights[0], 0)
    np.testing.assert_allclose(weights[0], weights[1], rtol=1e-4, atol=1e-6)


def test_weights_round_trip_through_several_files():
    model = probe.build_networks(["clean"], [(4, 1), (6, 1)], 4, seed=0)
    for layer in model.layers:  # weights unlike the initial ones
        layer.set_weights([w + 0.01 * (i + 1) for i, w in enumerate(layer.get_weights())])
    with tempfile.TemporaryDirectory() as tmp:
        files = probe.save_weights(model, tmp, max_mib=0.002)
        assert files > 1
        again = probe.build_networks(["clean"], [(4, 1), (6, 1)], 4, seed=1)
        probe.load_weights(again, tmp)
        other = probe.build_networks(["clean"], [(4, 1)], 4, seed=0)
        with pytest.raises(ValueError, match="weights of no layer"):
            probe.load_weights(other, tmp)
    feed = {"nir_lr": np.full((1, 6, 5, 1), 0.3, np.float32), "vis_lr_clean": np.full((1, 6, 5, 3), 0.6, np.float32)}
    for name, value in model(feed).items():
        np.testing.assert_array_equal(np.asarray(again(feed)[name]), np.asarray(value))


def test_probe_learns_the_nir_when_the_vis_is_dark():
    spec = "low_light:gain=0.02"
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "pack")
        _synthetic_pack(root)
        model = _train(root, [(8, 1)], 50, 6, 3e-3, condition="very_dark", spec=spec)
    rng = np.random.default_rng(5)
    test = {"very_dark": [(hr, probe.low_light(probe.bicubic_downscale(hr, 4), rng, **probe.parse_degradation(spec)),
                           probe.bicubic_downscale(nir, 4)) for hr, nir in _grey_frames(rng, 3)]}
    rows, per_frame = probe.score_networks(model, test, 4)
    assert list(rows) == ["very_dark/c8_b1"] and len(per_frame["very_dark__c8_b1__vis"]) == 3
    # The target is the NIR's grey level and the VIS is nearly black: only vis_nir can know it.
    assert rows["very_dark/c8_b1"]["nir_gain_db"] > 3.0, rows


def test_cli_names_a_folder_that_is_not_a_pack():
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "studies",
                          "nir_capacity_probe.py")
    with tempfile.TemporaryDirectory() as tmp:
        done = run_cli([sys.executable, script, f"--train={tmp}"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode != 0 and f"{tmp} is not a pack" in done.stderr
        done = run_cli([sys.executable, script, f"--train={tmp}", f"--score={tmp}"], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode != 0 and "exactly one of" in done.stderr
