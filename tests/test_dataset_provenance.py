"""A prepared manual dataset is tied to the files it was built from (cspsr_tf/data/sources.py).

Issue 9, item 1: once `nirvis_folder` was prepared in a data_dir, any other --manual_dir was
ignored. Each test builds tiny folders whose pixel values say which folder they came from.
"""

import os
import shutil

import cv2
import numpy as np
import pytest

from cspsr_tf.data import sources

DATASETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets")


def _write_folder(root, pairs, nir_width=8):
    """A nirvis_folder manual dir: {name: grey level} -> name_rgb.png / name_nir.png."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["rgb,nir,geometry"]
    for name, level in pairs.items():
        cv2.imwrite(str(root / f"{name}_rgb.png"), np.full((6, 8, 3), level, np.uint8))
        cv2.imwrite(str(root / f"{name}_nir.png"), np.full((6, nir_width), level // 2, np.uint8))
        lines.append(f"{name}_rgb.png,{name}_nir.png,aligned")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    return root


def _loaded(data_dir, manual_dir=None, name="nirvis_folder", split="train"):
    """{id: first vis pixel value} of a split, through the shared loader."""
    ds = sources.load_split(name, split, str(data_dir), None if manual_dir is None else str(manual_dir))
    return {ex["id"].numpy().decode(): int(ex["vis"].numpy()[0, 0, 0]) for ex in ds}


def test_another_manual_dir_rebuilds_the_dataset(tmp_path):
    folder_a = _write_folder(tmp_path / "a", {"a1": 10, "a2": 20})
    folder_b = _write_folder(tmp_path / "b", {"b1": 200})
    data = tmp_path / "data"
    assert _loaded(data, folder_a) == {"a1_rgb": 10, "a2_rgb": 20}
    assert _loaded(data, folder_b) == {"b1_rgb": 200}
    # Without --manual_dir the prepared data (now B's) is used as it is.
    assert _loaded(data) == {"b1_rgb": 200}
    # No scratch directory is left in the data_dir.
    assert not [n for n in os.listdir(data) if n.startswith(".")]


def test_a_broken_manual_dir_gives_the_builders_error_and_keeps_the_old_data(tmp_path):
    folder_a = _write_folder(tmp_path / "a", {"a1": 10})
    broken = _write_folder(tmp_path / "broken", {"b1": 200}, nir_width=9)  # sizes differ
    data = tmp_path / "data"
    assert _loaded(data, folder_a) == {"a1_rgb": 10}
    with pytest.raises(sources.DataError, match="differ in size") as info:
        _loaded(data, broken)
    assert str(broken / "b1_rgb.png") in str(info.value)
    assert "\n" not in str(info.value)
    assert _loaded(data, folder_a) == {"a1_rgb": 10}
    assert not [n for n in os.listdir(data) if n.startswith(".")]


def test_an_unchanged_folder_is_not_rebuilt_and_a_changed_file_is(tmp_path, monkeypatch):
    folder = _write_folder(tmp_path / "a", {"a1": 10})
    data = tmp_path / "data"
    assert _loaded(data, folder) == {"a1_rgb": 10}

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt although nothing changed")

    with monkeypatch.context() as patch:
        patch.setattr(sources, "_rebuild", no_rebuild)
        assert _loaded(data, folder) == {"a1_rgb": 10}
    # Same file name and (for a constant image) size, new pixels and modification time.
    size = (folder / "a1_rgb.png").stat().st_size
    cv2.imwrite(str(folder / "a1_rgb.png"), np.full((6, 8, 3), 50, np.uint8))
    assert (folder / "a1_rgb.png").stat().st_size == size
    os.utime(folder / "a1_rgb.png", ns=(1, 1))
    assert _loaded(data, folder) == {"a1_rgb": 50}


def test_data_of_unknown_origin_is_rebuilt_when_a_manual_dir_is_given(tmp_path):
    from datasets import _testing
    from datasets.nirvis_folder import nirvis_folder_dataset_builder as module

    data = tmp_path / "data"
    _testing.build(module.Builder, data, _write_folder(tmp_path / "a", {"a1": 10}))  # no record
    assert _loaded(data) == {"a1_rgb": 10}
    assert _loaded(data, _write_folder(tmp_path / "b", {"b1": 200})) == {"b1_rgb": 200}


def test_a_manual_dir_whose_csv_leads_outside_is_refused_in_one_line(tmp_path):
    folder = _write_folder(tmp_path / "a", {"a1": 10})
    (folder / "pairs.csv").write_text("rgb,nir\na1_rgb.png,../../../../../../etc/passwd\n")
    with pytest.raises(sources.DataError, match="line 2.*leads outside the manual directory"):
        _loaded(tmp_path / "data", folder)


def test_scanning_builders_are_tied_to_their_folder_too(tmp_path):
    """nirscene (like ranus and rgb_nir_stereo) scans its folder: removing a pair rebuilds."""
    dummy = os.path.join(DATASETS_DIR, "nirscene", "dummy_data")
    folder_a, folder_b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(dummy, folder_a)
    shutil.copytree(dummy, folder_b)
    data = tmp_path / "data"
    before = _loaded(data, folder_a, name="nirscene", split="train")
    victim = sorted(folder_b.rglob("*_rgb.*"))[-1]
    victim.unlink()
    next(folder_b.rglob(victim.name.replace("_rgb", "_nir"))).unlink()
    after = _loaded(data, folder_b, name="nirscene", split="train")
    removed = f"{victim.parent.name}/{victim.name.split('_')[0]}"
    assert removed in before and set(after) == set(before) - {removed}
