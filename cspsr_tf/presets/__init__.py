"""Trained models shipped with the package: presets with weights (keras-hub's habit).

Each preset is a folder beside this file holding `model.keras` (float32 weights),
`model.keras.config.json` (its CSPSRConfig) and `MODEL_CARD.md` (what it is for, how it was
trained, its measured table, the weights' SHA-256). Wherever a command takes a `.keras` file
(`predict --model`, `evaluate.py --model`, `export/*`), it takes a preset name too:

    python -m cspsr_tf.predict --model=cspsr_small_x4 --vis left.png --nir right.png --out sr.png

    import cspsr_tf
    model = cspsr_tf.from_preset("cspsr_small_x4")

Loading needs no network: the weights are in the repository. This module only names the
files (it imports nothing of the library, so `model_io` can resolve names through it);
`cspsr_tf.from_preset` loads them. The Keras names the files
refer to (`cspsr_tf>CrossViewMatching`, ...) are registered names, not module paths, so the
files keep loading when modules move; `tests/test_presets.py` loads every preset.
"""

import json
import os

PRESET_DIR = os.path.dirname(os.path.abspath(__file__))
WEIGHTS_FILE = "model.keras"
CARD_FILE = "MODEL_CARD.md"

# name -> one line for listings. The card in each folder says the rest.
PRESETS = {
    "cspsr_small_x4": "CSPSR (`small` size, the NIR joined through zero-initialised convs), x4, "
                      "trained on clean frames (the exposure kept); camera pairs (CVM) or "
                      "registered sensors (--geometry=aligned)",
    "vis_only_small_x4": "the VIS-only partner of cspsr_small_x4 (same data and steps, no NIR): "
                         "the reference its NIR gain is measured against",
    "cspsr_small_x2": "cspsr_small_x4's recipe at x2 (disparities up to 24 LR px)",
    "vis_only_small_x2": "the VIS-only partner of cspsr_small_x2",
}


def preset_dir(name):
    """The folder of preset `name`; ValueError (one line, naming the presets) if unknown."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; shipped presets: {', '.join(PRESETS)}")
    return os.path.join(PRESET_DIR, name)


def weights_path(name):
    """The `.keras` file of preset `name`."""
    return os.path.join(preset_dir(name), WEIGHTS_FILE)


def scale(name):
    """The SR factor of preset `name`, read from its config file (nothing is loaded)."""
    with open(weights_path(name) + ".config.json") as f:
        return int(json.load(f)["scale"])


def resolve(model):
    """A `--model` value as a path: a preset name becomes its `.keras` file; anything that
    exists on disk, or is not a preset name, is returned unchanged."""
    if model in PRESETS and not os.path.exists(model):
        return weights_path(model)
    return model


def not_found_message(model):
    """The one line a command prints for a `--model` that is neither a file nor a preset."""
    return (f"Model not found: {model}. Use a shipped preset (--model={next(iter(PRESETS))}; all: "
            f"{', '.join(PRESETS)}) or train one: python train.py --model_dir=runs/my_model, "
            "then --model=runs/my_model/best.keras (README: Training)")
