"""RANUS: RGB and NIR Urban Scene dataset (Choe et al., RA-L 2018): spatially aligned pairs.

Manual download. About 40k pairs in numbered subsets; the CSPSR paper tests on the 50th subset
(104 pairs). The layout below is the one this builder expects (see README.md: the official
archive's exact layout could not be checked here, so arrange the files like this).
"""

from __future__ import annotations

import re

import tensorflow_datasets as tfds

try:
    from .. import _common
except ImportError:  # `tfds build datasets/ranus` imports this as a top-level package.
    import _common

TEST_SUBSET = 50  # The paper's test subset (104 pairs).
# Subset folders: "50", "050", "subset50", "subset_50", "set-50", "seq50" (case-insensitive).
SUBSET_RE = re.compile(r"^(?:subset|set|seq)?[_-]?(\d+)$", re.IGNORECASE)
RGB_DIR_NAMES = ("RGB", "rgb", "VIS", "vis", "color")
NIR_DIR_NAMES = ("NIR", "nir")
_KEY_SUFFIX_RE = re.compile(r"[_-](rgb|nir|vis)$", re.IGNORECASE)

LAYOUT = """\
  <manual_dir>/                  (or <manual_dir>/RANUS/)
    01/                          one folder per subset, named by its number: 1 or 01 or 001
      RGB/000000.png             (also subset01, subset_01, set01, seq01). Inside each subset:
      RGB/000001.png               RGB/ (or rgb/, VIS/) and NIR/ (or nir/) with the images of
      NIR/000000.png               each pair under the same file name; a trailing _rgb / _nir
      NIR/000001.png               in the names is ignored (000000_rgb.png pairs 000000_nir.png);
    02/ ...                        png, jpg, jpeg, tif, tiff or bmp.
    50/                          subset 50 is the test split (104 pairs in the paper)
      RGB/...  NIR/..."""


def subset_number(name: str) -> int | None:
    match = SUBSET_RE.match(name)
    return int(match.group(1)) if match else None


def split_of(subset: int) -> str:
    return "test" if subset == TEST_SUBSET else "train"


def _pair_key(stem: str) -> str:
    return _KEY_SUFFIX_RE.sub("", stem)


def _find_root(manual_dir):
    for root in (manual_dir, manual_dir / "RANUS", manual_dir / "ranus"):
        for d in _common.subdirs(root):
            if subset_number(d.name) is not None and _common.find_child(d, NIR_DIR_NAMES):
                return root
    return None


def _scan_subset(subset_dir) -> list[tuple[str, object, object]]:
    """[(key, rgb_path, nir_path)] of one subset, sorted by key."""
    rgb_dir = _common.find_child(subset_dir, RGB_DIR_NAMES)
    nir_dir = _common.find_child(subset_dir, NIR_DIR_NAMES)
    if rgb_dir is None or nir_dir is None:
        return []
    nir_by_key = {_pair_key(p.stem): p for p in _common.image_files(nir_dir)}
    pairs = []
    for rgb in _common.image_files(rgb_dir):
        key = _pair_key(rgb.stem)
        nir = nir_by_key.get(key)
        if nir is None:
            raise _common.ImageReadError(
                f"No NIR partner for {rgb}: expected a file named {key}.<ext> or "
                f"{key}_nir.<ext> in {nir_dir}."
            )
        pairs.append((key, rgb, nir))
    return sorted(pairs, key=lambda item: _common.natural_key(item[0]))


class Builder(_common.BeamWhenAsked, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for RANUS (RGB and NIR Urban Scene dataset)."""

    VERSION = tfds.core.Version("1.0.0")
    # The files a build reads (for provenance): everything under the manual directory.
    manual_sources = staticmethod(_common.walk_files)
    RELEASE_NOTES = {"1.0.0": "Initial release: subset 50 is test, the other subsets train."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Obtain RANUS (Choe et al., "RANUS: RGB and NIR Urban Scene Dataset for Deep Scene Parsing",
IEEE Robotics and Automation Letters 3(3), 2018) through the link given in the paper or from its
authors, and arrange the RGB and NIR images in the manual directory as follows:
{LAYOUT}
"""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_common.common_features(),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = _common.require_nonempty_dir(dl_manager.manual_dir, LAYOUT)
        root = _find_root(manual_dir)
        if root is None:
            raise _common.layout_error(
                manual_dir,
                LAYOUT,
                "No numbered subset folder with an NIR/ sub-folder was found.",
            )
        subsets = [
            (subset_number(d.name), d)
            for d in _common.subdirs(root)
            if subset_number(d.name) is not None
        ]
        numbers = [n for n, _ in subsets]
        if len(numbers) != len(set(numbers)):
            raise _common.layout_error(
                manual_dir, LAYOUT, f"Two subset folders have the same number in {root}."
            )
        splits: dict[str, list] = {"train": [], "test": []}
        for number, subset_dir in sorted(subsets, key=lambda item: item[0]):
            for key, rgb, nir in _scan_subset(subset_dir):
                splits[split_of(number)].append((f"{subset_dir.name}/{key}", rgb, nir))
        if not splits["train"] and not splits["test"]:
            raise _common.layout_error(
                manual_dir, LAYOUT, "No RGB/NIR image pair was found in the subset folders."
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
