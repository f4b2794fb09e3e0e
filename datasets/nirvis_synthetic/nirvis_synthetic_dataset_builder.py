"""nirvis_synthetic: an embedded cross-spectral stereo set with ground-truth disparity.

Needs no download and no manual step: it is made from images that ship inside scikit-image
(the Middlebury 2014 Motorcycle stereo pair and four photos). The left view stays RGB, the
right view becomes a pseudo-NIR image (see `synthesis.py` and README.md for the spectral model,
the disparity synthesis and the split rule). Deterministic (fixed seeds).
"""

from __future__ import annotations

import zlib

import numpy as np
import tensorflow_datasets as tfds

from . import synthesis

try:
    from .. import _common
except ImportError:  # `tfds build datasets/nirvis_synthetic` imports this as a top-level package.
    import _common

SEED = 20180618
TRAIN_PHOTOS = ("astronaut", "chelsea")
TEST_PHOTOS = ("coffee", "rocket")
TRAIN_VARIANTS_PER_PHOTO = 10  # variant 0: whole photo; 1..9: random crops (55-100 % a side).
TEST_VARIANTS_PER_PHOTO = 2  # whole photo, two different disparity fields.
D_MAX_RANGE = (12.0, 28.0)  # Maximum disparity of a photo variant, HR pixels.
# Motorcycle at half resolution (250x370, disparity ~3.6-30 px): rows [0, 150) are train (the
# whole band and MOTO_TRAIN_CROPS crops of it), rows [150, 250) are one test example.
MOTO_SPLIT_ROW = 150
MOTO_TRAIN_CROPS = 3


def _seed(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode()) ^ SEED


def _photo(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    return np.ascontiguousarray(image[:, :, :3])


def _pack(example_id, vis, nir, disp, valid) -> tuple[str, dict]:
    disparity = np.where(np.isfinite(disp), disp, 0.0).astype(np.float32)[:, :, None]
    return example_id, _common.example(
        np.ascontiguousarray(vis),
        np.ascontiguousarray(nir),
        _common.STEREO,
        example_id,
        disparity=np.ascontiguousarray(disparity),
        disparity_valid=np.ascontiguousarray(valid.astype(np.uint8)[:, :, None]),
    )


def photo_examples(name: str, n_variants: int, crop: bool):
    """Yields (id, example) for `n_variants` synthetic stereo variants of one photo."""
    left = _photo(name)
    labels = synthesis.segments(left)
    full_h, full_w = left.shape[:2]
    for v in range(n_variants):
        rng = np.random.default_rng(_seed(name, v))
        d_max = rng.uniform(*D_MAX_RANGE)
        disp = synthesis.synthetic_disparity(labels, rng, d_max)
        right, d_right_raw = synthesis.render_right(left, disp)
        valid = synthesis.visible_mask(disp, d_right_raw)
        nir = synthesis.pseudo_nir(right, seed=_seed(name, v, "noise"))
        if crop and v > 0:
            h = int(round(full_h * rng.uniform(0.55, 1.0)))
            w = int(round(full_w * rng.uniform(0.55, 1.0)))
            y0 = int(rng.integers(0, full_h - h + 1))
            x0 = int(rng.integers(0, full_w - w + 1))
            tag = f"crop{v:02d}"
        else:
            h, w, y0, x0 = full_h, full_w, 0, 0
            tag = f"full_d{v}" if not crop else f"full{v:02d}"
        parts = synthesis.crop_example(left, nir, disp, valid, y0, x0, h, w)
        yield _pack(f"{name}/{tag}", *parts)


def motorcycle_examples(split: str):
    """Yields (id, example) from the real Motorcycle stereo pair (right view -> pseudo-NIR)."""
    left, right, disp = synthesis.motorcycle_half()
    valid = synthesis.visible_mask(disp, synthesis.forward_disparity(disp))
    if split == "train":
        rows = slice(0, MOTO_SPLIT_ROW)
        tag = "top"
    else:
        rows = slice(MOTO_SPLIT_ROW, left.shape[0])
        tag = "bottom"
    left, right, disp, valid = left[rows], right[rows], disp[rows], valid[rows]
    nir = synthesis.pseudo_nir(right, seed=_seed("motorcycle", tag, "noise"))
    h, w = disp.shape
    yield _pack(f"motorcycle/{tag}_full", left, nir, disp, valid)
    if split == "train":
        rng = np.random.default_rng(_seed("motorcycle", tag))
        for c in range(1, MOTO_TRAIN_CROPS + 1):
            ch = int(rng.integers(h * 2 // 3, h + 1))
            cw = int(rng.integers(w // 2, w * 5 // 6 + 1))
            y0 = int(rng.integers(0, h - ch + 1))
            x0 = int(rng.integers(0, w - cw + 1))
            parts = synthesis.crop_example(left, nir, disp, valid, y0, x0, ch, cw)
            yield _pack(f"motorcycle/{tag}_crop{c}", *parts)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the embedded synthetic cross-spectral stereo set."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 24 train / 5 test stereo pairs."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_common.common_features(with_disparity=True),
            supervised_keys=None,
            homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the sources ship with scikit-image.
        return {
            "train": self._generate_examples("train"),
            "test": self._generate_examples("test"),
        }

    def _generate_examples(self, split: str):
        yield from motorcycle_examples(split)
        if split == "train":
            for name in TRAIN_PHOTOS:
                yield from photo_examples(name, TRAIN_VARIANTS_PER_PHOTO, crop=True)
        else:
            for name in TEST_PHOTOS:
                yield from photo_examples(name, TEST_VARIANTS_PER_PHOTO, crop=False)
