"""EPFL RGB-NIR Scene dataset (nirscene1, Brown and Suesstrunk, CVPR 2011): registered pairs.

Manual download. 477 pairs in 9 category folders; see README.md for the layout, the test-split
rule (46 pairs, as in the CSPSR paper) and the licence.
"""

from __future__ import annotations

import re

import tensorflow_datasets as tfds

try:
    from .. import _common
except ImportError:  # `tfds build datasets/nirscene` imports this as a top-level package.
    import _common

CATEGORIES = (
    "country",
    "field",
    "forest",
    "indoor",
    "mountain",
    "oldbuilding",
    "street",
    "urban",
    "water",
)
# Test split: the first TEST_PER_CATEGORY pairs of every category (sorted by number), plus pair
# number TEST_PER_CATEGORY + 1 of the alphabetically first category present ("country" in the
# full dataset): 9 * 5 + 1 = 46 pairs, the size of the CSPSR paper's NIRScene test set.
TEST_PER_CATEGORY = 5
_RGB_RE = re.compile(r"^(\d+)_rgb$", re.IGNORECASE)
_SUFFIXES = (".tiff", ".tif", ".png", ".jpg", ".jpeg")

LAYOUT = """\
  <manual_dir>/                      (or <manual_dir>/nirscene1/)
    country/                         one folder per category: country, field, forest, indoor,
      0000_rgb.tiff                  mountain, oldbuilding, street, urban, water
      0000_nir.tiff                  NNNN_rgb.<ext> and NNNN_nir.<ext>, same NNNN, same size;
      0001_rgb.tiff                  <ext> is tiff (as distributed), tif, png, jpg or jpeg
      0001_nir.tiff
      ...
    field/ ...
    water/ ...
  (nirscene1.zip from https://www.epfl.ch/labs/ivrl/research/downloads/rgb-nir-scene-dataset/
   unpacks to nirscene1/<category>/...; the manual directory may be nirscene1/ or its parent.)"""


def select_test_keys(category_keys: dict[str, list[str]]) -> set[tuple[str, str]]:
    """(category, key) pairs of the test split; `category_keys` lists sorted keys per category."""
    chosen = set()
    categories = sorted(category_keys)
    for category in categories:
        for key in category_keys[category][:TEST_PER_CATEGORY]:
            chosen.add((category, key))
    if categories:
        first = categories[0]
        if len(category_keys[first]) > TEST_PER_CATEGORY:
            chosen.add((first, category_keys[first][TEST_PER_CATEGORY]))
    return chosen


def _find_root(manual_dir):
    for root in (manual_dir, manual_dir / "nirscene1"):
        if _common.find_child(root, CATEGORIES) is not None:
            return root
    return None


def _scan_category(category_dir) -> list[tuple[str, object, object]]:
    """[(key, rgb_path, nir_path)] of one category folder, sorted by number."""
    files = {p.name.lower(): p for p in _common.image_files(category_dir)}
    pairs = []
    for path in files.values():
        match = _RGB_RE.match(path.stem)
        if not match or path.suffix.lower() not in _SUFFIXES:
            continue
        key = match.group(1)
        nir = None
        for suffix in (path.suffix.lower(), *_SUFFIXES):
            nir = files.get(f"{key}_nir{suffix}".lower())
            if nir is not None:
                break
        if nir is None:
            raise _common.ImageReadError(
                f"No NIR partner for {path}: expected {category_dir / (key + '_nir.tiff')} "
                "(or .tif/.png/.jpg/.jpeg)."
            )
        pairs.append((key, path, nir))
    return sorted(pairs, key=lambda item: _common.natural_key(item[0]))


class Builder(_common.BeamWhenAsked, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the EPFL RGB-NIR Scene dataset (nirscene1)."""

    VERSION = tfds.core.Version("1.0.0")
    # The files a build reads (for provenance): everything under the manual directory.
    manual_sources = staticmethod(_common.walk_files)
    RELEASE_NOTES = {"1.0.0": "Initial release: 46-pair test split, rest train."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download nirscene1.zip (EPFL RGB-NIR Scene dataset, Brown and Suesstrunk, CVPR 2011) from
https://www.epfl.ch/labs/ivrl/research/downloads/rgb-nir-scene-dataset/ , unpack it and place
it in the manual directory as follows:
{LAYOUT}
"""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_common.common_features(),
            supervised_keys=None,
            homepage="https://www.epfl.ch/labs/ivrl/research/downloads/rgb-nir-scene-dataset/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = _common.require_nonempty_dir(dl_manager.manual_dir, LAYOUT)
        root = _find_root(manual_dir)
        if root is None:
            raise _common.layout_error(
                manual_dir, LAYOUT, f"None of the category folders {CATEGORIES} was found."
            )
        pairs: dict[str, list] = {}
        for category_dir in _common.subdirs(root):
            category = category_dir.name.lower()
            if category in CATEGORIES:
                found = _scan_category(category_dir)
                if found:
                    pairs[category] = found
        if not pairs:
            raise _common.layout_error(
                manual_dir, LAYOUT, "No NNNN_rgb.<ext> / NNNN_nir.<ext> pair was found."
            )
        in_test = select_test_keys({c: [k for k, _, _ in items] for c, items in pairs.items()})
        splits: dict[str, list] = {"train": [], "test": []}
        for category in sorted(pairs):
            for key, rgb, nir in pairs[category]:
                split = "test" if (category, key) in in_test else "train"
                splits[split].append((f"{category}/{key}", rgb, nir))
        _common.check_unique(
            [i for items in splits.values() for i, _, _ in items], f"{root} (one key, two files?)"
        )
        return self.examples_per_split(splits, pair_example)

    def _generate_examples(self, items):
        # Abstract in TFDS; `_split_generators` goes through `examples_per_split` instead.
        for item in items:
            yield pair_example(item)


def pair_example(item) -> tuple[str, dict]:
    """(id, example) of one (id, rgb_path, nir_path) pair."""
    example_id, rgb_path, nir_path = item
    vis, nir = _common.read_pair(rgb_path, nir_path)
    return example_id, _common.example(vis, nir, _common.ALIGNED, example_id)
