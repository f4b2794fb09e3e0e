"""Your own RGB + NIR pairs, listed in a `pairs.csv` file in the manual directory.

One split, `train`, holds every pair (split by `id` yourself). See README.md.
"""

from __future__ import annotations

import csv
import io

import tensorflow_datasets as tfds
from etils import epath

try:
    from .. import _common
except ImportError:  # `tfds build datasets/nirvis_folder` imports this as a top-level package.
    import _common

CSV_NAME = "pairs.csv"
DEFAULT_GEOMETRY = _common.STEREO
# Accepted values of the optional `geometry` column (case-insensitive) -> stored value.
GEOMETRY_VALUES = {
    "stereo_rgb_left_nir_right": _common.STEREO,
    "stereo": _common.STEREO,
    "aligned": _common.ALIGNED,
    "registered": _common.ALIGNED,
}

LAYOUT = """\
  <manual_dir>/
    pairs.csv                  comma-separated, with a header line; required columns `rgb` and
                               `nir`; optional column `geometry`; other columns are ignored:
        rgb,nir,geometry
        scene1/0001_rgb.png,scene1/0001_nir.png,stereo_rgb_left_nir_right
        scene2/0001_rgb.jpg,scene2/0001_nir.jpg,aligned
    scene1/0001_rgb.png        the image files, at the paths given in pairs.csv, relative to the
    scene1/0001_nir.png        folder of pairs.csv; every path must lie inside that folder
  geometry: `stereo_rgb_left_nir_right` or `stereo` -> "stereo" (RGB = left camera, NIR = right
  camera, rectified); `aligned` or `registered` -> "aligned"; empty or no column -> "stereo".
  The RGB and NIR image of a row must have the same width and height."""


def parse_geometry(value: str | None, where: str) -> str:
    """Maps a `geometry` cell to "stereo" / "aligned"; empty means `DEFAULT_GEOMETRY`."""
    text = (value or "").strip().lower()
    if not text:
        return DEFAULT_GEOMETRY
    if text not in GEOMETRY_VALUES:
        raise ValueError(
            f"{where}: unsupported geometry {value!r}; use one of {sorted(GEOMETRY_VALUES)}. "
            "(An NIR-left / RGB-right stereo pair is not supported: RGB must be the left view.)"
        )
    return GEOMETRY_VALUES[text]


def example_id(rgb_cell: str) -> str:
    """The `id` of a row: its `rgb` path with '/' separators and without the file extension."""
    path = rgb_cell.strip().replace("\\", "/")
    name = path.rsplit("/", 1)[-1]
    if "." in name:
        path = path[: len(path) - len(name) + name.rindex(".")]
    return path.lstrip("/")


def read_rows(csv_path) -> list[tuple[str, str, str, str]]:
    """[(id, rgb_path, nir_path, geometry)] in the order of the CSV."""
    text = csv_path.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    if "rgb" not in header or "nir" not in header:
        raise _common.layout_error(
            csv_path.parent,
            LAYOUT,
            f"{csv_path} needs the columns `rgb` and `nir` in its header line; found {header}.",
        )
    rows = []
    base = csv_path.parent
    for line_no, row in enumerate(reader, start=2):
        where = f"{csv_path}, line {line_no}"
        rgb_cell = (row.get("rgb") or "").strip()
        nir_cell = (row.get("nir") or "").strip()
        if not rgb_cell and not nir_cell:
            continue  # Blank line.
        if not rgb_cell or not nir_cell:
            raise ValueError(f"{where}: both `rgb` and `nir` must be given, got {row}.")
        geometry = parse_geometry(row.get("geometry"), where)
        rgb_path = _common.confined(base / rgb_cell, base, f"{where}, column rgb")
        nir_path = _common.confined(base / nir_cell, base, f"{where}, column nir")
        rows.append((example_id(rgb_cell), rgb_path, nir_path, geometry))
    _common.check_unique([r[0] for r in rows], str(csv_path))
    return rows


def manual_sources(manual_dir) -> list:
    """The files a build reads: pairs.csv and every image it lists (for provenance)."""
    csv_path = epath.Path(manual_dir) / CSV_NAME
    if not csv_path.is_file():
        return []  # the build reports the missing file
    return [csv_path, *(path for row in read_rows(csv_path) for path in row[1:3])]


class Builder(_common.BeamWhenAsked, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for user RGB + NIR pairs listed in `pairs.csv`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: pairs.csv, one `train` split."}
    manual_sources = staticmethod(manual_sources)
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put your RGB + NIR image pairs and a {CSV_NAME} that lists them in the manual directory:
{LAYOUT}
"""

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_common.common_features(),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = _common.require_nonempty_dir(dl_manager.manual_dir, LAYOUT)
        csv_path = manual_dir / CSV_NAME
        if not csv_path.is_file():
            raise _common.layout_error(manual_dir, LAYOUT, f"{csv_path} was not found.")
        rows = read_rows(csv_path)
        if not rows:
            raise _common.layout_error(manual_dir, LAYOUT, f"{csv_path} lists no pair.")
        return self.examples_per_split({"train": rows}, row_example)

    def _generate_examples(self, rows):
        # Abstract in TFDS; `_split_generators` goes through `examples_per_split` instead.
        for row in rows:
            yield row_example(row)


def row_example(row) -> tuple[str, dict]:
    """(id, example) of one (id, rgb_path, nir_path, geometry) row of pairs.csv."""
    key, rgb_path, nir_path, geometry = row
    vis, nir = _common.read_pair(rgb_path, nir_path)
    return key, _common.example(vis, nir, geometry, key)
