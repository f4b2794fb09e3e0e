"""benchmarks/paper_tables.py --smoke: every table trains, evaluates and is written, on dummy data."""

import json
import os
import sys

from tests.cli_runner import run_cli
from tests.conftest import ROOT


def test_smoke_run_writes_every_table_in_the_papers_layout(tmp_path):
    out = tmp_path / "tables.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = run_cli(
        [sys.executable, os.path.join(ROOT, "benchmarks", "paper_tables.py"), "--smoke",
         "--table=all", f"--work_dir={tmp_path / 'work'}", f"--out={out}"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    tables = json.loads(out.read_text())["tables"]
    assert set(tables) == {"1", "3", "4", "5"}
    row = tables["1"]["rows"][0]
    assert row["dataset"] == "rgb_nir_stereo" and row["scale"] == 4
    assert row["cspsr"]["paper"]["psnr"] > 0 and row["bicubic"]["paper"]["psnr"] > 0
    assert tables["1"]["cost"]["params"] > 0
    assert set(tables["4"]["rows"]) == {"full"}
    # The dummy test video has one keypoint file: Table 5 scores it for all three rows.
    assert set(tables["5"]["keypoints"]) == {"Bicubic", "Our", "HR"}
    assert all(t["points"] > 0 for t in tables["5"]["keypoints"].values())
    markdown = (tmp_path / "tables.md").read_text()
    for title in ("## Table 1", "## Table 3", "## Table 4", "## Downstream disparity"):
        assert title in markdown
    # Resumable: a second run trains nothing and reuses the evaluations.
    again = run_cli(
        [sys.executable, os.path.join(ROOT, "benchmarks", "paper_tables.py"), "--smoke",
         "--table=3", f"--work_dir={tmp_path / 'work'}", f"--out={tmp_path / 't3.json'}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Training summary" not in again.stderr


def test_bad_table_is_one_line_exit_2(tmp_path):
    result = run_cli(
        [sys.executable, os.path.join(ROOT, "benchmarks", "paper_tables.py"), "--table=9",
         f"--work_dir={tmp_path}"], capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "paper_tables: error: --table='9' is not one of: 1, 3, 4, 5, all"
    ]
