"""train.py reliability: resuming a moved run, one metrics series, divergence, SIGTERM, logs."""

import json
import os
import signal
import sys

import pytest

from tests.cli_runner import start_cli
from tests.conftest import ROOT
from tests.test_training import TINY_FAST, run_train

TF_NOISE = ("I0000", "E0000", "absl::InitializeLog", "cuda")


def _steps_in(metrics_path):
    return [json.loads(line)["step"] for line in metrics_path.read_text().splitlines()]


def test_moved_run_resumes_with_one_metrics_series(synthetic_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    common = [*TINY_FAST, "--eval_every=1", "--save_every=2", "--log_every=1"]
    result = run_train([*common, f"--data_dir={synthetic_data_dir}", f"--model_dir={run_dir}",
                        "--steps=4"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert _steps_in(run_dir / "metrics.jsonl") == [1, 2, 3, 4]
    # Not a terminal: one log line per --log_every steps, no progress bar redraws.
    assert "step 4/4: total=" in result.stderr
    assert "\x1b[" not in result.stdout and "\r" not in result.stdout and "━" not in result.stdout

    # A kill -9 after step 3 whose last save was step 2: drop ckpt-4, cut the last line short.
    ckpt = run_dir / "checkpoints"
    for path in ckpt.glob("ckpt-4.*"):
        path.unlink()
    (ckpt / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-2"\n'
    )
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"model/paper/psnr": 1')

    # Moved, and spelled relative to the working directory with a trailing slash; the data
    # folder too is spelled differently.
    moved = tmp_path / "moved"
    os.rename(run_dir, moved)
    result = run_train([*common, f"--data_dir={synthetic_data_dir}{os.sep}.{os.sep}",
                        f"--model_dir={os.path.relpath(moved, ROOT)}{os.sep}", "--steps=5"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at step 2" in result.stderr  # "Resumed from ... at step 2"
    assert _steps_in(moved / "metrics.jsonl") == [1, 2, 3, 4, 5]


def test_diverged_run_one_line_exit_2(synthetic_data_dir, tmp_path):
    # Never saved: nothing is left behind. In a fresh interpreter, so that what TensorFlow
    # prints while it loads reaches this stderr (the quieting of its start-up is checked).
    fresh = tmp_path / "fresh"
    result = run_train([*TINY_FAST, f"--data_dir={synthetic_data_dir}", f"--model_dir={fresh}",
                        "--steps=40", "--eval_every=0", "--save_every=100", "--learning_rate=1e6"],
                       fresh_interpreter=True)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: training diverged: non-finite loss at step"), last
    assert "lower --learning_rate" in last
    assert "Traceback" not in result.stderr
    assert not fresh.exists()
    assert not any(noise in result.stderr for noise in TF_NOISE)

    # Saved every step: the checkpoint of the weights that gave the non-finite loss is
    # dropped, the earlier ones kept and named in the message.
    saved = tmp_path / "saved"
    result = run_train([*TINY_FAST, f"--data_dir={synthetic_data_dir}", f"--model_dir={saved}",
                        "--steps=40", "--eval_every=0", "--save_every=1", "--learning_rate=1e6"])
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    diverged_at = int(last.split("non-finite loss at step ")[1].split()[0])
    kept = sorted(int(p.name[5:-6]) for p in (saved / "checkpoints").glob("ckpt-*.index"))
    assert kept and max(kept) == diverged_at - 2
    assert f"ckpt-{diverged_at - 2}" in last and "is kept" in last
    assert (saved / "config.json").exists()


def test_data_error_before_anything_is_written(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    model_dir = tmp_path / "run"
    result = run_train(["--dataset=nirvis_folder", "--preset=tiny", "--steps=1",
                        f"--manual_dir={empty}", f"--data_dir={tmp_path / 'tfds'}",
                        f"--model_dir={model_dir}"], timeout=120)
    assert result.returncode == 2
    assert "empty" in result.stderr.strip().splitlines()[-1]
    assert "Config:" not in result.stderr  # the config dump comes after the data checks
    assert not model_dir.exists()
    assert not any(noise in result.stderr for noise in TF_NOISE)


def test_sigterm_stops_with_exit_3(synthetic_data_dir, tmp_path):
    model_dir = tmp_path / "run"
    process = start_cli(
        [sys.executable, os.path.join(ROOT, "train.py"), *TINY_FAST, f"--data_dir={synthetic_data_dir}",
         f"--model_dir={model_dir}", "--steps=100000", "--save_every=100000", "--eval_every=0",
         "--log_every=1"],
        cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    lines = []
    try:
        for line in process.stderr_lines(timeout=300):
            lines.append(line)
            # The first step's log line means the SIGTERM handler is installed.
            if "step 1/100000" in line:
                process.send_signal(signal.SIGTERM)
        process.wait()
    finally:
        process.kill()
    stderr = "".join(lines)
    assert process.returncode == 3, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert "stopped early by SIGTERM at step" in last and "of 100000" in last, last
    stopped_at = int(last.split("at step ")[1].split()[0])
    assert (model_dir / "checkpoints" / f"ckpt-{stopped_at}.index").exists()
    assert not (model_dir / "final.keras").exists()


def test_config_comparison_ignores_location_and_spelling(tmp_path):
    from cspsr_tf.train import run_config, run_dir

    data = tmp_path / "data"
    data.mkdir()
    run = tmp_path / "run"
    train, model = run_config.build_configs(
        dict(preset="tiny", model_dir=str(run), data_dir=str(data)), dict(scale=2)
    )
    run_dir.prepare_model_dir(train, model)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "config.json").write_text((run / "config.json").read_text())
    same = [
        dict(model_dir=f"{run}{os.sep}"),
        dict(model_dir=os.path.relpath(run)),
        dict(model_dir=str(moved)),  # a moved run
        dict(data_dir=f"{data}{os.sep}.{os.sep}"),
        dict(learning_rate=1e-5),  # the way out of a diverged run
    ]
    for change in same:
        run_dir.check_model_dir(train.__class__(**{**train.to_dict(), **change}), model)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(run_config.ConfigError, match="data_dir"):
        run_dir.check_model_dir(
            train.__class__(**{**train.to_dict(), "data_dir": str(other)}), model
        )


def test_a_run_with_the_guided_filter_matches_its_own_config_json(tmp_path):
    from cspsr_tf.train import run_config, run_dir

    train, model = run_config.build_configs(
        dict(preset="tiny", ablation="full_gf", model_dir=str(tmp_path / "run"),
             data_dir=str(tmp_path)),
        dict(scale=2),
    )
    run_dir.prepare_model_dir(train, model)
    run_dir.check_model_dir(train, model)  # the same run: no error
    with pytest.raises(run_config.ConfigError, match=r"nir_guided_filter_radius: 2 -> 3"):
        run_dir.check_model_dir(train, model.replace(nir_guided_filter_radius=3))
