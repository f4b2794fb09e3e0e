"""Shared pytest set-up: quiet TensorFlow, make the repository importable, fix seeds."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
    """A TFDS data_dir with the embedded nirvis_synthetic dataset prepared once per session."""
    from cspsr_tf.data import sources

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    sources.get_builder("nirvis_synthetic", data_dir=data_dir)
    return data_dir
