"""RGB-NIR stereo dataset (Zhi et al., CVPR 2018): rectified RGB-left / NIR-right video frames.

Manual download. The builder reads the `Resize` images (582x429) of the release; see README.md
for the layout, the split rule and the licence.
"""

from __future__ import annotations

import re

import tensorflow_datasets as tfds
from absl import logging

try:
    from .. import _common
except ImportError:  # `tfds build datasets/rgb_nir_stereo` imports this as a top-level package.
    import _common

# The four test videos of the paper (Zhi et al. 2018, Tables 3-4; CSPSR section 5.1).
TEST_COLLECTIONS = ("20170222_0951", "20170222_1423", "20170223_1639", "20170224_0742")
COLLECTION_RE = re.compile(r"^\d{8}_\d{4}$")
_VARIANT = "Resize"  # Folders RGBResize/ and NIRResize/; files <key>_RGBResize.png.

LAYOUT = """\
  <manual_dir>/                       (or <manual_dir>/rgbnir_stereo/)
    data/                             (optional level: collections may also sit directly here)
      20170222_0951/                  one folder per video ("collection"), named YYYYMMDD_HHMM
        RGBResize/<key>_RGBResize.png    left RGB frame, 582x429
        NIRResize/<key>_NIRResize.png    right NIR frame, 582x429
      20170222_1423/ ...              12 videos in all: 8 train, 4 test
    lists/                            optional: *.txt split lists, one frame per line:
      <any name>.txt                  "collection key rgb_exposure nir_exposure red_gain blue_gain"
  Example: data/20170222_0951/RGBResize/220951_001873_RGBResize.png
           data/20170222_0951/NIRResize/220951_001873_NIRResize.png
  Test videos: 20170224_0742, 20170222_0951, 20170222_1423, 20170223_1639; the others train."""


def split_of(collection: str) -> str:
    """`test` for the four test videos of the paper, `train` for every other video."""
    return "test" if collection in TEST_COLLECTIONS else "train"


def _frame_paths(collection_dir, key: str):
    rgb = collection_dir / f"RGB{_VARIANT}" / f"{key}_RGB{_VARIANT}.png"
    nir = collection_dir / f"NIR{_VARIANT}" / f"{key}_NIR{_VARIANT}.png"
    return rgb, nir


def _find_data_root(manual_dir):
    """The directory that holds the collection folders, or None."""
    candidates = [
        manual_dir,
        manual_dir / "data",
        manual_dir / "rgbnir_stereo",
        manual_dir / "rgbnir_stereo" / "data",
    ]
    for root in candidates:
        if any(
            COLLECTION_RE.match(d.name) and (d / f"RGB{_VARIANT}").is_dir()
            for d in _common.subdirs(root)
        ):
            return root
    return None


def _find_lists_dir(manual_dir, data_root):
    for d in (
        manual_dir / "lists",
        manual_dir / "rgbnir_stereo" / "lists",
        data_root.parent / "lists",
        data_root / "lists",
    ):
        if d.is_dir():
            return d
    return None


def read_lists(lists_dir) -> dict[str, list[str]]:
    """Parses every ``*.txt`` list in `lists_dir` into {collection: sorted unique keys}."""
    listed: dict[str, set[str]] = {}
    for list_file in sorted(lists_dir.glob("*.txt"), key=lambda p: p.name):
        for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) < 2 or not COLLECTION_RE.match(fields[0]):
                raise ValueError(
                    f"{list_file}, line {line_no}: expected "
                    "'collection key rgb_exposure nir_exposure red_gain blue_gain' with a "
                    f"collection named like 20170222_0951, got {line!r}"
                )
            if "/" in fields[1] or "\\" in fields[1]:
                # The key names a file inside the collection folder: no path may escape it.
                raise _common.PathOutsideManualDirError(
                    f"{list_file}, line {line_no}: frame key {fields[1]!r} must be a file-name "
                    "stem without '/' or '\\' (it names <collection>/RGBResize/"
                    "<key>_RGBResize.png inside the manual directory)"
                )
            listed.setdefault(fields[0], set()).add(fields[1])
    return {c: sorted(keys, key=_common.natural_key) for c, keys in listed.items()}


def _keys_from_folder(collection_dir) -> list[str]:
    suffix = f"_RGB{_VARIANT}"
    keys = [
        p.stem[: -len(suffix)]
        for p in _common.image_files(collection_dir / f"RGB{_VARIANT}")
        if p.stem.endswith(suffix) and p.suffix.lower() == ".png"
    ]
    return sorted(keys, key=_common.natural_key)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the RGB-NIR stereo dataset of Zhi et al. (CVPR 2018)."""

    VERSION = tfds.core.Version("1.0.0")
    # The files a build reads (for provenance): everything under the manual directory.
    manual_sources = staticmethod(_common.walk_files)
    RELEASE_NOTES = {"1.0.0": "Initial release: Resize images, train/test by video."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the RGB-NIR stereo dataset of Zhi et al. (CVPR 2018, "Deep Material-aware
Cross-spectral Stereo Matching", http://www.cs.cmu.edu/~ILIM/projects/AA/RGBNIRStereo/)
and place it in the manual directory as follows:
{LAYOUT}
"""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_common.common_features(),
            supervised_keys=None,
            homepage="http://www.cs.cmu.edu/~ILIM/projects/AA/RGBNIRStereo/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = _common.require_nonempty_dir(dl_manager.manual_dir, LAYOUT)
        data_root = _find_data_root(manual_dir)
        if data_root is None:
            raise _common.layout_error(
                manual_dir,
                LAYOUT,
                f"No collection folder (named like 20170222_0951, with an RGB{_VARIANT}/ "
                "sub-folder) was found.",
            )
        lists_dir = _find_lists_dir(manual_dir, data_root)
        listed = read_lists(lists_dir) if lists_dir is not None else {}

        frames: dict[str, list[tuple]] = {"train": [], "test": []}
        for collection_dir in _common.subdirs(data_root):
            collection = collection_dir.name
            if not COLLECTION_RE.match(collection):
                continue
            if collection in listed:
                keys = listed[collection]
            else:
                keys = _keys_from_folder(collection_dir)
            for key in keys:
                frames[split_of(collection)].append((collection, key, collection_dir))
        missing = sorted(set(listed) - {d.name for d in _common.subdirs(data_root)})
        if missing:
            logging.warning(
                "rgb_nir_stereo: the lists name collections missing from %s: %s",
                data_root,
                ", ".join(missing),
            )
        if not frames["train"] and not frames["test"]:
            raise _common.layout_error(
                manual_dir, LAYOUT, f"No <key>_RGB{_VARIANT}.png frame was found."
            )
        return {split: self._generate_examples(items) for split, items in frames.items() if items}

    def _generate_examples(self, items):
        for collection, key, collection_dir in items:
            rgb_path, nir_path = _frame_paths(collection_dir, key)
            vis, nir = _common.read_pair(rgb_path, nir_path)
            example_id = f"{collection}/{key}"
            yield example_id, _common.example(vis, nir, _common.STEREO, example_id)
