"""A failed preparation of a dataset leaves --data_dir as it found it (cspsr_tf/data/sources.py).

TFDS made `<data_dir>/nirvis_folder/`, `<data_dir>/downloads/extracted/` and `data_dir` itself
before a broken --manual_dir failed the build, and left them there, empty (issue 30).
"""

import os
import re

import pytest

from cspsr_tf.data import sources


def _tree(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, subfolders, names in os.walk(root) for name in subfolders + names)


def test_a_failed_build_removes_the_folders_it_made(tmp_path):
    empty_manual = tmp_path / "manual"
    empty_manual.mkdir()
    data_dir = tmp_path / "new" / "tfds"
    with pytest.raises(sources.DataError, match="nirvis_folder"):
        sources.get_builder("nirvis_folder", data_dir=str(data_dir), manual_dir=str(empty_manual))
    assert sorted(os.listdir(tmp_path)) == ["manual"]  # new/ and new/tfds/ were made by it


def test_a_failed_build_keeps_what_was_there(tmp_path):
    empty_manual = tmp_path / "manual"
    empty_manual.mkdir()
    data_dir = tmp_path / "tfds"
    # Another dataset's files and an older version of this one's folder: not the build's.
    (data_dir / "downloads" / "other.zip").parent.mkdir(parents=True)
    (data_dir / "downloads" / "other.zip").write_text("x")
    (data_dir / "nirvis_folder" / "0.9.0").mkdir(parents=True)
    (data_dir / "nirvis_folder" / "0.9.0" / "keep.json").write_text("{}")
    before = _tree(data_dir)
    with pytest.raises(sources.DataError):
        sources.get_builder("nirvis_folder", data_dir=str(data_dir), manual_dir=str(empty_manual))
    assert _tree(data_dir) == before


def test_blocking_file(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert sources.blocking_file(tmp_path) is None
    assert sources.blocking_file(tmp_path / "new" / "deeper") is None
    assert sources.blocking_file(a_file) == str(a_file)
    assert sources.blocking_file(a_file / "sub" / "deeper") == str(a_file)
    with pytest.raises(sources.DataError, match=re.escape(f"--data_dir={a_file / 'x'}: {a_file} is a file")):
        sources.get_builder("nirvis_synthetic", data_dir=str(a_file / "x"))
