"""Test helpers shared by the `*_dataset_builder_test.py` files (not a test module itself)."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from . import _common


@contextlib.contextmanager
def _dill_stub_if_missing():
    """Lets `tensorflow_datasets.testing` import when the `dill` package is not installed.

    tensorflow-datasets 4.9.10 imports `dill` at the top of `testing/feature_test_case.py`
    but does not depend on it; only `FeatureExpectationsTestCase` (not used here) calls it.
    The stub lives in `sys.modules` only while `tensorflow_datasets.testing` is imported, so
    nothing else (e.g. apache_beam) sees a fake `dill`. Installing `dill` makes this a no-op.
    """
    try:
        import dill  # noqa: F401
    except ModuleNotFoundError:
        stub = types.ModuleType("dill")

        def _missing(*args, **kwargs):
            raise ModuleNotFoundError("dill is not installed (stub from datasets/_testing.py)")

        stub.dumps = stub.loads = _missing
        sys.modules["dill"] = stub
        try:
            yield
        finally:
            if sys.modules.get("dill") is stub:
                del sys.modules["dill"]
    else:
        yield


with _dill_stub_if_missing():
    from tensorflow_datasets.testing import dataset_builder_testing  # noqa: F401

DatasetBuilderTestCase = tfds.testing.DatasetBuilderTestCase


def build(builder_cls, data_dir, manual_dir=None):
    """Builds `builder_cls` into `data_dir` (statistics skipped) and returns the builder."""
    builder = builder_cls(data_dir=str(data_dir))
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(manual_dir),
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
    )
    builder.download_and_prepare(download_config=config)
    return builder


def as_examples(ds) -> list[dict]:
    """All examples of a tf.data.Dataset as numpy dicts (text features decoded to str)."""
    examples = []
    for ex in tfds.as_numpy(ds):
        ex = dict(ex)
        for key in ("id", "geometry"):
            ex[key] = ex[key].decode()
        examples.append(ex)
    return examples


def load_split(builder, split: str) -> list[dict]:
    """All examples of one split of a built builder (see `as_examples`)."""
    return as_examples(builder.as_dataset(split=split, shuffle_files=False))


def check_common_features(examples: list[dict], geometry: str | None = None) -> None:
    for ex in examples:
        assert ex["vis"].dtype == np.uint8 and ex["vis"].ndim == 3 and ex["vis"].shape[2] == 3
        assert ex["nir"].dtype == np.uint8 and ex["nir"].ndim == 3 and ex["nir"].shape[2] == 1
        assert ex["vis"].shape[:2] == ex["nir"].shape[:2]
        assert ex["geometry"] in _common.GEOMETRIES
        if geometry is not None:
            assert ex["geometry"] == geometry
        assert "/" in ex["id"]


def assert_missing_and_empty_manual_dir_errors(builder_cls, tmp_path, must_mention) -> None:
    """A missing and an empty manual dir both fail with the expected layout in the message."""
    empty = tmp_path / "empty_manual"
    empty.mkdir()
    for manual in (tmp_path / "does_not_exist", empty):
        with pytest.raises((AssertionError, FileNotFoundError)) as info:
            build(builder_cls, tmp_path / "data", manual)
        message = str(info.value)
        for text in must_mention:
            assert text in message, f"{text!r} not in error message:\n{message}"
        assert "No examples were yielded" not in message


def assert_wrong_layout_error(builder_cls, tmp_path, must_mention) -> None:
    """A non-empty manual dir without the expected files fails with the layout."""
    manual = tmp_path / "wrong_manual"
    (manual / "something").mkdir(parents=True)
    (manual / "notes.txt").write_text("not a dataset")
    with pytest.raises(_common.ManualDirLayoutError) as info:
        build(builder_cls, tmp_path / "data", manual)
    for text in must_mention:
        assert text in str(info.value)


def assert_truncated_image_error(builder_cls, dummy_dir, tmp_path, relative_image) -> None:
    """Truncating one image of a copy of the dummy data fails with an error naming it."""
    manual = tmp_path / "manual"
    shutil.copytree(dummy_dir, manual)
    victim = manual / relative_image
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(_common.ImageReadError) as info:
        build(builder_cls, tmp_path / "data", manual)
    assert str(victim) in str(info.value)


def dummy_dir(test_file: str) -> pathlib.Path:
    return pathlib.Path(test_file).resolve().parent / "dummy_data"
