"""evaluate.py as a user runs it: tables with bicubic beside the model, checked independently."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from skimage.metrics import peak_signal_noise_ratio

from cspsr_tf.model import model_io
from tests.cli_runner import run_cli
from tests.conftest import ROOT
from tests.model_helpers import tiny_perturbed_model


def run_evaluate(args):
    # float32 unless a test asks otherwise (the default, auto, is bfloat16 on some CPUs).
    if not any(arg.startswith("--precision") for arg in args):
        args = [*args, "--precision=float32"]
    return run_cli(
        [sys.executable, os.path.join(ROOT, "evaluate.py"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    # Perturbed weights: an untrained model's output is exactly bicubic, which would hide a
    # lost network body.
    model, config = tiny_perturbed_model(scale=2)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    model_io.save_model(model, config, path)
    return path


def independent_bicubic_psnr(data_dir, scale):
    """First test frame: crop to a multiple of the scale, bicubic down (antialiased) and up,
    8-bit rounding, BT.601 Y, `scale` pixels shaved, scikit-image PSNR."""
    import tensorflow_datasets as tfds

    import datasets.nirvis_synthetic  # noqa: F401  (registers the builder)

    example = next(iter(tfds.load("nirvis_synthetic", split="test", data_dir=data_dir,
                                  shuffle_files=False)))
    hr = example["vis"].numpy()
    h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
    hr = hr[:h, :w].astype(np.float32) / 255.0
    lr = tf.clip_by_value(
        tf.image.resize(hr, (h // scale, w // scale), "bicubic", antialias=True), 0, 1
    )
    up = tf.clip_by_value(tf.image.resize(lr, (h, w), "bicubic"), 0, 1).numpy()
    up8 = np.round(up * 255.0)
    hr8 = np.round(hr * 255.0)

    def y(img):
        return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0

    s = scale
    return peak_signal_noise_ratio(y(hr8)[s:-s, s:-s], y(up8)[s:-s, s:-s], data_range=255)


def test_evaluate_writes_tables_with_an_independently_checked_bicubic(
    synthetic_data_dir, tiny_model_path, tmp_path
):
    out = tmp_path / "eval"
    result = run_evaluate([f"--model={tiny_model_path}", f"--data_dir={synthetic_data_dir}",
                           "--split=test", "--max_frames=1", f"--out_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    folder = out / "nirvis_synthetic_test"
    results = json.loads((folder / "results.json").read_text())
    frame = results["frames"][0]
    assert set(frame) >= {"model", "bicubic"}
    expected = independent_bicubic_psnr(synthetic_data_dir, 2)
    assert frame["bicubic"]["standard"]["psnr"] == pytest.approx(expected, abs=1e-4)
    assert abs(frame["model"]["standard"]["psnr"] - expected) > 0.01  # the model ran
    table = (folder / "results.md").read_text()
    assert "Bicubic" in table and "tiny.keras" in table
    assert (out / "summary.md").exists()
    assert list((folder / "figures").glob("*.png")) and list((folder / "sr").glob("*.png"))
    # The synthetic set carries ground-truth disparity, so the disparity error is reported.
    assert frame["disparity"]["epe"] >= 0


def test_evaluate_bad_inputs_exit_2(synthetic_data_dir, tiny_model_path, tmp_path):
    import keras

    other = str(tmp_path / "classifier.keras")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(other)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(open(tiny_model_path, "rb").read()[:1000])
    cases = [
        ([f"--model={tmp_path / 'missing.keras'}"], "missing.keras"),
        ([f"--model={other}"], "is not a CSPSR model"),
        ([f"--model={corrupt}"], "not a valid .keras file"),
        ([f"--model={tiny_model_path}", "--dataset=imagenet"], "unknown dataset"),
        # A bad split after a good one: checked before anything is evaluated or written.
        ([f"--model={tiny_model_path}", "--split=test,validation"], "no split"),
        ([f"--model={tiny_model_path}", "--precision=float64"],
         "--precision='float64' is not one of: float32, bfloat16, float16, auto"),
        ([f"--model={tiny_model_path}", "--degradation=low_light:gain=-1"],
         "--degradation=low_light:gain=-1: low_light: gain must be > 0"),
    ]
    for args, message in cases:
        out = tmp_path / "o"
        result = run_evaluate([*args, f"--data_dir={synthetic_data_dir}", f"--out_dir={out}"])
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in result.stderr.strip().splitlines()[-1]
        assert "Traceback" not in result.stderr
        assert not out.exists(), (args, sorted(str(p) for p in out.rglob("*")))


def test_evaluate_bad_output_settings_exit_2_and_make_no_folder(
    synthetic_data_dir, tiny_model_path, tmp_path
):
    # Issue 30: --out_dir under a file was a NotADirectoryError traceback (exit 1); a bad --tile
    # or --max_frames left an empty <out_dir>/nirvis_synthetic_test/ behind.
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    out = tmp_path / "o"
    cases = [
        (a_file / "results", f"--out_dir={a_file / 'results'}: {a_file} is a file, not a folder",
         []),
        (out, "--tile must be >= 1 (LR pixels), got 0", ["--tile=0"]),
        (out, "--max_frames must be >= 1, got 0", ["--max_frames=0"]),
    ]
    for out_dir, message, args in cases:
        result = run_evaluate([f"--model={tiny_model_path}", f"--data_dir={synthetic_data_dir}",
                               f"--out_dir={out_dir}", *args])
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert result.stderr.strip().splitlines() == [f"evaluate.py: error: {message}"], args
        assert sorted(os.listdir(tmp_path)) == ["a_file"], args
    assert a_file.read_text() == "keep"


def test_evaluate_dataset_checks_max_frames_before_making_out_dir(tiny_model_path, tmp_path):
    from cspsr_tf.evaluate import evaluation

    model, config = model_io.load_model(tiny_model_path)
    with pytest.raises(ValueError, match="max_frames must be >= 1"):
        evaluation.evaluate_dataset(model, config, [], scale=2, out_dir=str(tmp_path / "x"),
                                    max_frames=0)
    assert os.listdir(tmp_path) == []


def test_evaluate_an_exported_savedmodel_gives_the_keras_numbers(
    synthetic_data_dir, tiny_model_path, tmp_path
):
    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.evaluate import evaluation
    from cspsr_tf.export import savedmodel_export

    model, config = model_io.load_model(tiny_model_path)  # perturbed weights
    saved = savedmodel_export.export_savedmodel(model, config, str(tmp_path / "exported"))
    out = tmp_path / "savedmodel"
    result = run_evaluate([f"--model={saved}", f"--data_dir={synthetic_data_dir}",
                           "--max_frames=1", "--save_images=false", f"--out_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    saved_mean = json.loads((out / "nirvis_synthetic_test" / "results.json").read_text())["mean"]
    # The Keras model's numbers, in float32 as exported, in this process.
    raw = sources.load_split("nirvis_synthetic", "test", synthetic_data_dir)
    keras_mean = evaluation.evaluate_dataset(
        model, config, pipeline.make_eval_dataset(raw, scale=2), scale=2, max_frames=1)["mean"]
    assert keras_mean["model"]["standard"]["psnr"] != keras_mean["bicubic"]["standard"]["psnr"]
    assert saved_mean["model"]["standard"]["psnr"] == pytest.approx(
        keras_mean["model"]["standard"]["psnr"], abs=1e-3
    )


def test_evaluate_in_bfloat16_gives_the_float32_numbers(synthetic_data_dir, tiny_model_path, tmp_path):
    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.evaluate import evaluation

    out = tmp_path / "bf16"
    result = run_evaluate([f"--model={tiny_model_path}", f"--data_dir={synthetic_data_dir}",
                           "--max_frames=1", "--save_images=false", "--precision=bfloat16",
                           f"--out_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    low = json.loads((out / "nirvis_synthetic_test" / "results.json").read_text())
    assert low["precision"] == "bfloat16"
    model, config = model_io.load_model(tiny_model_path)
    raw = sources.load_split("nirvis_synthetic", "test", synthetic_data_dir)
    full = evaluation.evaluate_dataset(model, config, pipeline.make_eval_dataset(raw, scale=2),
                                       scale=2, max_frames=1)
    assert full["precision"] == "float32"
    psnr = {name: r["mean"]["model"]["standard"]["psnr"] for name, r in (("bf16", low), ("fp32", full))}
    assert psnr["bf16"] == pytest.approx(psnr["fp32"], abs=0.05)
