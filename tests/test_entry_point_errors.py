"""Every entry point answers a flag it does not know and a value outside a flag's choices with
one line `<program>: error: ...` on stderr and exit code 2 (cli.run_main), nothing on stdout.

One subprocess per case: the exit code and the output are what is tested.
"""

import os
import sys

import pytest

from tests.cli_runner import run_cli
from tests.conftest import ROOT

ENTRY_POINTS = {  # script -> the program name its errors start with
    "train.py": "train.py",
    "evaluate.py": "evaluate.py",
    "export/export_savedmodel.py": "export_savedmodel",
    "export/export_litert.py": "export_litert",
}
# One value outside a flag's choices per entry point (train.py's choices are checked by
# run_config, the others by absl's enum flags).
BAD_CHOICES = {
    "train.py": ("--stage=bogus", "--stage='bogus' is not one of: sr, cvm"),
    "evaluate.py": ("--ops=magic", "flag --ops=magic: value should be one of <fused|shift|patches>"),
    "export/export_savedmodel.py": (
        "--geometry=sideways", "flag --geometry=sideways: value should be one of <stereo|aligned>"),
    "export/export_litert.py": (
        "--variant=int4",
        "flag --variant=int4: value should be one of <float32|float16|dynamic_int8>"),
}
CASES = [(script, "--bogus_flag=1", "Unknown command line flag 'bogus_flag'")
         for script in ENTRY_POINTS]
CASES += [(script, *BAD_CHOICES[script]) for script in ENTRY_POINTS]


@pytest.mark.parametrize("script, flag, message", CASES)
def test_a_bad_flag_is_one_line_and_exit_2(script, flag, message, tmp_path):
    # --model / --out satisfy the exporters' required flags; --model_dir keeps train.py's
    # default folder untouched (nothing may be written anyway).
    args = {"train.py": [f"--model_dir={tmp_path / 'run'}"],
            "evaluate.py": [f"--model={tmp_path / 'm.keras'}", f"--out_dir={tmp_path / 'o'}"]}
    extra = args.get(script, [f"--model={tmp_path / 'm.keras'}", f"--out={tmp_path / 'out'}"])
    result = run_cli(
        [sys.executable, os.path.join(ROOT, script), *extra, flag],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [f"{ENTRY_POINTS[script]}: error: {message}"]
    assert result.stdout == ""
    assert os.listdir(tmp_path) == []
