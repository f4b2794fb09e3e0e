"""Writes a copy of an `nirvis_folder` manual directory with its registered pairs re-registered.

    .venv/bin/python -m datasets.nirvis_folder.register_folder \
        --manual_dir=../shared/data/nirvis_samples --out_dir=runs/nirvis_registered

Every `aligned` row gets its residual translation measured (`cspsr_tf.data.registration`:
phase correlation of gradient magnitudes, as `../shared/data/nirvis_samples/SOURCE.md`
checks them); where it is more than 0.5 px on an axis, both images are cropped to their
overlap so that the whole-pixel part is gone (nothing is resampled; the residual is at most
0.5 px). Stereo rows are copied: their shift is the disparity the CVM is for. A measured shift
above --max_shift is taken for a failed estimate: the row is left out and named. Images are
written as PNG (the decoded pixels of the source, so a JPEG's pixels are kept exactly) at the
same relative paths with a `.png` suffix, so the `id`s stay the same. `pairs.csv` keeps the
source's columns and adds `shift_y,shift_x` (measured), `crop_y,crop_x` (removed) and
`residual_y,residual_x` (measured again after the crop; the measured shift where nothing was
cropped), and `local_spread` (`registration.local_spread` after the crop: how far the four
quadrants' shifts disagree; --max_local_spread drops the rows above it), empty for stereo rows.

The output folder is built beside --out_dir and renamed into place when complete, so a failed
run leaves nothing half-written.
"""

import csv
import io
import sys
from pathlib import Path

from absl import app, flags
from etils import epath

from cspsr_tf.data import registration
from cspsr_tf.util import scratch_dirs
from cspsr_tf.util.cli import fail
from datasets import _common
from datasets.nirvis_folder import nirvis_folder_dataset_builder as folder

FLAGS = flags.FLAGS


def define_flags():
    """The CLI's flags (defined only when run as a program: the library functions below are
    imported by tests beside other modules with flags of the same names)."""
    flags.DEFINE_string("manual_dir", None, "Folder with pairs.csv and the images it lists.")
    flags.DEFINE_string("out_dir", None, "Folder to write (must not exist, unless --overwrite).")
    flags.DEFINE_float("max_shift", 24.0, "Larger measured shifts (px, either axis) drop the row.")
    flags.DEFINE_float("max_local_spread", None, "Drop aligned rows whose quadrant shifts disagree "
                       "by more than this many px after the crop (default: keep every row).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out_dir.")

ADDED_COLUMNS = ("shift_y", "shift_x", "crop_y", "crop_x", "residual_y", "residual_x",
                 "local_spread")


def _png_path(cell):
    return str(Path(cell.strip().replace("\\", "/")).with_suffix(".png"))


def _write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_common.encode_png(image))


def _register_pair(vis, nir, max_shift, max_local_spread):
    """(vis, nir, shift, crop, columns, why dropped or None) of an aligned pair, cropped by
    `crop` (whole px; (0, 0) when it is not off) after its measured `shift` (dy, dx)."""
    shift = registration.estimate_shift(vis, nir)
    columns = dict.fromkeys(ADDED_COLUMNS, "")
    columns.update(shift_y=f"{shift[0]:.2f}", shift_x=f"{shift[1]:.2f}")
    if max(abs(s) for s in shift) > max_shift:
        return vis, nir, shift, (0, 0), columns, (
            f"measured shift (dy, dx) = ({shift[0]:.2f}, {shift[1]:.2f}) px is above "
            f"--max_shift={max_shift}")
    crop = registration.integer_shift(shift)
    residual = shift
    if crop != (0, 0):
        vis, nir = registration.crop_registered(vis, nir, shift)
        residual = registration.estimate_shift(vis, nir)
    spread = registration.local_spread(vis, nir)
    columns.update(crop_y=str(crop[0]), crop_x=str(crop[1]), residual_y=f"{residual[0]:.2f}",
                   residual_x=f"{residual[1]:.2f}", local_spread=f"{spread:.2f}")
    if max_local_spread is not None and spread > max_local_spread:
        return vis, nir, shift, crop, columns, (f"its quadrants' shifts disagree by {spread:.2f} px "
                                                f"(--max_local_spread={max_local_spread})")
    return vis, nir, shift, crop, columns, None


def register_folder(manual_dir, out_dir, max_shift=24.0, max_local_spread=None, overwrite=False,
                    log=print):
    """Writes the re-registered copy of `manual_dir` to `out_dir` (see the module docstring);
    an existing `out_dir` raises FileExistsError unless `overwrite`.

    Returns:
        {"rows": written rows, "cropped": [(id, (dy, dx))], "dropped": [(id, (dy, dx))]}.
    """
    manual_dir, out_dir = Path(manual_dir), Path(out_dir)
    csv_path = manual_dir / folder.CSV_NAME
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} was not found.")
    rows = folder.read_rows(epath.Path(csv_path))
    if not rows:
        raise ValueError(f"{csv_path} lists no pair.")
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        cells = [row for row in csv.DictReader(f) if (row.get("rgb") or "").strip()]
    columns = [c.strip() for c in cells[0]] if cells else ["rgb", "nir"]
    columns += [c for c in ADDED_COLUMNS if c not in columns]

    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out_dir.name}.tmp-"
    # Staging folders of earlier runs that were killed are removed; a live run's is locked.
    scratch_dirs.remove_stale(str(out_dir.parent), prefix)
    report = {"rows": 0, "cropped": [], "dropped": []}
    with scratch_dirs.locked_scratch_dir(str(out_dir.parent), prefix) as scratch:
        staging = Path(scratch)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        for (key, rgb_path, nir_path, geometry), cell in zip(rows, cells, strict=True):
            vis, nir = _common.read_pair(rgb_path, nir_path)
            added = dict.fromkeys(ADDED_COLUMNS, "")  # not measured for stereo rows
            if geometry == _common.ALIGNED:
                vis, nir, shift, crop, added, dropped = _register_pair(
                    vis, nir, max_shift, max_local_spread)
                if dropped:
                    report["dropped"].append((key, shift))
                    log(f"dropped {key}: {dropped}")
                    continue
                if crop != (0, 0):
                    report["cropped"].append((key, shift))
            row = {k.strip(): v for k, v in cell.items()}
            row.update(rgb=_png_path(row["rgb"]), nir=_png_path(row["nir"]), **added)
            if "width" in row and "height" in row:
                row.update(width=str(vis.shape[1]), height=str(vis.shape[0]))
            _write_png(staging / row["rgb"], vis)
            _write_png(staging / row["nir"], nir)
            writer.writerow(row)
            report["rows"] += 1
        (staging / folder.CSV_NAME).write_text(buffer.getvalue(), encoding="utf-8")
        scratch_dirs.move_into_place(scratch, str(out_dir), overwrite)
    return report


def main(argv):
    program = "register_folder"
    if len(argv) > 1:
        fail(program, f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.manual_dir or not FLAGS.out_dir:
        fail(program, "--manual_dir and --out_dir are required")
    out_dir = Path(FLAGS.out_dir)
    if out_dir.exists() and not FLAGS.overwrite:
        fail(program, f"--out_dir {out_dir} exists; pass --overwrite to replace it")
    if out_dir.resolve() == Path(FLAGS.manual_dir).resolve():
        fail(program, "--out_dir must differ from --manual_dir")
    try:
        report = register_folder(FLAGS.manual_dir, out_dir, FLAGS.max_shift, FLAGS.max_local_spread,
                                 overwrite=FLAGS.overwrite)
    except (OSError, ValueError) as e:
        fail(program, str(e).splitlines()[0] if str(e) else type(e).__name__)
    print(f"Wrote {report['rows']} pairs to {out_dir}: {len(report['cropped'])} re-registered, "
          f"{len(report['dropped'])} dropped (see the shift_* / crop_* / residual_* columns of "
          f"{out_dir / folder.CSV_NAME}).")
    return 0


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
