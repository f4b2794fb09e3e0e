"""Tests of `predict --pairs`: many pairs of a pairs.csv in one run (issue 30, item 6)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cspsr_tf import predict  # noqa: E402
from cspsr_tf.model.model_io import save_model  # noqa: E402
from tests.cli_runner import run_cli  # noqa: E402
from tests.model_helpers import perturb_weights  # noqa: E402

SCALE = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSV = """rgb,nir,geometry
scene/a_rgb.png,scene/a_nir.png,stereo_rgb_left_nir_right
scene/b_rgb.png,scene/b_nir.png,aligned
scene/c_rgb.png,scene/c_nir_missing.png,
scene/d_rgb.png,scene/d_nir.png,
"""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny model whose weights are large enough (stddev 0.1) for the NIR, and so the rig,
    to move the 8-bit output by several levels."""
    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config

    keras.utils.set_random_seed(21)
    config = get_config("tiny", scale=SCALE)
    model = perturb_weights(build_cspsr(config), seed=21, stddev=0.1)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    save_model(model, config, path)
    return model, config, path


@pytest.fixture
def folder(tmp_path):
    """pairs.csv with 4 rows: a (stereo) and b (aligned) good, c's NIR missing, d's NIR one
    pixel wider than its RGB. Returns (csv path, {name: (vis, nir)})."""
    rng = np.random.default_rng(22)
    scene = tmp_path / "pairs" / "scene"
    scene.mkdir(parents=True)
    images = {}
    for name, (height, width) in {"a": (12, 17), "b": (15, 11), "c": (9, 9), "d": (10, 13)}.items():
        vis = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        nir = rng.integers(0, 256, (height, width + (name == "d")), dtype=np.uint8)
        cv2.imwrite(str(scene / f"{name}_rgb.png"), cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
        if name != "c":
            cv2.imwrite(str(scene / f"{name}_nir.png"), nir)
        images[name] = (vis, nir)
    csv_path = tmp_path / "pairs" / "pairs.csv"
    csv_path.write_text(CSV)
    return str(csv_path), images


def _expected(model, config, vis, nir, geometry):
    """The model itself on the pair (rebuilt for the registered rig when asked)."""
    from cspsr_tf.model.build import build_cspsr

    if geometry == "aligned":
        registered = build_cspsr(config.replace(geometry="aligned"))
        registered.set_weights(model.get_weights())
        model = registered
    outputs = model({"vis_lr": (vis / 255.0).astype(np.float32)[np.newaxis],
                     "nir_lr": (nir / 255.0).astype(np.float32)[np.newaxis, ..., np.newaxis]},
                    training=False)
    sr = np.clip(np.asarray(outputs["vis_sr"], np.float64)[0], 0, 1)
    return np.round(sr * 255).astype(np.uint8)


def _written(path):
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)[..., ::-1].astype(int)


def test_cli_writes_the_good_pairs_and_lists_the_bad_ones(model_file, folder, tmp_path):
    model, config, model_path = model_file
    csv_path, images = folder
    out_dir = tmp_path / "sr"
    proc = run_cli(
        [sys.executable, "-m", "cspsr_tf.predict", f"--model={model_path}",
         f"--pairs={csv_path}", f"--out_dir={out_dir}", "--precision=float32"],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
        text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert sorted(os.listdir(out_dir)) == ["a_rgb.png", "b_rgb.png"]
    # One progress line per pair, in the CSV's order.
    progress = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in progress] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert re.fullmatch(r"\[1/4\] scene/a_rgb.png -> .*a_rgb.png \(34x24, \d+\.\d s\)",
                        progress[0]), progress[0]
    assert progress[2].startswith("[3/4] scene/c_rgb.png: FAILED: nir ")
    assert progress[3].startswith("[4/4] scene/d_rgb.png: FAILED: size mismatch")
    # The summary names each bad pair, its line and why; the last line is the error.
    errors = proc.stderr.strip().splitlines()
    assert errors[-4] == "predict: 4 pairs: 2 written, 0 skipped (output exists), 2 failed"
    assert errors[-3].startswith("  line 4 (scene/c_rgb.png): nir ")
    assert "c_nir_missing.png: no such file" in errors[-3]
    assert errors[-2].startswith("  line 5 (scene/d_rgb.png): size mismatch: rgb ")
    assert "13x10" in errors[-2] and "14x10" in errors[-2]
    assert errors[-1] == "predict: error: 2 of 4 pairs failed (listed above)"
    assert "Traceback" not in proc.stderr
    # The outputs are the model's: a as a stereo pair, b (geometry `aligned`) as registered.
    a, b = images["a"], images["b"]
    assert np.abs(_written(str(out_dir / "a_rgb.png")) - _expected(model, config, *a, "stereo")).max() <= 1
    aligned = _expected(model, config, *b, "aligned")
    assert np.abs(_written(str(out_dir / "b_rgb.png")) - aligned).max() <= 1
    assert np.abs(aligned.astype(int) - _expected(model, config, *b, "stereo")).max() >= 2


def test_rerun_skips_existing_outputs_and_loads_one_model_per_rig(model_file, folder, tmp_path,
                                                                  monkeypatch):
    model, config, model_path = model_file
    csv_path, images = folder
    out_dir = tmp_path / "sr"
    out_dir.mkdir()
    (out_dir / "a_rgb.png").write_bytes(b"an earlier result")
    loads = []
    load = predict.load

    def counting(path, geometry=None, precision=None, ops=None):
        loads.append(geometry)
        return load(path, geometry, precision, ops)

    monkeypatch.setattr(predict, "load", counting)
    lines = []
    summary = predict.run_pairs(model_path, csv_path, str(out_dir), progress=lines.append)
    assert (summary["total"], summary["written"], summary["skipped"]) == (4, 1, 1)
    assert [row.line for row, _ in summary["failed"]] == [4, 5]
    assert "exists, skipped" in lines[0]
    assert (out_dir / "a_rgb.png").read_bytes() == b"an earlier result"
    # Rows: stereo, aligned, and twice the model's own (stereo): two loads, not four.
    assert sorted(loads, key=str) == [None, "aligned"]
    # With --overwrite the earlier result is replaced by the model's.
    summary = predict.run_pairs(model_path, csv_path, str(out_dir), overwrite=True,
                                progress=lines.append)
    assert (summary["written"], summary["skipped"], len(summary["failed"])) == (2, 0, 2)
    expected = _expected(model, config, *images["a"], "stereo")
    assert np.abs(_written(str(out_dir / "a_rgb.png")) - expected).max() <= 1


def test_signal_keeps_the_finished_pairs(model_file, folder, tmp_path):
    _, _, model_path = model_file
    csv_path, _ = folder
    out_dir = tmp_path / "sr"

    def stop_after_the_first(line):
        if "->" in line:
            raise predict.Interrupted(signal.SIGTERM)

    with pytest.raises(predict.Interrupted) as stopped:
        predict.run_pairs(model_path, csv_path, str(out_dir), progress=stop_after_the_first)
    assert stopped.value.done == 1 and stopped.value.exit_code == 143
    assert os.listdir(out_dir) == ["a_rgb.png"]


def test_output_name_clash_is_refused_up_front(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "pairs.csv").write_text("rgb,nir\none/x.png,one/y.png\n\ntwo/x.jpg,two/y.png\n")
    out_dir = tmp_path / "sr"
    with pytest.raises(predict.InputError) as raised:
        predict.run_pairs("any.keras", str(folder / "pairs.csv"), str(out_dir))
    message = str(raised.value)
    assert "lines 2 and 4 would both write" in message and "x.png" in message
    assert "\n" not in message and not out_dir.exists()


def test_output_that_would_replace_an_input_is_refused(tmp_path):
    (tmp_path / "pairs.csv").write_text("rgb,nir\nleft.png,right.png\n")
    with pytest.raises(predict.InputError, match=r"line 2: the output .*left.png would replace "
                       r"an input of line 2; use another --out_dir"):
        predict.run_pairs("any.keras", str(tmp_path / "pairs.csv"), str(tmp_path))


@pytest.mark.parametrize("text, match", [
    ("left,right\na.png,b.png\n", r"needs the columns rgb and nir .*found: left,right"),
    ("rgb,nir\n", "lists no pair"),
    ("rgb,nir\na.png,\n", "line 2: both rgb and nir must be given"),
    ("rgb,nir,geometry\na.png,b.png,nir_left\n", r"line 2: unknown geometry 'nir_left'"),
], ids=["columns", "empty", "half-row", "geometry"])
def test_bad_csv_is_one_line(tmp_path, text, match):
    (tmp_path / "pairs.csv").write_text(text)
    with pytest.raises(predict.InputError, match=match):
        predict.read_pairs(str(tmp_path / "pairs.csv"), str(tmp_path / "sr"))


def test_pairs_and_single_pair_flags_do_not_mix(tmp_path, capsys):
    def main(*args):
        predict.FLAGS.unparse_flags()
        predict.FLAGS(["predict", *args])
        try:
            with pytest.raises(SystemExit) as exited:
                predict.main(["predict"])
        finally:
            predict.FLAGS.unparse_flags()
        return exited.value.code, capsys.readouterr().err.strip().splitlines()

    csv_path = str(tmp_path / "pairs.csv")
    code, lines = main("--model=m.keras", f"--pairs={csv_path}", "--out_dir=sr", "--out=x.png")
    assert code == 2 and lines == ["predict: error: --pairs runs every pair of the CSV into "
                                   "--out_dir: --out cannot be given with it"]
    code, lines = main("--model=m.keras", f"--pairs={csv_path}")
    assert code == 2 and lines == ["predict: error: --out_dir is required with --pairs"]
    code, lines = main("--model=m.keras", "--vis=a.png", "--nir=b.png", "--out=c.png",
                       "--out_dir=sr")
    assert code == 2 and lines == ["predict: error: --out_dir goes with --pairs; for one pair "
                                   "give --out"]
