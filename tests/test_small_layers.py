"""PixelShuffle, BicubicUpsample, ResidualBlock and DMF."""

import numpy as np
import pytest
import tensorflow as tf

from cspsr_tf.model.layers.bicubic_upsample import BicubicUpsample
from cspsr_tf.model.layers.dmf import DMF
from cspsr_tf.model.layers.pixel_shuffle import PixelShuffle
from cspsr_tf.model.layers.residual_block import ResidualBlock
from tests.layer_test_utils import run_layer_checks


def test_pixel_shuffle_matches_numpy_rearrangement():
    s, c = 2, 3
    x = np.random.rand(1, 4, 5, c * s * s).astype(np.float32)
    out = PixelShuffle(s)(x).numpy()
    # depth_to_space: out[i*s + a, j*s + b, ch] = x[i, j, (a*s + b)*C + ch]
    expected = np.zeros((1, 8, 10, c), np.float32)
    for i in range(4):
        for j in range(5):
            for a in range(s):
                for b in range(s):
                    expected[0, i * s + a, j * s + b] = x[0, i, j, (a * s + b) * c : (a * s + b + 1) * c]
    np.testing.assert_array_equal(out, expected)
    run_layer_checks(PixelShuffle, {"scale": 3}, np.random.rand(1, 3, 4, 18).astype(np.float32))


def test_bicubic_upsample_keeps_constants_and_shapes():
    x = np.full((2, 5, 7, 3), 0.3, np.float32)
    out = BicubicUpsample(4)(x).numpy()
    assert out.shape == (2, 20, 28, 3)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)
    run_layer_checks(BicubicUpsample, {"scale": 2}, x, expected_output_shapes=(2, 10, 14, 3))


def test_residual_block_is_identity_plus_branch():
    layer = ResidualBlock(4)
    x = np.random.rand(1, 5, 5, 4).astype(np.float32)
    layer(x)
    for w in layer.conv2.weights:
        w.assign(tf.zeros_like(w))
    np.testing.assert_allclose(layer(x).numpy(), x, atol=1e-7)
    run_layer_checks(ResidualBlock, {"channels": 4}, x, expected_output_shapes=(1, 5, 5, 4))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"use_dynamic_conv": False},
        {"use_csft": False},
        {"residual": False, "dynamic_conv_implementation": "patches", "kernel_normalization": "none"},
    ],
)
def test_dmf_variants(kwargs):
    f = np.random.rand(2, 6, 5, 8).astype(np.float32)
    init = {"channels": 8, "kernel_size": 3, **kwargs}
    run_layer_checks(DMF, init, (f, f), expected_output_shapes=((2, 6, 5, 8), (2, 6, 5, 8)))


def test_dmf_residual_adds_inputs():
    f_vis = np.random.rand(1, 4, 4, 4).astype(np.float32)
    f_nir = np.random.rand(1, 4, 4, 4).astype(np.float32)
    layer = DMF(4)
    layer((f_vis, f_nir))
    for conv in (layer.conv_vis, layer.conv_nir):
        for w in conv.weights:
            w.assign(tf.zeros_like(w))
    out_vis, out_nir = layer((f_vis, f_nir))
    np.testing.assert_allclose(out_vis.numpy(), f_vis, atol=1e-7)
    np.testing.assert_allclose(out_nir.numpy(), f_nir, atol=1e-7)


def test_dmf_files_saved_with_one_vis_conv_load_and_the_retired_two_are_refused():
    # Files saved before the two-convolution VIS path was retired carry vis_convs=1.
    layer = DMF.from_config({**DMF(4).get_config(), "vis_convs": 1})
    assert "vis_convs" not in layer.get_config()
    with pytest.raises(ValueError, match="vis_convs=2 was retired"):
        DMF(4, vis_convs=2)


@pytest.mark.parametrize("scale,tolerance", [(2, 1e-5), (3, 1e-3), (4, 1e-5), (8, 1e-5)])
def test_bicubic_upsample_equals_tf_resize(scale, tolerance):
    from cspsr_tf.model.layers.bicubic_upsample import bicubic_upsample

    rng = np.random.default_rng(scale)
    for shape in [(2, 7, 11, 3), (1, 1, 1, 1), (1, 2, 3, 2)]:
        x = rng.random(shape).astype(np.float32)
        expected = tf.image.resize(x, (shape[1] * scale, shape[2] * scale), "bicubic").numpy()
        np.testing.assert_allclose(bicubic_upsample(tf.constant(x), scale).numpy(), expected, atol=tolerance)


def test_bicubic_upsample_compiles_with_xla():
    from cspsr_tf.model.layers.bicubic_upsample import bicubic_upsample

    x = tf.constant(np.random.rand(1, 5, 6, 3).astype(np.float32))
    compiled = tf.function(lambda t: bicubic_upsample(t, 4), jit_compile=True)
    np.testing.assert_allclose(compiled(x).numpy(), tf.image.resize(x, (20, 24), "bicubic").numpy(), atol=1e-5)
