"""train.py end to end, resume after SIGKILL, distribution strategies, bad inputs."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from cspsr_tf.model.build import build_cspsr_with_training_twin
from cspsr_tf.model.configs import get_config
from tests.conftest import ROOT

TINY = [
    "--dataset=nirvis_synthetic",
    "--preset=tiny",
    "--scale=2",
    "--batch_size=2",
    "--patch_size=32",
    "--val_frames=1",
    "--val_crop=64",
    "--cvm_steps=0",  # the CVM pre-training has tests of its own
]
# For the tests of the run machinery (resume, divergence, signals), which no model part
# changes: the VIS-only baseline traces and starts in about half the time of the full model.
# The full model's runs are the short end-to-end run, --cvm_init, the precisions and the
# distribution strategies.
TINY_FAST = [*TINY, "--ablation=baseline"]


def run_train(args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def summary_of(output):
    # The last one: a run that pre-trains its CVM logs that phase's summary first.
    matches = re.findall(r"Training summary: (\{.*\})", output)
    assert matches, output[-3000:]
    return json.loads(matches[-1])


def test_resume_after_sigkill(synthetic_data_dir, tmp_path):
    model_dir = tmp_path / "run"
    args = [*TINY_FAST, f"--data_dir={synthetic_data_dir}", f"--model_dir={model_dir}",
            "--steps=30", "--save_every=5", "--eval_every=0"]
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    state = model_dir / "checkpoints" / "checkpoint"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists(), "no checkpoint was written before the deadline"
    reached = int(re.search(r"ckpt-(\d+)", state.read_text()).group(1))
    assert 5 <= reached < 30

    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {reached}" in result.stderr  # "Resumed from ... at step N"
    assert summary_of(result.stderr)["step"] == 30


def test_bad_inputs_exit_2_with_one_line(synthetic_data_dir, tmp_path):
    base = [f"--data_dir={synthetic_data_dir}", "--steps=1", "--preset=tiny"]
    empty_manual = tmp_path / "empty"
    empty_manual.mkdir()
    cases = [
        (["--dataset=imagenet", f"--model_dir={tmp_path / 'a'}"], "--dataset='imagenet' is not one of"),
        (["--scale=5", f"--model_dir={tmp_path / 'b'}"], "scale"),
        (["--scale=4", "--patch_size=30", f"--model_dir={tmp_path / 'c'}"], "patch_size"),
        (["--dataset=nirvis_folder", f"--manual_dir={empty_manual}", f"--data_dir={tmp_path / 'd'}",
          f"--model_dir={tmp_path / 'e'}"], "empty"),
    ]
    for args, message in cases:
        result = run_train([*base, *args], timeout=120)
        if "nirvis_folder" in args[0]:  # the expected layout is printed above the error line
            assert "pairs.csv" in result.stderr
        assert result.returncode == 2, (args, result.stderr[-2000:])
        last = result.stderr.strip().splitlines()[-1]
        assert message in last, (args, last)
    # The failed build of nirvis_folder left no empty TFDS skeleton in its --data_dir.
    assert not (tmp_path / "d").exists()

    # One line and nothing else (issue 30): a file as --model_dir (was FileExistsError after
    # loading the data), a model-config value only the layers checked (was a ValueError from
    # the layer, after loading the data).
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    cases = [
        ([f"--model_dir={a_file}"], f"--model_dir={a_file}: {a_file} is a file, not a folder"),
        ([f"--model_dir={tmp_path / 'f'}", "--kernel_normalization=foo"],
         "--kernel_normalization='foo' is not one of: softmax, none"),
    ]
    for args, message in cases:
        result = run_train([*base, *args], timeout=120)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert result.stderr.strip().splitlines() == [f"train.py: error: {message}"], args
    assert a_file.read_text() == "keep" and not (tmp_path / "f").exists()

    # A model_dir holding a run with another config.
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"train": {}, "model": {"scale": 4}}))
    result = run_train([*TINY, *base, f"--model_dir={model_dir}"], timeout=120)
    assert result.returncode == 2
    assert "different config" in result.stderr.strip().splitlines()[-1]


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from cspsr_tf.train import loop, run_dir, stages, run_config
    from cspsr_tf.model import model_io
    data_dir, out = sys.argv[1], sys.argv[2]
    results = {}
    for name, strategy in [
        ("single", tf.distribute.OneDeviceStrategy("/cpu:0")),
        ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    ]:
        train, model = run_config.build_configs(
            dict(dataset="nirvis_synthetic", data_dir=data_dir, preset="tiny", steps=1,
                 batch_size=4, patch_size=32, eval_every=0, model_dir=f"{out}/{name}",
                 random_downscale=False, cvm_steps=0),
            dict(scale=2),
        )
        summary = loop.run_training(train, model, strategy=strategy)
        loaded, _ = model_io.load_model(f"{out}/{name}/final.keras")
        np.savez(f"{out}/{name}.npz", *[w.numpy() for w in loaded.weights])
        results[name] = summary["losses"]
    print("RESULT " + json.dumps(results))
    """
)


def test_mirrored_on_two_cpu_devices_matches_one_device(synthetic_data_dir, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), synthetic_data_dir, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.split("RESULT ", 1)[1])
    for name in ("total", "vis_mse", "cssc"):
        assert losses["mirrored"][name] == pytest.approx(losses["single"][name], rel=1e-5, abs=1e-7)
    single = np.load(tmp_path / "single.npz")
    mirrored = np.load(tmp_path / "mirrored.npz")
    assert len(single.files) == len(mirrored.files) > 10
    for key in single.files:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-4, atol=1e-6)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_processes_agree(synthetic_data_dir, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    args = [*TINY, f"--data_dir={synthetic_data_dir}", f"--model_dir={tmp_path / 'run'}",
            "--steps=2", "--batch_size=4", "--eval_every=0", "--strategy=multi_worker"]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(
            subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "train.py"), *args],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": tf_config},
            )
        )
    outputs = []
    for process in processes:
        try:
            _, err = process.communicate(timeout=300)
        finally:
            process.kill()
        assert process.returncode == 0, err[-3000:]
        outputs.append(summary_of(err))
    assert outputs[0]["step"] == outputs[1]["step"] == 2
    assert outputs[0]["weights_checksum"] == pytest.approx(outputs[1]["weights_checksum"], rel=1e-9)
    assert (tmp_path / "run" / "final.keras").exists()
    assert not list((tmp_path / "run").glob(".worker_*_scratch"))


@pytest.mark.parametrize("flags", [dict(mixed_precision=True), dict(precision="bfloat16")],
                         ids=["mixed_precision", "bfloat16"])
def test_two_steps_in_low_precision(synthetic_data_dir, tmp_path, flags):
    """Two steps of the full model in float16 (--mixed_precision) or bfloat16, in this process
    (train.py's own code path from its flags' values; the CLI's start-up is tested above)."""
    from cspsr_tf.model import model_io
    from cspsr_tf.model.precision import model_precision
    from cspsr_tf.train import loop, run_config

    model_dir = tmp_path / "run"
    train, model = run_config.build_configs(
        dict(dataset="nirvis_synthetic", data_dir=synthetic_data_dir, preset="tiny",
             batch_size=2, patch_size=32, cvm_steps=0, eval_every=0, steps=2,
             model_dir=str(model_dir), **flags),
        dict(scale=2),
    )
    summary = loop.run_training(train, model)
    assert summary["step"] == 2
    assert all(np.isfinite(v) for v in summary["losses"].values())
    recorded = json.loads((model_dir / "config.json").read_text())["train"]
    assert recorded["precision"] == ("float16" if "mixed_precision" in flags else "bfloat16")
    final, _ = model_io.load_model(str(model_dir / "final.keras"))
    assert model_precision(final) == "float32"  # files hold float32; precision is chosen at run time


def test_disagreeing_mixed_precision_is_one_line(tmp_path):
    bad = run_train([*TINY, "--steps=2", "--mixed_precision", "--precision=bfloat16",
                     f"--model_dir={tmp_path / 'bad'}"])
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "train.py: error: --mixed_precision (float16) disagrees with --precision=bfloat16; "
        "use --precision alone"
    )
    assert not (tmp_path / "bad").exists()


# A short run as a user sees it (issue 30): few lines, the progress and the last line kept; its
# folders follow the umask (TensorFlow made checkpoints/ and tensorboard/ 0755 whatever it was).
SHORT_RUN_MAX_LINES = 30
UMASK = 0o002  # group-writable: TensorFlow's 0755 differs from 0777 minus this umask


@pytest.fixture(scope="module")
def short_run(synthetic_data_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("short") / "run"
    args = [*[a for a in TINY if not a.startswith("--cvm_steps")], f"--data_dir={synthetic_data_dir}",
            f"--model_dir={model_dir}", "--steps=4", "--cvm_steps=2", "--eval_every=2",
            "--log_every=2", "--save_every=2"]
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, preexec_fn=lambda: os.umask(UMASK),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result, args


def test_a_short_run_end_to_end(short_run, synthetic_data_dir, subtests, tmp_path):
    """One short run (2 CVM steps, then 4 SR steps), checked as a user sees it. The checks
    share the run: under pytest-xdist a module fixture runs once per worker, and this run is
    one of the suite's slowest steps."""
    with subtests.test("writes every output, and its checkpoint loads as the final model"):
        check_outputs(short_run)
    with subtests.test("prints few lines"):
        check_few_lines(short_run)
    with subtests.test("folders and files follow the umask"):
        check_umask(short_run)
    with subtests.test("pre-trains the CVM before the SR stage, and a rerun resumes"):
        check_default_recipe(short_run, synthetic_data_dir)
    with subtests.test("--cvm_init starts an SR run from a CVM stage's weights, kept fixed"):
        check_cvm_init(short_run, synthetic_data_dir, tmp_path)


def check_cvm_init(short_run, synthetic_data_dir, tmp_path):
    # The short run's pre-training is a --stage=cvm run of its own (in cvm_pretrain/).
    run, result, _ = short_run
    cvm_dir = run / "cvm_pretrain"
    phases = re.findall(r"Training summary: (\{.*\})", result.stderr)
    losses = json.loads(phases[0])["losses"]  # the CVM stage's summary comes first
    assert set(losses) == {"total", "photometric", "smoothness", "consistency", "supervised"}
    assert losses["supervised"] > 0  # nirvis_synthetic knows its disparities
    assert json.loads((cvm_dir / "config.json").read_text())["train"]["stage"] == "cvm"
    assert (cvm_dir / "cvm" / "cvm.index").exists()

    sr_dir = tmp_path / "sr_stage"
    result = run_train([*TINY, f"--data_dir={synthetic_data_dir}", "--eval_every=0",
                        "--save_every=2", "--steps=2", f"--cvm_init={cvm_dir}", "--freeze_cvm",
                        f"--model_dir={sr_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CVM initialised from" in result.stderr

    # The CVM weights of the SR run are those of the CVM stage (frozen, so unchanged).
    from cspsr_tf.model import model_io

    pre, _ = model_io.load_model(str(cvm_dir / "final.keras"))
    post, _ = model_io.load_model(str(sr_dir / "final.keras"))
    pre_cvm, post_cvm = pre.get_layer("cvm"), post.get_layer("cvm")
    assert len(pre_cvm.weights) == len(post_cvm.weights) > 0
    for a, b in zip(pre_cvm.weights, post_cvm.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def check_outputs(short_run):
    model_dir, result, _ = short_run
    assert summary_of(result.stderr)["step"] == 4
    for name in ("config.json", "final.keras", "best.keras", "metrics.jsonl", "checkpoints/checkpoint"):
        assert (model_dir / name).exists(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["scale"] == 2 and config["train"]["steps"] == 4
    assert any((model_dir / "tensorboard").iterdir())
    validation = json.loads((model_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert validation["step"] == 4 and "bicubic/standard/psnr" in validation
    # The checkpoint holds every weight: the training directory loads as the final model.
    from cspsr_tf.model import model_io

    from_checkpoint, config = model_io.load_model(str(model_dir))
    final, _ = model_io.load_model(str(model_dir / "final.keras"))
    assert config.scale == 2
    assert len(from_checkpoint.weights) == len(final.weights)
    for a, b in zip(from_checkpoint.weights, final.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # No TensorFlow start-up noise on the console.
    assert "cuda" not in result.stderr.lower()


def check_few_lines(short_run):
    model_dir, result, _ = short_run
    lines = result.stderr.strip().splitlines()
    # Before: over 150, the whole config dumped twice (SR run and CVM pre-training, 69 lines
    # each) and TFDS's FeatureConnector.dtype notice several times.
    assert len(lines) < SHORT_RUN_MAX_LINES, "\n".join(lines)
    assert not any('"train": {' in line or "FeatureConnector.dtype" in line for line in lines)
    text = result.stderr
    assert f"config in {model_dir / 'config.json'}" in text  # the config is named, not dumped
    assert "step 2/2: total=" in text  # the CVM pre-training's progress
    assert "step 2/4: total=" in text and "step 4/4: total=" in text
    assert re.search(r"step 4 validation: PSNR [\d.]+ dB \(bicubic [\d.]+\)", text)
    assert result.stdout.strip().splitlines()[-1].startswith(
        f"Trained to step 4; outputs in {model_dir}")


def check_umask(short_run):
    model_dir, _, _ = short_run
    folders, files = [str(model_dir)], []
    for folder, subfolders, names in os.walk(model_dir):
        folders += [os.path.join(folder, name) for name in subfolders]
        files += [os.path.join(folder, name) for name in names]
    names = {os.path.relpath(path, model_dir) for path in folders}
    assert names >= {"checkpoints", "tensorboard", "cvm_pretrain", "cvm_pretrain/checkpoints",
                     "cvm_pretrain/cvm"}
    for path in folders:
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o777 & ~UMASK), path
    assert any(path.endswith(".keras") for path in files)
    for path in files:
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~UMASK), path


def check_default_recipe(short_run, synthetic_data_dir):
    # --cvm_steps runs a --stage=cvm run in <model_dir>/cvm_pretrain first and starts the SR
    # stage from its CVM (kept fixed by default, so the final CVM must equal the pre-trained
    # one). The run is the module's short run (4 SR steps after 2 CVM steps).
    run, result, args = short_run
    summary = summary_of(result.stderr)
    assert summary["step"] == 4 and summary["cvm_pretraining"]["step"] == 2
    assert (run / "cvm_pretrain" / "cvm" / "cvm.index").exists()
    # No --cvm_patch_size: the pre-training used the largest multiple of the scale (2) that
    # every training frame holds (below the 192 px cap here), recorded resolved.
    from cspsr_tf.data import sources

    frames = sources.load_split("nirvis_synthetic", "train", synthetic_data_dir)
    smallest = min(min(ex[key].shape[:2]) for ex in frames for key in ("vis", "nir"))
    assert smallest < 192
    recorded = json.loads((run / "cvm_pretrain" / "config.json").read_text())["train"]
    assert recorded["cvm_patch_size"] == smallest // 2 * 2
    assert json.loads((run / "config.json").read_text())["train"]["cvm_patch_size"] is None
    from cspsr_tf.model import model_io

    pre, _ = model_io.load_model(str(run / "cvm_pretrain" / "final.keras"))
    post, _ = model_io.load_model(str(run / "final.keras"))
    keras.utils.set_random_seed(0)  # as train.py does before building (--seed=0)
    fresh = build_cspsr_with_training_twin(get_config("tiny", scale=2))[0].get_layer("cvm")
    moved = False
    for a, b, c in zip(pre.get_layer("cvm").weights, post.get_layer("cvm").weights, fresh.weights,
                       strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        moved = moved or not np.array_equal(a.numpy(), c.numpy())
    assert moved  # the pre-training trained the CVM from its seeded initial weights
    # Running the same command again resumes past both phases (same umask: the run's file
    # modes are checked above).
    again = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, preexec_fn=lambda: os.umask(UMASK),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Pre-training the CVM" not in again.stderr
