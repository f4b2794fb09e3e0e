"""RGB-NIR stereo dataset (Zhi et al., CVPR 2018): rectified RGB-left / NIR-right video frames.

Manual download. The builder reads the `Resize` images (582x429) of the release and the sparse
`Keypoint/` disparity annotations of the test frames; see README.md for the layout, the split
rule, the keypoint convention and the licence.
"""

from __future__ import annotations

import math
import re

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

try:
    from .. import _common
except ImportError:  # `tfds build datasets/rgb_nir_stereo` imports this as a top-level package.
    import _common

# The four test videos of the paper (Zhi et al. 2018, Tables 3-4; CSPSR section 5.1).
TEST_COLLECTIONS = ("20170222_0951", "20170222_1423", "20170223_1639", "20170224_0742")
COLLECTION_RE = re.compile(r"^\d{8}_\d{4}$")
_VARIANT = "Resize"  # Folders RGBResize/ and NIRResize/; files <key>_RGBResize.png.

# Material classes of the keypoint annotations, indexed by their class id (Zhi et al. 2018,
# Table 5; the column order of the authors' evaluation, cs-stereo test.py).
KEYPOINT_CLASSES = (
    "Common",
    "Light",
    "Glass",
    "Glossy",
    "Vegetation",
    "Skin",
    "Clothing",
    "Bag",
)
# Columns of the `keypoints` feature.
KEYPOINT_COLUMNS = ("row", "column", "disparity_px", "class")
# The size the annotations were normalised by (the Resize frames).
KEYPOINT_WIDTH, KEYPOINT_HEIGHT = 582, 429
_KEYPOINT_DIR = "Keypoint"  # <collection>/Keypoint/<key>_Keypoint.txt

LAYOUT = """\
  <manual_dir>/                       (or <manual_dir>/rgbnir_stereo/)
    data/                             (optional level: collections may also sit directly here)
      20170222_0951/                  one folder per video ("collection"), named YYYYMMDD_HHMM
        RGBResize/<key>_RGBResize.png    left RGB frame, 582x429
        NIRResize/<key>_NIRResize.png    right NIR frame, 582x429
        Keypoint/<key>_Keypoint.txt      optional: sparse disparity keypoints, "x y d c"
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


def parse_keypoints(
    text: str, width: int = KEYPOINT_WIDTH, height: int = KEYPOINT_HEIGHT, source: str = "<text>"
) -> np.ndarray:
    """Keypoint lines ``x y d c`` -> float32 (N, 4): (row, column, disparity_px, class).

    The conversion of the authors' evaluation (cs-stereo test.py): column = round(x * width) - 1,
    row = round(y * height) - 1 (Python's round: halves to even), clipped into the image, and
    disparity_px = d * width. Blank lines are skipped; any other malformed line raises
    `AnnotationError` naming `source` and the line.
    """
    points = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue

        def bad(problem: str, line_no=line_no, line=line) -> _common.AnnotationError:
            return _common.AnnotationError(
                f"{source}, line {line_no}: {problem}; expected 'x y d c' (x, y in [0, 1], "
                f"d = disparity / width, c = class 0..{len(KEYPOINT_CLASSES) - 1}), got {line!r}"
            )

        if len(fields) != 4:
            raise bad(f"{len(fields)} fields instead of 4")
        try:
            x, y, d = (float(f) for f in fields[:3])
        except ValueError:
            raise bad("x, y and d must be numbers") from None
        try:
            c = int(fields[3])
        except ValueError:
            raise bad("the class must be an integer") from None
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):  # also rejects NaN
            raise bad("x and y must lie in [0, 1]")
        if not math.isfinite(d):
            raise bad("d must be finite")
        if not 0 <= c < len(KEYPOINT_CLASSES):
            raise bad(f"class {c} outside 0..{len(KEYPOINT_CLASSES) - 1}")
        column = min(max(round(x * width) - 1, 0), width - 1)
        row = min(max(round(y * height) - 1, 0), height - 1)
        points.append((row, column, d * width, c))
    return np.array(points, dtype=np.float32).reshape(-1, 4)


def parse_keypoint_file(path, width: int = KEYPOINT_WIDTH, height: int = KEYPOINT_HEIGHT):
    """`parse_keypoints` of a `<key>_Keypoint.txt` file (errors name the file)."""
    path = epath.Path(path)
    return parse_keypoints(path.read_text(), width, height, source=str(path))


def _keys_from_folder(collection_dir) -> list[str]:
    suffix = f"_RGB{_VARIANT}"
    keys = [
        p.stem[: -len(suffix)]
        for p in _common.image_files(collection_dir / f"RGB{_VARIANT}")
        if p.stem.endswith(suffix) and p.suffix.lower() == ".png"
    ]
    return sorted(keys, key=_common.natural_key)


class Builder(_common.BeamWhenAsked, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the RGB-NIR stereo dataset of Zhi et al. (CVPR 2018)."""

    VERSION = tfds.core.Version("1.1.0")
    # The files a build reads (for provenance): everything under the manual directory.
    manual_sources = staticmethod(_common.walk_files)
    RELEASE_NOTES = {
        "1.0.0": "Initial release: Resize images, train/test by video.",
        "1.1.0": "`keypoints`: the sparse disparity keypoints of Keypoint/ (Table 5 classes), "
        "(row, column, disparity_px, class) per point; empty for frames without a file.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the RGB-NIR stereo dataset of Zhi et al. (CVPR 2018, "Deep Material-aware
Cross-spectral Stereo Matching", http://www.cs.cmu.edu/~ILIM/projects/AA/RGBNIRStereo/)
and place it in the manual directory as follows:
{LAYOUT}
"""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_common.common_features(
                extra={"keypoints": tfds.features.Tensor(shape=(None, 4), dtype=np.float32)}
            ),
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
        return self.examples_per_split(frames, frame_example)

    def _generate_examples(self, items):
        # Abstract in TFDS; `_split_generators` goes through `examples_per_split` instead.
        for item in items:
            yield frame_example(item)


def frame_example(item) -> tuple[str, dict]:
    """(id, example) of one (collection, key, collection_dir) frame."""
    collection, key, collection_dir = item
    collection_dir = epath.Path(collection_dir)
    rgb_path, nir_path = _frame_paths(collection_dir, key)
    vis, nir = _common.read_pair(rgb_path, nir_path)
    keypoint_path = collection_dir / _KEYPOINT_DIR / f"{key}_{_KEYPOINT_DIR}.txt"
    if keypoint_path.is_file():
        # In pixels of the stored frame (582x429 in the release, as the authors convert).
        keypoints = parse_keypoint_file(keypoint_path, width=vis.shape[1], height=vis.shape[0])
    else:
        keypoints = np.zeros((0, 4), dtype=np.float32)
    example_id = f"{collection}/{key}"
    return example_id, _common.example(vis, nir, _common.STEREO, example_id, keypoints=keypoints)
