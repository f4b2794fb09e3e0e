"""Does a trained model use its NIR input? PSNR with the NIR swapped out, and the CSFT gates.

    .venv/bin/python benchmarks/nir_usage.py --model=runs/nir_benefit/clean_full_seed0/final.keras \
        --dataset=nirvis_folder --manual_dir=<samples> --data_dir=runs/nir_benefit/tfds \
        --split='train[2:3]+train[4:5]' --degradation=low_light --out=usage.json

For a `.keras` model and the evaluation frames of one or more splits (comma-separated; the
frames of all splits are taken in order, each split through its own
`pipeline.make_eval_dataset`, exactly as `evaluate.py` does with a comma-separated --split, so
that the degraded inputs carry the same noise), the mean standard-protocol PSNR (Y, `scale`
pixels shaved, SR quantised to 8 bits as `evaluation.evaluate_dataset` does) of the VIS output:

    real        the frame's own NIR (the number `evaluate.py` gives);
    grey        the NIR input replaced by a flat image of the frame's own mean LR NIR value;
    other       the NIR input replaced by the LR NIR of the next frame in the list (the last
                frame takes the first), resized to this frame's LR size (`tf.image.resize`,
                bicubic, clipped to [0, 1]).

A model that ignores the NIR gives the same PSNR in all three; a model that relies on it
loses PSNR under `grey` and `other`.

For dual-branch models with CSFT, the mean gate values of every DMF module `dmf{t}` under the
real NIR (paper Eq. 2: F'_vis = F'_nir * w_s1 * w_c2 + F_vis * w_s1 * w_s2 * w_c1), averaged
over the pixels (and channels) of each frame, then over frames: `w_s1`, `w_s2` (spatial),
`w_c1`, `w_c2` (channel). They are recomputed from the CSFT layer's own sub-layers on the
module's inputs (a `keras.Model` from the model's inputs to each `dmf{t}`'s inputs; batch
norms in inference mode); `csft_recompute_max_abs_diff` checks the recomputed F'_vis against
the layer's own output. How the channel gates vary: `w_c_frame_std` (per channel, the std
over frames, then averaged over channels; 0 for a gate that ignores its input),
`w_c_channel_std` (the std over channels of the per-channel means), `w_c_min`, `w_c_max`.
Also the RMS of the two terms of Eq. 2 (`nir_term_rms` for
F'_nir * w_s1 * w_c2, `vis_term_rms` for F_vis * w_s1 * w_s2 * w_c1): the share of the fused
features the NIR carries. Models with a CVM also report the mean |disp_l| (LR pixels) the CVM
predicts on these frames (for registered pairs the true disparity is 0).

Inference is one whole-frame pass (`tiling.predict`, as evaluate.py), or tiled with --tile.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

VARIANTS = ("real", "grey", "other")
GATES = ("w_s1", "w_s2", "w_c1", "w_c2")


def load_frames(dataset, splits, data_dir, manual_dir, scale, degradation, max_frames=None):
    """[(id, vis_lr [1,h,w,3], nir_lr [1,h,w,1], hr uint8 [H,W,3], geometry)] of the splits."""
    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.evaluate.evaluation import quantize

    frames = []
    for split in splits:
        raw = sources.load_split(dataset, split, data_dir, manual_dir)
        ds = pipeline.make_eval_dataset(
            raw, scale=scale, degradation=None if degradation in (None, "none") else degradation
        )
        for inputs, targets, meta in ds:
            if max_frames is not None and len(frames) >= max_frames:
                return frames
            frame_id = np.asarray(meta["id"]).reshape(-1)[0]
            frame_id = frame_id.decode() if isinstance(frame_id, bytes) else str(frame_id)
            geometry = np.asarray(meta["geometry"]).reshape(-1)[0]
            geometry = geometry.decode() if isinstance(geometry, bytes) else str(geometry)
            frames.append((frame_id, np.asarray(inputs["vis_lr"], np.float32),
                           np.asarray(inputs["nir_lr"], np.float32),
                           quantize(np.asarray(targets["vis_hr"])[0]), geometry))
    return frames


def _dmf_layers(model):
    layers, t = [], 1
    while True:
        try:
            layers.append(model.get_layer(f"dmf{t}"))
        except ValueError:
            return layers
        t += 1


def gate_model(model):
    """(keras.Model to the (f_vis, f_nir) inputs of every DMF module, DMF layers) or None."""
    import keras

    dmfs = [layer for layer in _dmf_layers(model) if layer.use_csft]
    if not dmfs:
        return None
    outputs = []
    for layer in dmfs:
        f_vis, f_nir = layer.input
        outputs += [f_vis, f_nir]
    return keras.Model(inputs=model.input, outputs=outputs, name="dmf_inputs"), dmfs


def csft_gates(dmf, f_vis, f_nir):
    """The CSFT gates of one DMF module on its inputs, from the layer's own sub-layers."""
    import tensorflow as tf

    f_nir_dyn = dmf.nir_filter((f_vis, f_nir)) if dmf.use_dynamic_conv else dmf.nir_filter(f_nir)
    csft = dmf.fusion
    channels = f_vis.shape[-1]
    w_s1 = tf.sigmoid(csft.spatial_vis(f_vis))
    normed = tf.concat([csft.norm_nir(f_nir_dyn, training=False),
                        csft.norm_vis(f_vis, training=False)], axis=-1)
    pooled = tf.reduce_mean(normed, axis=[1, 2], keepdims=True)
    w_c = tf.sigmoid(csft.channel_conv(pooled))
    w_c1, w_c2 = w_c[..., :channels], w_c[..., channels:]
    w_s2 = tf.sigmoid(csft.spatial_fused(normed))
    nir_term = f_nir_dyn * w_s1 * w_c2
    vis_term = f_vis * w_s1 * w_s2 * w_c1
    reference = csft((f_vis, f_nir_dyn), training=False)
    rms = lambda x: float(tf.sqrt(tf.reduce_mean(tf.square(x))))  # noqa: E731
    return {
        "w_c_channels": np.asarray(w_c, np.float64).reshape(-1),  # [2C]; taken out by measure()
        "w_s1": float(tf.reduce_mean(w_s1)), "w_s2": float(tf.reduce_mean(w_s2)),
        "w_c1": float(tf.reduce_mean(w_c1)), "w_c2": float(tf.reduce_mean(w_c2)),
        "nir_term_rms": rms(nir_term), "vis_term_rms": rms(vis_term),
        "csft_recompute_max_abs_diff": float(tf.reduce_max(tf.abs(nir_term + vis_term - reference))),
    }


def channel_gate_spread(w_c):
    """How much the channel gates [frames, 2C] vary: between frames and between channels.

    A gate that ignored its input would sit at one value per channel for every frame
    (`w_c_frame_std` 0); `w_c_channel_std` is the spread of the per-channel means.
    """
    return {
        "w_c_frame_std": float(np.mean(np.std(w_c, axis=0))),
        "w_c_channel_std": float(np.std(np.mean(w_c, axis=0))),
        "w_c_min": float(np.min(w_c)), "w_c_max": float(np.max(w_c)),
    }


def _resize_nir(nir, size):
    import tensorflow as tf

    resized = tf.image.resize(nir, size, method="bicubic")
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def measure(model_path, frames, *, tile=None, loaded=None):
    """NIR-usage figures of one `.keras` model on frames from `load_frames`.

    `loaded`: the (model, config) of `model_io.load_model(model_path)` if already loaded.
    """
    from cspsr_tf.evaluate.evaluation import quantize
    from cspsr_tf.infer import tiling
    from cspsr_tf.model import model_io
    from cspsr_tf.ops.metrics import evaluate_pair

    if not frames:
        raise ValueError("no frames to measure")
    start = time.perf_counter()
    from cspsr_tf.model.build import with_geometry

    stereo_model, config = loaded or model_io.load_model(model_path)
    scale = tiling.model_scale(stereo_model, config)
    # Registered frames go through with zero disparity, as evaluate.py and train.py do.
    registered = with_geometry(stereo_model, config, "aligned")[0] if config is not None else stereo_model
    gate_models = {"stereo": gate_model(stereo_model), "aligned": gate_model(registered)}
    per_frame = []
    gate_sums = None
    channel_gates = {}  # dmf name -> per frame, the [2C] channel gates w_c
    for index, (frame_id, vis_lr, nir_lr, hr, geometry) in enumerate(frames):
        model = registered if geometry == "aligned" else stereo_model
        gates = gate_models["aligned" if geometry == "aligned" else "stereo"]
        other_nir = frames[(index + 1) % len(frames)][2]
        nirs = {
            "real": nir_lr,
            "grey": np.full_like(nir_lr, float(nir_lr.mean())),
            "other": _resize_nir(other_nir, vis_lr.shape[1:3]),
        }
        row = {"id": frame_id, "psnr": {}}
        for variant, nir in nirs.items():
            outputs = tiling.predict(model, vis_lr, nir, scale, tile=tile)
            sr = quantize(outputs["vis_sr"][0])
            row["psnr"][variant] = evaluate_pair(sr, hr, scale)["standard"]["psnr"]
            if variant == "real" and "disp_l" in outputs:
                row["mean_abs_disp_l"] = float(np.mean(np.abs(outputs["disp_l"])))
        if gates is not None:
            sub_model, dmfs = gates
            tensors = sub_model({"vis_lr": vis_lr, "nir_lr": nir_lr}, training=False)
            row["gates"] = {
                layer.name: csft_gates(layer, tensors[2 * k], tensors[2 * k + 1])
                for k, layer in enumerate(dmfs)
            }
            for name, values in row["gates"].items():
                channel_gates.setdefault(name, []).append(values.pop("w_c_channels"))
            if gate_sums is None:
                gate_sums = {name: {key: 0.0 for key in values} for name, values in row["gates"].items()}
            for name, values in row["gates"].items():
                for key, value in values.items():
                    gate_sums[name][key] += value
        per_frame.append(row)

    def mean(values):
        values = [v for v in values if v is not None and np.isfinite(v)]
        return float(np.mean(values)) if values else None

    psnr = {v: mean([r["psnr"][v] for r in per_frame]) for v in VARIANTS}
    result = {
        "model": model_path,
        "architecture": getattr(config, "architecture", None),
        "num_frames": len(per_frame),
        "psnr_standard": psnr,
        "delta_grey_db": None if psnr["grey"] is None else psnr["grey"] - psnr["real"],
        "delta_other_db": None if psnr["other"] is None else psnr["other"] - psnr["real"],
        "frames": per_frame,
        "seconds": round(time.perf_counter() - start, 1),
    }
    disps = [r["mean_abs_disp_l"] for r in per_frame if "mean_abs_disp_l" in r]
    if disps:
        result["mean_abs_disp_l_lr_px"] = float(np.mean(disps))
    if gate_sums is not None:
        result["gates"] = {
            name: {key: value / len(per_frame) for key, value in values.items()}
            for name, values in gate_sums.items()
        }
        for name, vectors in channel_gates.items():
            result["gates"][name].update(channel_gate_spread(np.stack(vectors)))
        result["csft_recompute_max_abs_diff"] = max(
            r["gates"][name]["csft_recompute_max_abs_diff"] for r in per_frame for name in r["gates"]
        )
    return result


def run(model_path, *, dataset, splits, data_dir=None, manual_dir=None, degradation="none",
        max_frames=None, tile=None):
    """Loads the frames of `splits` (a list) and measures the model; see the module docstring."""
    from cspsr_tf.infer import tiling
    from cspsr_tf.model import model_io

    loaded = model_io.load_model(model_path)
    scale = tiling.model_scale(*loaded)
    frames = load_frames(dataset, splits, data_dir, manual_dir, scale, degradation, max_frames)
    result = measure(model_path, frames, tile=tile, loaded=loaded)
    result.update({"dataset": dataset, "splits": list(splits), "degradation": degradation})
    return result


def main(argv):
    del argv
    from cspsr_tf.util.cli import quiet_library_logs

    quiet_library_logs()
    f = flags.FLAGS
    result = run(f.model, dataset=f.dataset, splits=[s for s in f.split.split(",") if s],
                 data_dir=f.data_dir, manual_dir=f.manual_dir, degradation=f.degradation,
                 max_frames=f.max_frames, tile=f.tile)
    summary = {k: result[k] for k in ("num_frames", "psnr_standard", "delta_grey_db", "delta_other_db")}
    print(json.dumps(summary, indent=1))
    for name, values in result.get("gates", {}).items():
        print(name, " ".join(f"{k}={v:.4f}" for k, v in values.items()))
    if f.out:
        os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
        with open(f.out, "w") as out:
            json.dump(result, out, indent=1)
        print(f"Wrote {f.out}")


if __name__ == "__main__":
    flags.DEFINE_string("model", None, "A .keras model.", required=True)
    flags.DEFINE_string("dataset", "nirvis_folder", "Dataset builder.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory.")
    flags.DEFINE_string("manual_dir", None, "Manual files of the dataset (nirvis_folder).")
    flags.DEFINE_string("split", "test", "Split(s), comma-separated (frames taken in order).")
    flags.DEFINE_string("degradation", "none", "Degradation of the LR VIS input (as evaluate.py).")
    flags.DEFINE_integer("max_frames", None, "At most this many frames.")
    flags.DEFINE_integer("tile", None, "LR tile size (default: whole frames).")
    flags.DEFINE_string("out", None, "JSON output.")
    app.run(main)
