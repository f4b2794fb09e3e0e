"""train.py end to end, resume after SIGKILL, distribution strategies, bad inputs."""

import json
import os
import re
import signal
import socket
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from cspsr_tf.model.build import build_cspsr_with_training_twin
from cspsr_tf.model.configs import get_config
from tests.cli_runner import run_cli, start_cli
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


def run_train(args, timeout=300, env=None, fresh_interpreter=False):
    return run_cli(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        fresh_interpreter=fresh_interpreter,
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
    process = start_cli(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
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
    import json, os, sys
    sys.path.insert(0, os.getcwd())  # run from the repository root
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
    result = run_cli(
        [sys.executable, str(script), synthetic_data_dir, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
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
            start_cli(
                [sys.executable, os.path.join(ROOT, "train.py"), *args],
                cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": tf_config},
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


def test_cvm_pretraining_schedule_and_cvm_options_are_checked():
    from cspsr_tf.train import run_config, stages

    train, model = run_config.build_configs(
        dict(cvm_lr_schedule="cosine", cvm_steps=40, cvm_learning_rate=1e-3),
        dict(cvm_normalization="none"),
    )
    assert model.cvm_normalization == "none"
    pretrain = run_config.cvm_pretraining_config(train)
    assert (pretrain.stage, pretrain.steps, pretrain.lr_schedule) == ("cvm", 40, "cosine")
    schedule = stages.learning_rate_schedule(pretrain)
    # Cosine decay from 1e-3 to 1% of it over the 40 pre-training steps.
    np.testing.assert_allclose(float(schedule(0)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(20)), 1e-3 * (0.01 + 0.99 * 0.5), rtol=1e-5)
    np.testing.assert_allclose(float(schedule(40)), 1e-5, rtol=1e-5)
    with pytest.raises(run_config.ConfigError, match="cvm_lr_schedule"):
        run_config.validate_configs(*run_config.build_configs(dict(cvm_lr_schedule="step"), {}))
    with pytest.raises(run_config.ConfigError, match="cvm_normalization"):
        run_config.build_configs({}, dict(cvm_normalization="layer"))


def test_configs_of_the_retired_batch_norm_cvm_fail_in_one_line():
    # A config.json written before cvm_normalization existed describes a batch-norm CVM, which
    # was retired: loading it names the field; a config without a CVM still loads.
    from cspsr_tf.model.configs import CSPSRConfig, get_config
    from cspsr_tf.train import run_config, run_dir

    old = get_config("small").to_dict()
    del old["cvm_normalization"]
    with pytest.raises(ValueError, match=r"^cvm_normalization='batch' was retired") as error:
        CSPSRConfig.from_dict(old)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="was retired"):
        CSPSRConfig.from_dict({**old, "cvm_normalization": "batch"})
    baseline = get_config("small", "baseline").to_dict()
    del baseline["cvm_normalization"]
    assert CSPSRConfig.from_dict(baseline).cvm_normalization == "group"
    with pytest.raises(run_config.ConfigError, match="cvm_normalization"):
        run_config.build_configs({}, dict(cvm_normalization="batch"))
    # An old run's config differs from today's in that field, so resuming it is refused.
    train, model = run_config.build_configs({}, {})
    old_run = {"train": train.to_dict(), "model": old}
    differences = run_dir._config_differences(
        old_run, {"train": train.to_dict(), "model": model.to_dict()})
    assert differences == ["cvm_normalization: None -> 'group'"]


def test_cvm_stage_recorded_before_the_auto_patch_compares_as_its_sr_patch():
    # A --stage=cvm run recorded cvm_patch_size=None when None meant "the SR patch"; now the
    # stage records the size it resolved, so the old record reads as that patch size.
    from cspsr_tf.train import run_config, run_dir

    train, model = run_config.build_configs(dict(stage="cvm", patch_size=96), {})
    old = {"train": {**train.to_dict(), "cvm_patch_size": None}, "model": model.to_dict()}

    def differences(size):
        new = {"train": {**train.to_dict(), "cvm_patch_size": size}, "model": model.to_dict()}
        return run_dir._config_differences(old, new)

    assert differences(96) == []
    assert differences(192) == ["cvm_patch_size: 96 -> 192"]
    sr_old = {"train": {**old["train"], "stage": "sr"}, "model": model.to_dict()}
    sr_new = {"train": {**train.to_dict(), "stage": "sr"}, "model": model.to_dict()}
    assert run_dir._config_differences(sr_old, sr_new) == []  # an SR run keeps None


def test_optional_integer_fields_get_integer_flags():
    # --cvm_patch_size (int | None) used to be a string flag: "--cvm_patch_size=192" then
    # failed in validate_configs with a TypeError.
    import functools
    import types

    from absl import flags as absl_flags

    from cspsr_tf.train import run_config
    from cspsr_tf.util.cli import define_dataclass_flags

    values = absl_flags.FlagValues()
    # The absl module's DEFINE_* functions, bound to a fresh FlagValues.
    module = types.SimpleNamespace(**{
        name: functools.partial(getattr(absl_flags, name), flag_values=values)
        for name in ("DEFINE_bool", "DEFINE_integer", "DEFINE_float", "DEFINE_string")
    })
    define_dataclass_flags(module, run_config.train_config_fields(), {})
    values(["train.py", "--cvm_patch_size=192", "--cvm_init=runs/x", "--synthetic_max_disparity=6.5"])
    assert values.cvm_patch_size == 192 and values.cvm_init == "runs/x"
    assert values.synthetic_max_disparity == 6.5  # float | None: a float flag
    with pytest.raises(absl_flags.IllegalFlagValueError):
        values(["train.py", "--cvm_patch_size=big"])
    train, model = run_config.build_configs(dict(cvm_patch_size=values.cvm_patch_size), {})
    run_config.validate_configs(train, model)


def test_cvm_recipe_defaults_freeze_and_full_synthetic_range():
    """The SR stage keeps the pre-trained CVM fixed by default, the synthetic disparities of the
    CVM stage span the model's whole search range, and a model without a CVM trains with the
    same defaults."""
    from cspsr_tf.train import run_config

    train, model = run_config.build_configs({}, dict(max_disparity=12.0))
    assert train.freeze_cvm is True and train.synthetic_max_disparity is None
    assert run_config.synthetic_disparity_bound(train, model) == 12.0
    explicit = run_config.build_configs(dict(synthetic_max_disparity=5.0), {})[0]
    assert run_config.synthetic_disparity_bound(explicit, model) == 5.0
    baseline_train, baseline = run_config.build_configs(dict(ablation="baseline"), {})
    run_config.validate_configs(baseline_train, baseline)  # freeze_cvm is moot without a CVM
    with pytest.raises(run_config.ConfigError, match="--cvm_init needs a model with a CVM"):
        run_config.validate_configs(*run_config.build_configs(dict(ablation="baseline", cvm_init="x"), {}))
    with pytest.raises(run_config.ConfigError, match="synthetic_max_disparity"):
        run_config.validate_configs(*run_config.build_configs(dict(synthetic_max_disparity=-1.0), {}))


def test_degradation_is_checked_before_anything_is_written():
    from cspsr_tf.train import run_config

    run_config.validate_configs(*run_config.build_configs(dict(degradation="low_light:gain=0.1"), {}))
    for bad, message in [("fog", "Unknown degradation 'fog'"),
                         ("low_light:gain=-1", "gain must be > 0"),
                         ("low_light:gain", "expected name:key=value")]:
        with pytest.raises(run_config.ConfigError, match=rf"^--degradation={bad}: .*{message}"):
            run_config.validate_configs(*run_config.build_configs(dict(degradation=bad), {}))


def test_a_run_that_ends_below_bicubic_says_so(tmp_path):
    from cspsr_tf.train import run_dir

    assert run_dir.last_validation(str(tmp_path)) is None
    assert run_dir.below_bicubic_message(None) is None
    records = [{"step": 100, "model/standard/psnr": 30.0, "bicubic/standard/psnr": 29.0},
               {"step": 200, "model/standard/psnr": 38.39, "bicubic/standard/psnr": 39.41}]
    with open(tmp_path / run_dir.METRICS_FILE, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    last = run_dir.last_validation(str(tmp_path))
    assert last["step"] == 200
    message = run_dir.below_bicubic_message(last)
    assert "BELOW bicubic" in message and "38.39 dB against 39.41 dB" in message
    assert "step 200" in message and "\n" not in message
    assert run_dir.below_bicubic_message(records[0]) is None


@pytest.mark.parametrize("overrides, message", [
    (dict(dynamic_conv_implementation="xla"),
     "--dynamic_conv_implementation='xla' is not one of: fused, shift, patches"),
    (dict(kernel_normalization="foo"), "--kernel_normalization='foo' is not one of: softmax, none"),
    (dict(scale=5), "--scale=5 is not one of: 2, 3, 4, 8"),
    (dict(geometry="left"), "--geometry='left' is not one of: stereo, aligned"),
    (dict(channels=0), "--channels must be >= 1, got 0"),
    (dict(max_disparity=1.5), "--max_disparity must be >= 2, got 1.5"),
    (dict(kernel_size=4), "--kernel_size must be odd, got 4"),
    (dict(fusion="add"), "--fusion='add' is not one of: dmf, zero_conv"),
    (dict(skip_source="guided_filter"), "model config of --preset=small --ablation=full: "
     "skip_source='guided_filter' needs nir_guided_filter_radius"),
])
def test_model_config_values_are_checked_naming_the_flag(overrides, message):
    # Checked in build_configs, before anything loads; dynamic_conv_implementation,
    # kernel_normalization and max_disparity used to fail only when the layers were built.
    from cspsr_tf.train import run_config

    with pytest.raises(run_config.ConfigError) as info:
        run_config.build_configs({}, overrides)
    assert str(info.value) == message


def test_output_folders_that_are_files_are_refused_up_front(tmp_path):
    from cspsr_tf.train import run_config

    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    for name in ("model_dir", "data_dir"):
        train, model = run_config.build_configs({name: str(a_file / "sub")}, {})
        with pytest.raises(run_config.ConfigError) as info:
            run_config.validate_configs(train, model)
        assert str(info.value) == f"--{name}={a_file / 'sub'}: {a_file} is a file, not a folder"


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
    result = run_cli(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, umask=UMASK,
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
    again = run_cli(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, umask=UMASK,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Pre-training the CVM" not in again.stderr
