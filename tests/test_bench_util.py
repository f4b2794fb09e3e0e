"""benchmarks/bench_util.py: the command line that result files record."""

import os

import pytest

from benchmarks import bench_util


def test_command_line_names_no_folder_of_the_machine():
    root = bench_util.REPO_ROOT
    shared = os.path.join(os.path.dirname(root), "shared", "data")
    # Two levels above the repository, wherever it is cloned: another machine's scratch folders.
    elsewhere = os.path.normpath(os.path.join(root, os.pardir, os.pardir, "scratch"))
    if os.path.relpath(elsewhere, root).count(os.pardir) < 2:
        pytest.skip(f"the repository ({root}) sits too close to / for a folder two levels above it")
    argv = [os.path.join(root, "benchmarks", "x.py"), f"--train={elsewhere}/probe", f"--weights_out={elsewhere}/out/w/",
            f"--out={os.path.join(root, 'runs', 'a.json')}", f"--manual_dir={shared}", "--rows=a,b", "--flag"]
    assert bench_util.command_line(argv) == (
        "benchmarks/x.py --train=<outside>/probe --weights_out=<outside>/w --out=runs/a.json "
        "--manual_dir=../shared/data --rows=a,b --flag")
