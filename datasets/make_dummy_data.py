"""Regenerates the tiny `dummy_data/` folders of the manual builders (deterministic).

    .venv/bin/python -m datasets.make_dummy_data   (from the repository root)

Each folder mirrors the real layout of its dataset with a few 16x12 images (a few KB in all).
"""

from __future__ import annotations

import pathlib
import shutil

import cv2
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
H, W = 12, 16


def _rgb(rng, mean=128):
    """Random smooth-ish RGB image (BGR order for cv2.imwrite)."""
    base = rng.integers(0, 256, size=(3, 4, 3)).astype(np.float32)
    img = cv2.resize(base, (W, H), interpolation=cv2.INTER_LINEAR)
    img = img * (mean / max(float(img.mean()), 1.0))
    return np.clip(img, 0, 255).astype(np.uint8)


def _grey(rng, mean=128):
    return _rgb(rng, mean)[:, :, 1]


def _write(path: pathlib.Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path


def _fresh(name: str) -> pathlib.Path:
    root = HERE / name / "dummy_data"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return root


def rgb_nir_stereo(rng) -> None:
    root = _fresh("rgb_nir_stereo") / "rgbnir_stereo"
    frames = {
        "20170221_1357": ["211357_000010", "211357_000020"],  # train video, listed
        "20170224_0742": ["240742_000010"],  # test video, no list file: found by folder scan
    }
    for collection, keys in frames.items():
        for n, key in enumerate(keys):
            # The real frames are dark (mean ~25/255).
            _write(root / "data" / collection / "RGBResize" / f"{key}_RGBResize.png", _rgb(rng, 25))
            nir = _grey(rng, 30)
            if n == 1:  # One NIR frame stored as 3 equal channels.
                nir = np.dstack([nir] * 3)
            _write(root / "data" / collection / "NIRResize" / f"{key}_NIRResize.png", nir)
    lines = [f"20170221_1357 {k} 12.5 20.0 1.6 1.9" for k in frames["20170221_1357"]]
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "20170221_1357.txt").write_text("\n".join(lines) + "\n")
    # Keypoints (x y d c, normalised) for one test frame only, as the release has them for
    # test frames; at 16x12: (row, column, disparity_px, class) = (5, 7, 1, 0), (11, 15, 2, 4),
    # (2, 0, 0, 7) (x = 0 gives column -1, clipped to 0).
    keypoints = root / "data" / "20170224_0742" / "Keypoint" / "240742_000010_Keypoint.txt"
    keypoints.parent.mkdir(parents=True)
    keypoints.write_text("0.5 0.5 0.0625 0\n1.0 1.0 0.125 4\n0.0 0.25 0 7\n")


def nirscene(rng) -> None:
    root = _fresh("nirscene") / "nirscene1"
    for category, count in (("country", 7), ("water", 6)):
        for i in range(count):
            stem = root / category / f"{i:04d}"
            if category == "country" and i == 0:
                # As distributed: TIFF; here the NIR is 16-bit to exercise the conversion.
                _write(stem.with_name(f"{i:04d}_rgb.tiff"), _rgb(rng))
                _write(stem.with_name(f"{i:04d}_nir.tiff"), _grey(rng).astype(np.uint16) * 257)
            else:
                _write(stem.with_name(f"{i:04d}_rgb.png"), _rgb(rng))
                _write(stem.with_name(f"{i:04d}_nir.png"), _grey(rng))


def ranus(rng) -> None:
    root = _fresh("ranus") / "RANUS"
    for i in range(2):
        _write(root / "01" / "RGB" / f"{i:06d}.png", _rgb(rng))
        _write(root / "01" / "NIR" / f"{i:06d}.png", _grey(rng))
    _write(root / "50" / "RGB" / "000000_rgb.png", _rgb(rng))
    _write(root / "50" / "NIR" / "000000_nir.png", _rgb(rng))  # 3 different channels -> grey


def nirvis_folder(rng) -> None:
    root = _fresh("nirvis_folder")
    _write(root / "stereo_rig" / "0001_rgb.png", _rgb(rng))
    _write(root / "stereo_rig" / "0001_nir.png", _grey(rng))
    _write(root / "registered" / "a_rgb.jpg", _rgb(rng))
    _write(root / "registered" / "a_nir.jpg", _grey(rng))
    _write(root / "misc" / "b_rgb.png", _rgb(rng))
    _write(root / "misc" / "b_nir.png", _grey(rng))
    (root / "pairs.csv").write_text(
        "rgb,nir,width,height,geometry,source\n"
        f"stereo_rig/0001_rgb.png,stereo_rig/0001_nir.png,{W},{H},stereo_rgb_left_nir_right,rig\n"
        f"registered/a_rgb.jpg,registered/a_nir.jpg,{W},{H},aligned,cam\n"
        f"misc/b_rgb.png,misc/b_nir.png,{W},{H},,other\n"
    )


def main() -> None:
    rng = np.random.default_rng(0)
    rgb_nir_stereo(rng)
    nirscene(rng)
    ranus(rng)
    nirvis_folder(rng)


if __name__ == "__main__":
    main()
