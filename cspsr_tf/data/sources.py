"""Loading a split of one of the project's TFDS builders (`datasets/`) by name."""

import importlib
import os

import tensorflow as tf

DATASETS = ("nirvis_synthetic", "nirvis_folder", "rgb_nir_stereo", "nirscene", "ranus")
# Builders that read files the user downloaded by hand.
MANUAL_DATASETS = ("nirvis_folder", "rgb_nir_stereo", "nirscene", "ranus")
DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


class DataError(ValueError):
    """A dataset that cannot be used: unknown name, missing manual files, empty split.

    `str(error)` is one line; `details` holds any longer explanation (such as the expected
    layout of a manual directory) that a command line prints before it.
    """

    def __init__(self, message, details=""):
        super().__init__(message)
        self.details = details


def get_builder(name, data_dir=None, manual_dir=None):
    """The prepared TFDS builder `name` (prepared now if needed; offline)."""
    import tensorflow_datasets as tfds

    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    # Importing the builder's package registers it with TFDS.
    importlib.import_module(f"datasets.{name}")
    data_dir = data_dir or DEFAULT_DATA_DIR
    builder = tfds.builder(name, data_dir=data_dir)
    if name in MANUAL_DATASETS and manual_dir is None and not _is_prepared(builder):
        raise DataError(
            f"Dataset {name!r} is not prepared in {data_dir} and needs --manual_dir "
            "(the folder with the files you downloaded; see datasets/README.md)"
        )
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=download_config)
    except (AssertionError, OSError, ValueError) as error:
        # The builders explain the expected layout over several lines; keep the first as the
        # message and the rest as details.
        first, _, rest = str(error).partition("\n")
        raise DataError(f"dataset {name!r}: {first}", details=rest) from None
    return builder


def _is_prepared(builder):
    return os.path.isdir(builder.data_dir) and any(
        f.endswith(".json") for f in os.listdir(builder.data_dir)
    )


def load_split(name, split, data_dir=None, manual_dir=None):
    """A `tf.data.Dataset` of example dicts (`vis`, `nir`, `geometry`, `id`, ...).

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
    return builder.as_dataset(split=split, shuffle_files=False)


def count_examples(dataset):
    """Number of elements of a finite dataset (cardinality when known, else by iterating)."""
    n = int(dataset.cardinality())
    if n >= 0:
        return n
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
