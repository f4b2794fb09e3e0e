"""An oracle copy of the shared samples: each pair's NIR replaced by its own VIS luminance.

    .venv/bin/python studies/oracle_guide_samples.py                   # -> runs/oracle_guide_samples
    .venv/bin/python benchmarks/nir_benefit.py --manual_dir=runs/oracle_guide_samples \\
        --data_dir=runs/oracle_guide/tfds --work_dir=runs/nir_benefit_oracle ...

What limits the NIR's gain: the model, or what the NIR holds? Trained on this folder, a
dual-branch model gets a guide that carries exactly the clean VIS's luminance (BT.601 luma of
the RGB as `nirvis_folder` decodes it, 8-bit), in the left view: every pair is written as
`aligned`. Under a degraded VIS input that is the best guide there can be; what the same model
and recipe gain with it, against what they gain with the real NIR, separates the fusion's
limits from the NIR's. It is a measurement, not a training source: nothing real has such a
guide. The RGB files are hard links to the originals (copies where the file system refuses),
at the same relative paths, so the example ids and the split rule stay the same. The folder
is written in a temporary sibling and renamed into place at the end.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import csv  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from datasets import _common  # noqa: E402
from datasets.nirvis_folder.nirvis_folder_dataset_builder import CSV_NAME, read_rows  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags():
    # Only when run as a script: tests import this module beside others with flags of these names.
    flags.DEFINE_string("manual_dir", bench_util.SAMPLES_DIR, "Folder with pairs.csv (the real pairs).")
    flags.DEFINE_string("out_dir", os.path.join(bench_util.REPO_ROOT, "runs", "oracle_guide_samples"),
                        "Folder written (replaced if it exists).")

# ITU-R BT.601 luma weights of R, G, B, applied in float64. (`cspsr_tf.data.registration.grey`
# computes the same in float32, which rounds 1,414 pixels of the 185 guides to the next level:
# the committed oracle figures were made with these.)
LUMA = np.array([0.299, 0.587, 0.114])


def luma_u8(rgb):
    """(H, W, 3) uint8 RGB -> (H, W) uint8 BT.601 luma."""
    return np.round(rgb.astype(np.float64) @ LUMA).clip(0, 255).astype(np.uint8)


def write_oracle_folder(manual_dir, out_dir):
    """Writes the oracle folder; returns the number of pairs."""
    manual_dir, out_dir = Path(manual_dir), Path(out_dir)
    csv_path = manual_dir / CSV_NAME
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found")
    rows = read_rows(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} lists no pairs")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        records = []
        for _, rgb_path, _, _ in rows:
            rel = Path(os.path.relpath(rgb_path, manual_dir))
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(rgb_path, target)
            except OSError:
                shutil.copyfile(rgb_path, target)
            rgb = _common.rgb_from_raw(_common.read_raw(rgb_path), rgb_path)
            guide_rel = rel.with_name(rel.stem + "_oracle_luma.png")
            if not cv2.imwrite(str(tmp / guide_rel), luma_u8(rgb)):
                raise OSError(f"cannot write {tmp / guide_rel}")
            records.append({"rgb": rel.as_posix(), "nir": guide_rel.as_posix(), "geometry": "aligned"})
        with open(tmp / CSV_NAME, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["rgb", "nir", "geometry"])
            writer.writeheader()
            writer.writerows(records)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(records)


def main(argv):
    del argv
    count = write_oracle_folder(FLAGS.manual_dir, FLAGS.out_dir)
    print(f"{count} pairs written to {bench_util.rel(FLAGS.out_dir)} (NIR = the VIS's own luma)")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
