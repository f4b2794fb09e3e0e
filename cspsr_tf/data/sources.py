"""Loading a split of one of the project's TFDS builders (`datasets/`) by name.

A manual dataset (one built from files the user downloaded, `--manual_dir`) is tied to the
files it was built from: `SOURCE_RECORD` beside the prepared data holds a fingerprint of
them (each file's path relative to the manual directory, size and modification time; which
files, the builder's `manual_sources` says). Given a `manual_dir` whose fingerprint differs,
the dataset is rebuilt from it (in a scratch directory, swapped in only when the build
succeeds), so another folder is never silently replaced by the data of the first one.
Without `manual_dir`, the prepared data is used as it is.
"""

import contextlib
import hashlib
import importlib
import json
import os
import shutil

import tensorflow as tf
from absl import logging

from cspsr_tf.data.dataset_names import DATASETS, MANUAL_DATASETS  # noqa: F401  (re-exported)
from cspsr_tf.util import scratch_dirs
from cspsr_tf.util.cli import quiet_tfds_notices  # noqa: F401  (re-exported)
from cspsr_tf.util.paths import blocking_file

DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
# Written beside dataset_info.json of a prepared manual dataset (TFDS ignores it).
SOURCE_RECORD = "cspsr_manual_source.json"


class DataError(ValueError):
    """A dataset that cannot be used: unknown name, missing manual files, empty split.

    `str(error)` is one line; `details` holds any longer explanation (such as the expected
    layout of a manual directory) that a command line prints before it.
    """

    def __init__(self, message, details=""):
        super().__init__(message)
        self.details = details


@contextlib.contextmanager
def _removed_on_failure(data_dir, name):
    """Removes what a failed preparation of dataset `name` created in `data_dir`, and only that.

    A failed TFDS build (e.g. an empty or broken --manual_dir) leaves `<data_dir>/<name>/`,
    `<data_dir>/downloads/extracted/` and `data_dir` itself behind, empty. Afterwards: the
    dataset's folder goes if this build made it (else the entries this build added to it),
    and the folders this build made on the way (downloads/, downloads/extracted/, data_dir and
    its parents) go if they are empty.
    """
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    own = os.path.join(data_dir, name)
    made = []  # folders that may not exist yet, deepest first
    for path in (os.path.join(data_dir, "downloads", "extracted"), os.path.join(data_dir, "downloads")):
        made.append(path)
    path = data_dir
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        made.append(path)
        path = os.path.dirname(path)
    made = [path for path in made if not os.path.isdir(path)]
    entries = set(os.listdir(own)) if os.path.isdir(own) else None
    try:
        yield
    except BaseException:
        if entries is None:
            shutil.rmtree(own, ignore_errors=True)
        elif os.path.isdir(own):
            for entry in set(os.listdir(own)) - entries:
                shutil.rmtree(os.path.join(own, entry), ignore_errors=True)
        for path in made:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only when empty
        raise


def get_builder(name, data_dir=None, manual_dir=None):
    """The prepared TFDS builder `name` (prepared now if needed; offline).

    For a manual dataset given `manual_dir`, data prepared from other files (or of unknown
    origin) is rebuilt from `manual_dir`; see the module docstring.
    """
    import tensorflow_datasets as tfds

    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    # Importing the builder's package registers it with TFDS.
    importlib.import_module(f"datasets.{name}")
    data_dir = data_dir or DEFAULT_DATA_DIR
    blocker = blocking_file(data_dir)
    if blocker:
        raise DataError(f"--data_dir={data_dir}: {blocker} is a file, not a folder")
    builder = tfds.builder(name, data_dir=data_dir)
    if name not in MANUAL_DATASETS:
        with _removed_on_failure(data_dir, name):
            _prepare(builder, None)
        return builder
    if manual_dir is None:
        if not _is_prepared(builder):
            raise DataError(
                f"Dataset {name!r} is not prepared in {data_dir} and needs --manual_dir "
                "(the folder with the files you downloaded; see datasets/README.md)"
            )
        return builder
    fingerprint = _with_data_errors(name, manual_fingerprint, builder, manual_dir)
    if not _is_prepared(builder):
        with _removed_on_failure(data_dir, name):
            _prepare(builder, manual_dir)
            _write_source_record(builder, manual_dir, fingerprint)
        return builder
    recorded = _read_source_record(builder)
    if recorded.get("fingerprint") == fingerprint:
        return builder
    logging.warning(
        "Dataset %r in %s was prepared from the files then in %s; those now in %s differ: "
        "rebuilding it",
        name, builder.data_dir, recorded.get("manual_dir", "files of unknown origin"),
        os.path.abspath(manual_dir),
    )
    _rebuild(name, data_dir, manual_dir, fingerprint, builder.data_dir)
    return tfds.builder(name, data_dir=data_dir)


def manual_fingerprint(builder, manual_dir):
    """A hex digest of the files a build of `builder` from `manual_dir` reads.

    Each file counts by its path relative to `manual_dir`, its size and its modification
    time (a missing file counts as missing, so that the build reports it). Raises what the
    builder's `manual_sources` raises for a malformed listing (e.g. a bad pairs.csv).
    """
    digest = hashlib.sha256()
    for path in type(builder).manual_sources(manual_dir):
        path = os.fspath(path)
        relative = os.path.relpath(path, manual_dir)
        try:
            stat = os.stat(path)
            entry = f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
        except OSError:
            entry = f"{relative}\tmissing\n"
        digest.update(entry.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _with_data_errors(name, function, *args):
    """Calls `function`; a builder's error becomes a DataError (first line, rest as details)."""
    try:
        return function(*args)
    except (AssertionError, OSError, ValueError) as error:
        # The builders explain the expected layout over several lines; keep the first as the
        # message and the rest as details.
        first, _, rest = str(error).partition("\n")
        raise DataError(f"dataset {name!r}: {first}", details=rest) from None


def _prepare(builder, manual_dir):
    import tensorflow_datasets as tfds

    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    _with_data_errors(
        builder.name, lambda: builder.download_and_prepare(download_config=download_config)
    )


def _rebuild(name, data_dir, manual_dir, fingerprint, target):
    """Builds `name` from `manual_dir` in a scratch directory, then swaps it in for `target`.

    A failed build (e.g. a broken manual directory) leaves the prepared data as it was.
    """
    import tensorflow_datasets as tfds

    prefix = f".{name}.rebuild-"
    scratch_dirs.remove_stale(data_dir, prefix)
    with scratch_dirs.locked_scratch_dir(data_dir, prefix) as scratch:
        staged = tfds.builder(name, data_dir=scratch)
        _prepare(staged, manual_dir)
        _write_source_record(staged, manual_dir, fingerprint)
        old = os.path.join(scratch, "replaced")
        os.rename(target, old)  # deleted with the scratch directory
        try:
            os.rename(staged.data_dir, target)
        except BaseException:
            os.rename(old, target)
            raise


def _read_source_record(builder):
    try:
        with open(os.path.join(builder.data_dir, SOURCE_RECORD)) as f:
            values = json.load(f)
    except (OSError, ValueError):
        return {}  # prepared by `tfds build` or an older version: origin unknown
    return values if isinstance(values, dict) else {}


def _write_source_record(builder, manual_dir, fingerprint):
    record = {"manual_dir": os.path.abspath(manual_dir), "fingerprint": fingerprint}
    with open(os.path.join(builder.data_dir, SOURCE_RECORD), "w") as f:
        json.dump(record, f, indent=1)


def _is_prepared(builder):
    return os.path.isdir(builder.data_dir) and any(
        f.endswith(".json") for f in os.listdir(builder.data_dir)
    )


def load_split(name, split, data_dir=None, manual_dir=None, decoders=None):
    """A `tf.data.Dataset` of example dicts (`vis`, `nir`, `geometry`, `id`, ...).

    `decoders` goes to `builder.as_dataset` (e.g. `tfds.decode.SkipDecoding()` per feature).
    Raises DataError naming the dataset and split when the split is unknown or empty.
    """
    builder = get_builder(name, data_dir, manual_dir)
    splits = builder.info.splits
    base_split = split.split("[")[0]
    if base_split not in splits:
        raise DataError(
            f"Dataset {name!r} has no split {split!r}; it has {', '.join(sorted(splits))}"
        )
    if splits[base_split].num_examples == 0:
        raise DataError(f"Split {split!r} of dataset {name!r} is empty")
    return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)


def encoded_image_size(encoded):
    """(height, width) int32 of an encoded image, read from the PNG or JPEG header.

    Other formats are decoded. Lets a scan of a split's frame sizes skip the decoding.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    magic = tf.strings.substr(encoded, 0, 8)

    def png():  # IHDR: big-endian width then height at bytes 16-23 (each < 2**31 by the spec)
        width_height = tf.io.decode_raw(tf.strings.substr(encoded, 16, 8), tf.int32,
                                        little_endian=False)
        return tf.reverse(width_height, [0])

    def jpeg():
        return tf.image.extract_jpeg_shape(encoded)[:2]

    def other():
        return tf.shape(tf.io.decode_image(encoded, expand_animations=False))[:2]

    return tf.case(
        [(tf.equal(magic, b"\x89PNG\r\n\x1a\n"), png),
         (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"), jpeg)],
        default=other,
    )


def smallest_frame_side(name, split, data_dir=None, manual_dir=None):
    """The smallest height or width of the `vis` and `nir` images of a split.

    Reads image headers only (no decoding), so it is cheap even for large splits.
    """
    import tensorflow_datasets as tfds

    skip = tfds.decode.SkipDecoding()
    ds = load_split(name, split, data_dir, manual_dir, decoders={"vis": skip, "nir": skip})
    sides = ds.map(
        lambda example: tf.minimum(tf.reduce_min(encoded_image_size(example["vis"])),
                                   tf.reduce_min(encoded_image_size(example["nir"]))),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return int(sides.reduce(tf.constant(2**31 - 1, tf.int32), tf.minimum))


def count_examples(dataset):
    """Number of elements of a finite dataset (cardinality when known, else by iterating)."""
    n = int(dataset.cardinality())
    if n >= 0:
        return n
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
