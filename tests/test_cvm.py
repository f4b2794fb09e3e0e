import numpy as np
import pytest

from cspsr_tf.model.layers.cvm import CrossViewMatching
from cspsr_tf.ops.warp import warp_by_disparity
from tests.cross_spectral_pairs import cross_spectral_scene


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (16, 16), (33, 50)])
def test_any_input_size_and_bounded_disparity(size):
    h, w = size
    layer = CrossViewMatching(base_channels=4, depth=3, max_disparity=6.0)
    vis = np.random.rand(2, h, w, 3).astype(np.float32)
    nir = np.random.rand(2, h, w, 1).astype(np.float32)
    out = layer((vis, nir))
    for key in ("nir_l", "valid_l", "disp_l", "disp_r"):
        assert out[key].shape == (2, h, w, 1), key
    for key in ("disp_l", "disp_r"):
        d = out[key].numpy()
        assert (d >= 0).all() and (d <= 6.0).all()
    # The warped NIR is Eq. (1) applied with the predicted disparity.
    expected, _ = warp_by_disparity(nir, out["disp_l"], "right_to_left")
    np.testing.assert_allclose(out["nir_l"].numpy(), expected.numpy(), atol=1e-6)


def test_bounded_by_activation_even_for_huge_logits():
    layer = CrossViewMatching(base_channels=4, depth=2, max_disparity=5.0)
    vis = np.random.rand(1, 8, 8, 3).astype(np.float32)
    nir = np.random.rand(1, 8, 8, 1).astype(np.float32)
    layer((vis, nir))
    layer.heads[-1].bias.assign([1e4, -1e4])
    out = layer((vis, nir))
    np.testing.assert_allclose(out["disp_l"].numpy(), 5.0)
    np.testing.assert_allclose(out["disp_r"].numpy(), 0.0, atol=1e-6)


def test_pyramid_and_config_round_trip():
    layer = CrossViewMatching(base_channels=4, depth=2, max_disparity=8.0, return_pyramid=True)
    out = layer((np.random.rand(1, 9, 10, 3).astype(np.float32), np.random.rand(1, 9, 10, 1).astype(np.float32)))
    # Padded to 12x12 (multiple of 4); one head per decoder level, coarse to fine.
    assert [tuple(p.shape) for p in out["pyramid"]] == [(1, 6, 6, 2), (1, 12, 12, 2)]
    config = layer.get_config()
    assert CrossViewMatching.from_config(config).get_config() == config
    for key in ("base_channels", "depth", "max_disparity", "return_pyramid", "geometry", "normalization"):
        assert key in config


def test_argument_errors():
    with pytest.raises(ValueError, match="max_disparity"):
        CrossViewMatching(max_disparity=1.0)
    with pytest.raises(ValueError, match="geometry"):
        CrossViewMatching(geometry="mono")
    with pytest.raises(ValueError, match="depth"):
        CrossViewMatching(depth=0)
    with pytest.raises(ValueError, match="normalization"):
        CrossViewMatching(normalization="layer")


@pytest.mark.parametrize("normalization", ["group", "none"])
def test_training_and_inference_agree_and_examples_stay_apart(normalization):
    # Group norm (per example) or none: the disparity is the same in training mode and in
    # inference mode, and one example's disparity does not depend on the rest of its batch
    # (batch norm, retired, broke both).
    vis = np.random.default_rng(1).random((2, 16, 24, 3), dtype=np.float32)
    nir = np.random.default_rng(2).random((2, 16, 24, 1), dtype=np.float32)
    layer = CrossViewMatching(base_channels=4, depth=2, max_disparity=6.0, normalization=normalization)
    layer((vis, nir))
    assert not [w for w in layer.weights if "_bn" in w.path]
    assert bool([w for w in layer.weights if "_gn" in w.path]) == (normalization == "group")
    for head in layer.heads:  # a visible correction, so that the encoder/decoder matter
        head.kernel.assign(np.random.default_rng(3).normal(0, 0.5, head.kernel.shape))
    in_training = layer((vis, nir), training=True)["disp_l"].numpy()
    np.testing.assert_allclose(in_training, layer((vis, nir), training=False)["disp_l"].numpy(), atol=1e-6)
    alone = layer((vis[:1], nir[:1]), training=True)["disp_l"].numpy()
    # A batch of 1 may take another convolution algorithm: float round-off (seen: 1.2e-5 px on
    # 2.5 px).
    np.testing.assert_allclose(alone, in_training[:1], atol=5e-5)
    assert np.abs(in_training[0] - in_training[1]).max() > 1e-3  # the examples do differ


def test_the_default_normalisation_is_group_and_batch_is_refused():
    layer = CrossViewMatching(base_channels=4, depth=2, max_disparity=6.0)
    assert layer.normalization == "group"
    with pytest.raises(ValueError, match="normalization"):
        CrossViewMatching(normalization="batch")


def test_untrained_cvm_follows_a_shift_of_the_nir():
    # The cost volume's soft-argmin is the base every head corrects (by ~0 before training),
    # so moving the right NIR by 3 more pixels moves the predicted disparity by about 3.
    vis, nir_right = cross_spectral_scene(np.random.default_rng(7), 32, 64, 6)
    layer = CrossViewMatching(base_channels=4, depth=2, max_disparity=10.0)
    interior = (0, slice(4, -4), slice(10, -4), 0)
    d2 = layer((vis, nir_right(2)))["disp_l"].numpy()[interior]
    d5 = layer((vis, nir_right(5)))["disp_l"].numpy()[interior]
    assert float(np.median(d5 - d2)) == pytest.approx(3.0, abs=0.5)
    assert float(np.median(d2)) == pytest.approx(2.0, abs=0.75)
