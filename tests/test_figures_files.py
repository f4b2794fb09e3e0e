"""File modes and atomicity of the image / text writers (figures, evaluation, atomic_files)."""

import os
import stat

import cv2
import numpy as np
import pytest

from cspsr_tf.evaluate import evaluation
from cspsr_tf.util import atomic_files, figures


@pytest.fixture
def umask_002():
    """An unusual umask, so a hard-coded 0644 would fail as surely as mkstemp's 0600."""
    old = os.umask(0o002)
    yield 0o664
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_image_keeps_the_umask_mode(tmp_path, umask_002):
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    new = str(tmp_path / "sub" / "new.png")
    figures.write_image(new, image)
    assert _mode(new) == umask_002
    existing = str(tmp_path / "old.png")
    with open(existing, "wb"):
        pass
    os.chmod(existing, 0o644)
    figures.write_image(existing, image)
    assert _mode(existing) == umask_002  # not mkstemp's 0600
    np.testing.assert_array_equal(cv2.imread(existing)[..., ::-1], image)
    assert sorted(os.listdir(tmp_path)) == ["old.png", "sub"]  # no temporary left


def test_write_image_bad_extension_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="could not write"):
        figures.write_image(str(tmp_path / "x.nope"), np.zeros((4, 4, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_evaluation_text_writer_keeps_the_umask_mode(tmp_path, umask_002):
    path = str(tmp_path / "results.json")
    with open(path, "w") as f:
        f.write("old")
    os.chmod(path, 0o600)
    evaluation._write_text_atomic(path, "{}\n")
    assert _mode(path) == umask_002
    with open(path) as f:
        assert f.read() == "{}\n"


def test_staged_files_are_removed_without_commit(tmp_path):
    target = str(tmp_path / "a.bin")
    with pytest.raises(RuntimeError), atomic_files.StagedFiles() as staged:
        staged.open(target).write(b"half")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    atomic_files.write_bytes(target, b"whole")
    with open(target, "rb") as f:
        assert f.read() == b"whole"
    assert os.listdir(tmp_path) == ["a.bin"]


@pytest.mark.parametrize("dtype, channels", [(np.uint8, 3), (np.uint16, 3), (np.uint8, 1),
                                             (np.uint16, 1)])
def test_streamed_png_decodes_like_the_image(tmp_path, dtype, channels):
    from cspsr_tf.infer.png_writer import PngWriter

    rng = np.random.default_rng(3)
    shape = (19, 11, 3) if channels == 3 else (19, 11)
    image = rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    path = str(tmp_path / "streamed.png")
    with open(path, "wb") as f:
        writer = PngWriter(f, 11, 19, channels, dtype)
        for start in range(0, 19, 5):  # uneven bands: 5, 5, 5, 4 rows
            writer.write_rows(image[start : start + 5])
        writer.close()
    decoded = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded[..., ::-1] if channels == 3 else decoded, image)


def test_streamed_png_refuses_missing_rows(tmp_path):
    from cspsr_tf.infer.png_writer import PngWriter

    with open(tmp_path / "short.png", "wb") as f:
        writer = PngWriter(f, 4, 3, 1, np.uint8)
        writer.write_rows(np.zeros((2, 4), np.uint8))
        with pytest.raises(ValueError, match="2 of 3 rows"):
            writer.close()
