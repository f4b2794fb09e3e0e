"""The shipped presets: files, cards, loading, a forward pass, and the zoo table's agreement."""

import hashlib
import json
import os
import re
import sys

import numpy as np
import pytest

from cspsr_tf import presets

# One xdist worker runs this module (make test: --dist loadgroup), so its module fixtures
# (models, exports) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("test_presets")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_WEIGHTS_BYTES = 5 * 2**20


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_has_its_files_and_its_card_names_the_weights_hash(name):
    folder = presets.preset_dir(name)
    weights = presets.weights_path(name)
    assert os.path.isfile(weights) and os.path.getsize(weights) < MAX_WEIGHTS_BYTES
    assert os.path.isfile(weights + ".config.json")
    with open(os.path.join(folder, presets.CARD_FILE)) as f:
        card = f.read()
    hashes = re.findall(r"SHA-256[^`]*`([0-9a-f]{64})`", card)
    assert hashes == [sha256(weights)], "the card's SHA-256 must be the weights file's"


@pytest.fixture(scope="module")
def synthetic_test_frames(tmp_path_factory):
    """The embedded `nirvis_synthetic` test split at each scale -> its frames (built from its
    committed sources)."""
    from cspsr_tf.data import pipeline, sources

    raw = sources.load_split("nirvis_synthetic", "test", str(tmp_path_factory.mktemp("tfds")))
    return {scale: list(pipeline.make_eval_dataset(raw, scale=scale)) for scale in (2, 4)}


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_loads_offline_and_beats_bicubic_on_embedded_frames(name, synthetic_test_frames):
    """Random or untrained weights are bicubic at best (the reconstruction starts at zero);
    the shipped ones must do better on frames they were never trained on."""
    import cspsr_tf
    from cspsr_tf.evaluate.evaluation import quantize
    from cspsr_tf.infer import tiling
    from cspsr_tf.ops import metrics
    from cspsr_tf.ops.resize import bicubic_upscale

    model = cspsr_tf.from_preset(name)
    scale = presets.scale(name)
    assert tiling.model_scale(model) == scale
    gains = []
    for inputs, targets, _ in synthetic_test_frames[scale]:
        out = tiling.predict(model, inputs["vis_lr"], inputs["nir_lr"], scale)
        assert out["vis_sr"].shape[1:3] == (inputs["vis_lr"].shape[1] * scale,
                                            inputs["vis_lr"].shape[2] * scale)
        assert np.all(np.isfinite(out["vis_sr"]))
        hr = quantize(np.asarray(targets["vis_hr"])[0])
        sr = quantize(out["vis_sr"][0])
        bicubic = quantize(np.asarray(bicubic_upscale(inputs["vis_lr"], scale))[0])
        gains.append(metrics.psnr(sr, hr, protocol="standard", scale=scale)
                     - metrics.psnr(bicubic, hr, protocol="standard", scale=scale))
    assert np.mean(gains) > 0.1, gains


def test_a_preset_serves_registered_sensors_with_zero_disparity():
    import cspsr_tf

    model = cspsr_tf.from_preset("cspsr_small_x4", geometry="aligned")
    rng = np.random.default_rng(0)
    inputs = {"vis_lr": rng.random((1, 24, 40, 3), dtype=np.float32),
              "nir_lr": rng.random((1, 24, 40, 1), dtype=np.float32)}
    out = model(inputs)
    np.testing.assert_array_equal(np.asarray(out["disp_l"]), 0.0)
    stereo = cspsr_tf.from_preset("cspsr_small_x4")(inputs)
    assert float(np.abs(np.asarray(stereo["disp_l"])).max()) > 0.0


def test_unknown_presets_and_missing_models_name_the_presets():
    from cspsr_tf.model import model_io

    with pytest.raises(ValueError, match="shipped presets: cspsr_small_x4"):
        presets.preset_dir("cspsr_huge_x9")
    with pytest.raises(FileNotFoundError) as error:
        model_io.load_model("runs/small_x4/best.keras")
    message = str(error.value)
    assert "cspsr_small_x4" in message and "train.py" in message and "\n" not in message
    # A file or folder of that name on disk wins over the preset.
    assert presets.resolve("cspsr_small_x4").endswith(os.path.join("cspsr_small_x4", "model.keras"))
    assert presets.resolve(REPO) == REPO


def test_predict_runs_a_preset_with_no_training(tmp_path):
    import cv2

    from cspsr_tf import predict

    rng = np.random.default_rng(1)
    vis = (rng.random((20, 28, 3)) * 255).astype(np.uint8)
    nir = (rng.random((20, 28)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "vis.png"), vis)
    cv2.imwrite(str(tmp_path / "nir.png"), nir)
    out = tmp_path / "sr.png"
    predict.run("cspsr_small_x4", str(tmp_path / "vis.png"), str(tmp_path / "nir.png"), str(out))
    assert cv2.imread(str(out)).shape == (80, 112, 3)


def test_the_readme_and_the_cards_show_the_committed_zoo_table():
    sys.path.insert(0, REPO)
    from benchmarks import model_zoo

    with open(os.path.join(REPO, "benchmarks", "results", "model_zoo.json")) as f:
        rows = json.load(f)["rows"]
    required = {"preset", "condition", "seeds", "psnr_std", "psnr_std_vis_only", "psnr_std_bicubic"}
    assert rows and all(required <= set(row) for row in rows)
    assert {row["condition"] for row in rows} == {"clean", "low_light", "over_exposure"}
    tables = model_zoo.doc_tables(rows)
    assert set(tables) == {os.path.join(REPO, "README.md")} | {
        os.path.join(presets.preset_dir(name), presets.CARD_FILE) for name in model_zoo.PARTNERS}
    for path, table in tables.items():
        with open(path) as f:
            text = f.read()
        assert model_zoo.replace_between_markers(text, table, path) == text, path


def test_model_zoo_rows_from_hand_made_scores():
    sys.path.insert(0, REPO)
    from benchmarks import model_zoo

    def score(value, unclipped):
        return {"psnr_std": value, "psnr_std_unclipped": unclipped}

    conditions = list(model_zoo.CONDITIONS)
    scores = {
        "cspsr_small_x4": {0: {c: score(30.0, 31.0) for c in conditions},
                           1: {c: score(31.0, 30.0) for c in conditions}},
        "vis_only_small_x4": {0: {c: score(29.0, 30.5) for c in conditions},
                              1: {c: score(30.5, 30.5) for c in conditions}},
    }
    scores["cspsr_small_x2"] = {0: {c: score(35.0, 36.0) for c in conditions}}
    scores["vis_only_small_x2"] = {0: {c: score(34.0, 36.0) for c in conditions}}
    bicubic = {4: {c: 25.0 for c in conditions}, 2: {c: 33.0 for c in conditions}}
    rows = model_zoo.zoo_rows(scores, bicubic, {"cspsr_small_x4": 4, "cspsr_small_x2": 2})
    x2 = [r for r in rows if r["preset"] == "cspsr_small_x2"]
    assert len(x2) == 3 and all(r["scale"] == 2 for r in x2)
    assert x2[0]["gain_over_bicubic_db"] == pytest.approx(2.0)  # against the x2 bicubic
    assert x2[0]["nir_gain_db"] == pytest.approx(1.0)
    rows = [r for r in rows if r["preset"] == "cspsr_small_x4"]
    over = next(r for r in rows if r["condition"] == "over_exposure")
    assert over["seeds"] == [0, 1] and over["psnr_std"] == pytest.approx(30.5)
    assert over["psnr_std_vis_only"] == pytest.approx(29.75)
    # Per seed: +1.0 and +0.5, mean +0.75; unclipped: +0.5 and -0.5, mean 0.
    assert over["nir_gain_db"] == pytest.approx(0.75)
    assert over["nir_gain_unclipped_db"] == pytest.approx(0.0)
    assert over["gain_over_bicubic_db"] == pytest.approx(5.5)
    clean = next(r for r in rows if r["condition"] == "clean")
    assert "nir_gain_unclipped_db" not in clean
