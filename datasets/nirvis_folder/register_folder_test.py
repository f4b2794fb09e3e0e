"""Tests of register_folder: a manual directory with one shifted, one registered and one stereo
pair, made here with known shifts."""

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from etils import epath
from skimage import data

from . import nirvis_folder_dataset_builder as folder
from . import register_folder as module

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fake_nir(rgb):
    value = 0.8 * rgb[..., 0].astype(np.float32) + 0.4 * (255 - rgb[..., 2].astype(np.float32))
    return np.round(value / value.max() * 255).astype(np.uint8)


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    assert cv2.imwrite(str(path), bgr)


@pytest.fixture
def manual_dir(tmp_path):
    scene = data.astronaut()
    nir_full = _fake_nir(scene)
    root = tmp_path / "pairs"
    size = 300
    # `shifted`: NIR(y - 5, x + 9) shows what RGB(y, x) shows, i.e. a shift of (5, -9).
    _write(root / "a/shifted_rgb.jpg", scene[50 : 50 + size, 60 : 60 + size])
    _write(root / "a/shifted_nir.jpg", nir_full[55 : 55 + size, 51 : 51 + size])
    _write(root / "a/fine_rgb.png", scene[100 : 100 + size, 100 : 100 + size])
    _write(root / "a/fine_nir.png", nir_full[100 : 100 + size, 100 : 100 + size])
    _write(root / "b/stereo_rgb.png", scene[0:size, 0:size])
    _write(root / "b/stereo_nir.png", nir_full[0:size, 20 : 20 + size])
    (root / "pairs.csv").write_text(
        "rgb,nir,width,height,geometry,source\n"
        f"a/shifted_rgb.jpg,a/shifted_nir.jpg,{size},{size},aligned,test\n"
        f"a/fine_rgb.png,a/fine_nir.png,{size},{size},aligned,test\n"
        f"b/stereo_rgb.png,b/stereo_nir.png,{size},{size},stereo_rgb_left_nir_right,test\n"
    )
    return root


def test_registers_the_shifted_pair_only(manual_dir, tmp_path):
    out = tmp_path / "registered"
    report = module.register_folder(manual_dir, out, log=lambda _: None)
    assert report["rows"] == 3 and [k for k, _ in report["cropped"]] == ["a/shifted_rgb"]
    with open(out / "pairs.csv") as f:
        rows = {r["rgb"]: r for r in csv.DictReader(f)}
    shifted, fine, stereo = rows["a/shifted_rgb.png"], rows["a/fine_rgb.png"], rows["b/stereo_rgb.png"]
    assert (shifted["crop_y"], shifted["crop_x"]) == ("5", "-9")
    assert abs(float(shifted["shift_y"]) - 5) < 0.2 and abs(float(shifted["shift_x"]) + 9) < 0.2
    assert max(abs(float(shifted["residual_y"])), abs(float(shifted["residual_x"]))) < 0.2
    assert (shifted["width"], shifted["height"]) == ("291", "295")
    assert (fine["crop_y"], fine["crop_x"]) == ("0", "0")
    assert stereo["shift_x"] == stereo["crop_x"] == ""  # stereo rows are not measured
    assert stereo["geometry"] == "stereo_rgb_left_nir_right" and shifted["source"] == "test"
    # The cropped pair: the same scene points (decoded JPEG pixels, cropped, kept exactly).
    rgb_in = cv2.imread(str(manual_dir / "a/shifted_rgb.jpg"))
    nir_in = cv2.imread(str(manual_dir / "a/shifted_nir.jpg"), cv2.IMREAD_GRAYSCALE)
    rgb_out = cv2.imread(str(out / "a/shifted_rgb.png"))
    nir_out = cv2.imread(str(out / "a/shifted_nir.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(rgb_out, rgb_in[5:, :291])
    np.testing.assert_array_equal(nir_out, nir_in[:295, 9:])
    # The stereo pair is untouched, and the ids stay those of the source folder.
    np.testing.assert_array_equal(cv2.imread(str(out / "b/stereo_nir.png")),
                                  cv2.imread(str(manual_dir / "b/stereo_nir.png")))
    ids = [r[0] for r in folder.read_rows(epath.Path(out / "pairs.csv"))]
    assert ids == [r[0] for r in folder.read_rows(epath.Path(manual_dir / "pairs.csv"))]


def test_pairs_no_single_shift_registers_are_dropped_on_request(manual_dir, tmp_path):
    # `fine` made non-rigid: its right half moved by 8 px more than its left half.
    scene = data.astronaut()
    nir = _fake_nir(scene)[100:400, 100:400].copy()
    nir[:, 150:] = _fake_nir(scene)[100:400, 258:408]
    _write(manual_dir / "a/fine_nir.png", nir)
    kept = module.register_folder(manual_dir, tmp_path / "all", log=lambda _: None)
    with open(tmp_path / "all" / "pairs.csv") as f:
        spreads = {r["rgb"]: r["local_spread"] for r in csv.DictReader(f)}
    assert float(spreads["a/fine_rgb.png"]) > 2 and float(spreads["a/shifted_rgb.png"]) < 1
    assert spreads["b/stereo_rgb.png"] == "" and kept["rows"] == 3
    report = module.register_folder(manual_dir, tmp_path / "strict", max_local_spread=1.0,
                                    log=lambda _: None)
    assert [k for k, _ in report["dropped"]] == ["a/fine_rgb"] and report["rows"] == 2


def test_implausible_shift_drops_the_row(manual_dir, tmp_path):
    report = module.register_folder(manual_dir, tmp_path / "out", max_shift=3.0, log=lambda _: None)
    assert [k for k, _ in report["dropped"]] == ["a/shifted_rgb"] and report["rows"] == 2


def test_failure_leaves_nothing_behind(manual_dir, tmp_path):
    (manual_dir / "b/stereo_nir.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="stereo_nir.png"):
        module.register_folder(manual_dir, out, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "datasets.nirvis_folder.register_folder", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False)


def test_cli_errors_are_one_line(manual_dir, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    result = _cli(f"--manual_dir={manual_dir}", f"--out_dir={out}")
    assert result.returncode == 2 and "exists; pass --overwrite" in result.stderr
    result = _cli(f"--manual_dir={tmp_path / 'nothing'}", f"--out_dir={tmp_path / 'new'}")
    assert result.returncode == 2 and "pairs.csv was not found" in result.stderr
    assert not (tmp_path / "new").exists()
