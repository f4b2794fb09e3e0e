"""Frame sizes read from encoded image headers (cspsr_tf/data/sources.py), which pick the
default CVM patch (cspsr_tf/train/loop.py: auto_cvm_patch_size) without decoding a split."""

import cv2
import numpy as np
import pytest

from cspsr_tf.data import sources
from cspsr_tf.train.run_config import CVM_PATCH_SIZE_CAP, auto_cvm_patch_size


@pytest.mark.parametrize("extension", [".png", ".jpg", ".bmp"])  # header, header, decoded
@pytest.mark.parametrize("shape", [(37, 53, 3), (5, 7, 1), (300, 17, 3), (1, 1, 1)])
def test_encoded_image_size_matches_the_encoded_shape(extension, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ok, encoded = cv2.imencode(extension, image)
    assert ok
    assert sources.encoded_image_size(encoded.tobytes()).numpy().tolist() == list(shape[:2])


def test_smallest_frame_side_equals_the_decoded_minimum(synthetic_data_dir):
    decoded = sources.load_split("nirvis_synthetic", "train", synthetic_data_dir)
    expected = min(min(ex[key].shape[:2]) for ex in decoded for key in ("vis", "nir"))
    assert sources.smallest_frame_side("nirvis_synthetic", "train", synthetic_data_dir) == expected


@pytest.mark.parametrize(
    "patch_size, scale, smallest, expected",
    [
        (96, 4, 115, 112),   # the embedded data: 28 LR px, the most 115 px frames allow
        (96, 4, 1000, 192),  # large frames: the cap
        (96, 3, 191, 189),   # a multiple of the scale
        (96, 3, 1000, 192),  # the cap is a multiple of 3 too
        (120, 4, 100, 120),  # frames smaller than the SR patch: the SR patch (its stage says why)
        (256, 4, 1000, 256),  # an SR patch above the cap is kept
    ],
)
def test_auto_cvm_patch_size_by_hand(patch_size, scale, smallest, expected):
    assert CVM_PATCH_SIZE_CAP == 192
    assert auto_cvm_patch_size(patch_size, scale, smallest) == expected
