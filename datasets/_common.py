"""Helpers shared by the CSPSR dataset builders: reading, checking and converting images.

Every builder yields the same common features (see `common_features`):

* ``vis``: HR visible image, ``uint8`` RGB, shape ``(H, W, 3)``.
* ``nir``: HR near-infrared image, ``uint8``, one channel, shape ``(H, W, 1)``, in the NIR
  camera's own view (for stereo pairs it is the right view).
* ``geometry``: ``"stereo"`` (RGB = left camera, NIR = right camera, rectified pair) or
  ``"aligned"`` (registered pair, no parallax).
* ``id``: ``"<video or category>/<frame key>"``.

Pixel conversions (the same in every builder):

* Files are read with OpenCV (``cv2.IMREAD_UNCHANGED``); colour images go BGR -> RGB and an
  alpha channel is dropped.
* 16-bit images become 8-bit by ``round(v / 257)`` (the full 16-bit range maps onto 0..255;
  no per-image stretch). Float images in [0, 1] are scaled by 255, other floats are clipped to
  0..255. Nothing is brightened or tone mapped.
* A NIR image stored with 3 channels becomes one channel: the first channel when the three
  are equal (a grey image saved as RGB), otherwise OpenCV's BGR -> GRAY (0.299 R + 0.587 G +
  0.114 B). A one-channel visible image is repeated into 3 channels.
* The visible image and the NIR image of a pair must have the same height and width.

Errors: a file that is missing, unreadable, truncated (PNG without its ``IEND`` chunk, JPEG
without an end-of-image marker after its last scan) or of an unsupported type raises
`ImageReadError` naming the file; a pair of different sizes raises `PairMismatchError` naming
both files; a manual directory that does not have the expected layout raises
`ManualDirLayoutError` whose message prints that layout; a path listed in the manual
directory (a `pairs.csv` row, a frame list) that leads outside it raises
`PathOutsideManualDirError` naming the row; a malformed line of an annotation file raises
`AnnotationError` naming the file and the line.

Generation: in process by default; with Apache Beam (`BeamWhenAsked`) only when the build is
given a Beam runner or pipeline options (`tfds build --beam_pipeline_options=...`), so that
apache_beam is imported only then.

Provenance: every manual builder has a static `manual_sources(manual_dir)` listing the files
a build reads (`walk_files` by default); `cspsr_tf.data.sources` fingerprints them to tell
when prepared data no longer matches the manual directory.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

STEREO = "stereo"
ALIGNED = "aligned"
GEOMETRIES = (STEREO, ALIGNED)

# Suffixes accepted for image files (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


class ManualDirLayoutError(FileNotFoundError):
    """The manual directory is missing, empty, or not laid out as the builder expects."""


class ImageReadError(ValueError):
    """An image file is missing, unreadable, truncated or of an unsupported pixel type."""


class PairMismatchError(ValueError):
    """The visible and NIR images of one pair do not have the same height and width."""


class PathOutsideManualDirError(ValueError):
    """A path listed in the manual directory leads outside it (e.g. `../../etc/passwd`)."""


class AnnotationError(ValueError):
    """A line of an annotation file (e.g. `rgb_nir_stereo` keypoints) is malformed."""


def common_features(*, with_disparity: bool = False, extra=None) -> tfds.features.FeaturesDict:
    """The features every builder yields (plus the disparity ones for synthetic data, plus
    `extra`, a dict of a builder's own features)."""
    features = {
        "vis": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
        "nir": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
        "geometry": tfds.features.Text(),
        "id": tfds.features.Text(),
    }
    if with_disparity:
        features["disparity"] = tfds.features.Tensor(
            shape=(None, None, 1), dtype=np.float32, encoding=tfds.features.Encoding.ZLIB
        )
        features["disparity_valid"] = tfds.features.Tensor(
            shape=(None, None, 1), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
        )
    features.update(extra or {})
    return tfds.features.FeaturesDict(features)


# ----------------------------------------------------------------------------------------------
# Manual directory helpers


def layout_error(manual_dir, layout: str, problem: str) -> ManualDirLayoutError:
    """Builds the error raised when the manual directory does not have the expected layout."""
    return ManualDirLayoutError(
        f"{problem}\nManual directory: {manual_dir}\nExpected layout:\n{layout}"
    )


def require_nonempty_dir(manual_dir, layout: str) -> epath.Path:
    """Returns `manual_dir` as a path; raises `ManualDirLayoutError` if missing or empty."""
    if manual_dir is None:
        raise layout_error(manual_dir, layout, "No manual directory was given.")
    path = epath.Path(manual_dir)
    if not path.exists():
        raise layout_error(path, layout, "The manual directory does not exist.")
    if not path.is_dir():
        raise layout_error(path, layout, "The manual directory is not a directory.")
    if not any(True for _ in path.iterdir()):
        raise layout_error(path, layout, "The manual directory is empty.")
    return path


def confined(path, root, where: str) -> epath.Path:
    """`path` as a path, after checking that it lies inside `root`.

    Both are resolved first (`..` and symlinks followed), so neither `../x.png` nor a
    symlink to a file elsewhere gets past. `where` names the listing row in the error.
    """
    real_root = os.path.realpath(os.fspath(root))
    real = os.path.realpath(os.fspath(path))
    if os.path.commonpath([real_root, real]) != real_root:
        raise PathOutsideManualDirError(
            f"{where}: {path} leads outside the manual directory {root} (resolved: {real}); "
            "listed files must lie inside it."
        )
    return epath.Path(path)


def walk_files(manual_dir) -> list[str]:
    """Every file under `manual_dir`, sorted (symlinked folders followed, each once).

    The default `manual_sources` of a builder that scans its manual directory.
    """
    root = os.fspath(manual_dir)
    if not os.path.isdir(root):
        return []
    files, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop, or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        files.extend(os.path.join(folder, name) for name in names)
    return sorted(files)


def subdirs(path: epath.Path) -> list[epath.Path]:
    """Sub-directories of `path`, sorted by name (empty if `path` is not a directory)."""
    if not path.is_dir():
        return []
    return sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name)


def image_files(path: epath.Path) -> list[epath.Path]:
    """Image files directly in `path` (see `IMAGE_SUFFIXES`), sorted by name."""
    if not path.is_dir():
        return []
    return sorted(
        (p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()),
        key=lambda p: p.name,
    )


def find_child(path: epath.Path, names: Iterable[str]) -> epath.Path | None:
    """The sub-directory of `path` whose name matches one of `names`, case-insensitively."""
    wanted = {n.lower() for n in names}
    for child in subdirs(path):
        if child.name.lower() in wanted:
            return child
    return None


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers numerically ("2" < "10")."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


# ----------------------------------------------------------------------------------------------
# Image reading

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8"


def _check_complete(path, data: bytes) -> None:
    """Raises `ImageReadError` if a PNG or JPEG file is visibly truncated.

    OpenCV decodes a truncated JPEG into a partly grey image with only a warning, so the
    end markers are checked here before decoding.
    """
    if not data:
        raise ImageReadError(f"Image file is empty: {path}")
    if data.startswith(_PNG_SIGNATURE):
        if b"IEND" not in data[-64:]:
            raise ImageReadError(f"Image file is truncated (PNG without IEND chunk): {path}")
    elif data.startswith(_JPEG_SIGNATURE):
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0:
            raise ImageReadError(
                f"Image file is truncated (JPEG without end-of-image marker): {path}"
            )


def read_raw(path) -> np.ndarray:
    """Reads an image file as OpenCV does with ``IMREAD_UNCHANGED`` (BGR order)."""
    path = epath.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ImageReadError(f"Image file not found: {path}") from e
    except OSError as e:
        raise ImageReadError(f"Cannot read image file {path}: {e}") from e
    _check_complete(path, data)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ImageReadError(f"Cannot decode image file {path}: {e}") from e
    if image is None or image.size == 0:
        raise ImageReadError(f"Cannot decode image file (corrupt or unsupported): {path}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ImageReadError(f"Unsupported image shape {image.shape}: {path}")
    return image


def to_uint8(image: np.ndarray, path="<array>") -> np.ndarray:
    """Converts 8-bit, 16-bit or float pixels to uint8 (see the module docstring)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        values = np.nan_to_num(image.astype(np.float32))
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        return np.round(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    raise ImageReadError(f"Unsupported pixel type {image.dtype}: {path}")


def rgb_from_raw(image: np.ndarray, path="<array>") -> np.ndarray:
    """OpenCV image (any depth, 1/3/4 channels, BGR) -> (H, W, 3) uint8 RGB."""
    image = to_uint8(image, path)
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def nir_from_raw(image: np.ndarray, path="<array>") -> np.ndarray:
    """OpenCV image (any depth, 1/3/4 channels, BGR) -> (H, W, 1) uint8 single channel."""
    image = to_uint8(image, path)
    if image.ndim == 2:
        return image[:, :, None]
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[2] == 1:
        return np.ascontiguousarray(image)
    if np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(
        image[:, :, 0], image[:, :, 2]
    ):
        return np.ascontiguousarray(image[:, :, :1])
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY)[:, :, None]


def read_rgb(path) -> np.ndarray:
    """Reads a visible image as (H, W, 3) uint8 RGB."""
    return rgb_from_raw(read_raw(path), path)


def read_nir(path) -> np.ndarray:
    """Reads a NIR image as (H, W, 1) uint8."""
    return nir_from_raw(read_raw(path), path)


def read_pair(rgb_path, nir_path) -> tuple[np.ndarray, np.ndarray]:
    """Reads a (visible, NIR) pair and checks that both have the same height and width."""
    vis = read_rgb(rgb_path)
    nir = read_nir(nir_path)
    if vis.shape[:2] != nir.shape[:2]:
        raise PairMismatchError(
            "The RGB and NIR images of a pair differ in size: "
            f"{rgb_path} is {vis.shape[1]}x{vis.shape[0]} (WxH), "
            f"{nir_path} is {nir.shape[1]}x{nir.shape[0]} (WxH)."
        )
    return vis, nir


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 (H, W, 3) RGB or (H, W, 1) image.

    The builders hand `tfds.features.Image` ready PNG bytes (stored as they are): OpenCV's
    encoder is several times faster than the TensorFlow one TFDS uses for numpy arrays.
    """
    if image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape}")
    return buffer.tobytes()


def example(vis: np.ndarray, nir: np.ndarray, geometry: str, example_id: str, **extra) -> dict:
    """Assembles one example dict with the common features (images PNG-encoded)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    if vis.dtype != np.uint8 or vis.ndim != 3 or vis.shape[2] != 3:
        raise ValueError(f"vis must be uint8 (H, W, 3), got {vis.dtype} {vis.shape}")
    if nir.dtype != np.uint8 or nir.ndim != 3 or nir.shape[2] != 1:
        raise ValueError(f"nir must be uint8 (H, W, 1), got {nir.dtype} {nir.shape}")
    return {
        "vis": encode_png(vis),
        "nir": encode_png(nir),
        "geometry": geometry,
        "id": example_id,
        **extra,
    }


def check_unique(ids: Sequence[str], what: str) -> None:
    """Raises ValueError if `ids` has duplicates (example keys must be unique)."""
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"Duplicate example id {i!r} in {what}.")
        seen.add(i)


# ----------------------------------------------------------------------------------------------
# Generation: in process, or with Apache Beam when asked


def beam_requested(download_config) -> bool:
    """True when a build was given a Beam runner or Beam pipeline options."""
    return download_config is not None and (
        download_config.beam_runner is not None or download_config.beam_options is not None
    )


class BeamWhenAsked:
    """Mixin (listed before `tfds.core.GeneratorBasedBuilder`): Beam only when asked.

    TFDS runs a split through Beam when its generator is a `beam.PTransform`, and otherwise
    writes it in process. The builders return PTransforms only when the build's
    `DownloadConfig` names a `beam_runner` or `beam_options` (what `tfds build
    --beam_pipeline_options=...` sets), so a plain build neither needs nor imports apache_beam.
    """

    _beam_requested = False

    def _download_and_prepare(self, dl_manager, download_config):
        # `_split_generators` is not given the DownloadConfig: remember its Beam settings.
        self._beam_requested = beam_requested(download_config)
        try:
            return super()._download_and_prepare(dl_manager, download_config)
        finally:
            self._beam_requested = False

    def examples_per_split(
        self, splits: dict[str, list], make_example: Callable[[object], tuple[str, dict]]
    ) -> dict:
        """{split: the (key, example) of `make_example(item)` for each item}, empty splits left
        out: generators in process, `beam.PTransform`s when Beam was asked for.

        `make_example` must be a module-level function and the items picklable: Beam ships
        both to its workers.
        """
        splits = {name: items for name, items in splits.items() if items}
        if not self._beam_requested:
            return {name: (make_example(item) for item in items) for name, items in splits.items()}
        beam = tfds.core.lazy_imports.apache_beam
        _pickle_by_value(sys.modules[make_example.__module__], sys.modules[__name__])
        return {
            name: beam.Create(items) | "MakeExamples" >> beam.Map(make_example)
            for name, items in splits.items()
        }


def _pickle_by_value(*modules) -> None:
    """Makes Beam's (cloud)pickler ship the code of `modules` instead of a reference to them.

    Remote workers (Dataflow, Flink, Spark) have the requirements installed but not this
    repository; `tfds build datasets/<name>` even imports the builders as top-level modules
    (`<name>`, `_common`). Pickled by value, the example function and these helpers run there
    all the same. Beam's `--pickle_library=dill` ignores this (workers then need the code).
    """
    try:
        from apache_beam.internal.cloudpickle import cloudpickle
    except ImportError:  # An apache_beam without its own copy pickles with the package's.
        try:
            import cloudpickle
        except ImportError:
            return
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
