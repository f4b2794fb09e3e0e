"""How close is a model's guided-filter guide to the VIS luminance it stands in for?

    .venv/bin/python studies/guide_quality.py \
        --model=runs/nir_benefit_gf/low_light_full_gf_skip_seed0/final.keras \
        --manual_dir=../shared/data/nirvis_samples --data_dir=runs/nir_benefit/tfds \
        --split='train[2:3]+train[4:5]' --degradation=low_light --out=guide.json

For each trained model (comma-separated) with an NIR-guided filter (`full_gf`, `full_gf_skip`) and
the evaluation frames of the splits (taken as `benchmarks/nir_usage.py` takes them: the
degraded LR VIS, and the clean LR VIS of the same frame without the degradation), per guide:

    nir       the aligned LR NIR (`nir_l`; registered frames with zero disparity);
    learned   (in the committed results only) the learned guide of `full_lgf_skip`, a variant
              retired since (+0.02 dB); the commit before its retirement (d0b8592) measures it;
    luma      the clean LR VIS's own luminance (BT.601): the oracle guide of
              `studies/oracle_guide_samples.py`, which no model gets at test time.

`ncc2`: the mean local NCC^2 (Gaussian windows, `local_ncc_squared`, whose eps sends flat
windows to 0, so the `luma` row, the guide against itself, is the ceiling, not 1) between the
guide and the clean LR luminance. `filter_psnr`: the PSNR (RGB, [0, 1], whole LR frame)
against the clean LR VIS of the model's first guided filter (its trained radius and eps) of the
degraded VIS by that guide, each colour times its least-squares gain to the clean frame (the
same fit for every guide, so the brightness lost in the dark does not hide the guide's effect):
what the filter alone restores with that guide (`unfiltered`: the degraded VIS itself, with
the same gain fit). Means over frames.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from benchmarks.nir_usage import load_frames  # noqa: E402

GUIDES = ("nir", "luma")


def gained_psnr(image, reference):
    """PSNR of `image` against `reference` ([..., C] in [0, 1]) after each channel of `image`
    is scaled by its least-squares gain to `reference`."""
    image = np.asarray(image, np.float64).reshape(-1, np.shape(image)[-1])
    reference = np.asarray(reference, np.float64).reshape(image.shape)
    gain = (image * reference).sum(axis=0) / np.maximum((image * image).sum(axis=0), 1e-12)
    mse = float(np.mean((image * gain - reference) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def measure(model, config, degraded, clean):
    """Per-guide means of ncc2 and filter_psnr over paired frame lists (see the docstring)."""
    import keras
    import tensorflow as tf

    from cspsr_tf.model.build import with_geometry
    from cspsr_tf.model.layers.guided_filter import guided_filter
    from cspsr_tf.ops.cross_spectral_similarity import local_ncc_squared, luminance

    if config is None or not config.nir_guided_filter_radius:
        raise ValueError("the model has no NIR-guided filter (nir_guided_filter_radius is 0)")
    radius = config.nir_guided_filter_radius

    def probe(m):
        outputs = {"nir": m.get_layer("nir_l").output if config.use_cvm else m.input["nir_lr"]}
        return keras.Model(m.inputs, outputs)

    probes = {"stereo": probe(model), "aligned": probe(with_geometry(model, config, "aligned")[0])}
    layer = model.get_layer(f"nir_guided_filter_r{radius}")
    eps = tf.exp(tf.cast(layer.log_eps, tf.float32))
    sums = {g: {"ncc2": [], "filter_psnr": []} for g in GUIDES}
    unfiltered = []
    for (frame_id, vis_lr, nir_lr, _, geometry), (clean_id, clean_lr, *_) in zip(degraded, clean, strict=True):
        if frame_id != clean_id:
            raise ValueError(f"frame lists out of step: {frame_id} vs {clean_id}")
        got = probes["aligned" if geometry == "aligned" else "stereo"](
            {"vis_lr": vis_lr, "nir_lr": nir_lr}, training=False)
        luma = luminance(tf.constant(clean_lr))
        unfiltered.append(gained_psnr(vis_lr, clean_lr))
        guides = {"nir": got["nir"], "luma": luma}
        for name, guide in guides.items():
            guide = tf.cast(guide, tf.float32)
            sums[name]["ncc2"].append(float(tf.reduce_mean(local_ncc_squared(guide, luma))))
            filtered = guided_filter(tf.constant(vis_lr), guide, radius, eps)
            sums[name]["filter_psnr"].append(gained_psnr(filtered.numpy(), clean_lr))
    result = {name: {k: float(np.mean(v)) for k, v in values.items()}
              for name, values in sums.items() if values["ncc2"]}
    return {**result, "unfiltered": {"filter_psnr": float(np.mean(unfiltered))}}


def main(argv):
    del argv
    from cspsr_tf.util.cli import fail, quiet_library_logs

    quiet_library_logs()
    try:
        run(flags.FLAGS)
    except (OSError, ValueError) as error:  # missing or corrupt model, bad split, no guided filter
        fail("guide_quality.py", str(error).partition("\n")[0])


def run(f):
    from cspsr_tf.infer import tiling
    from cspsr_tf.model import model_io

    splits = [s for s in f.split.split(",") if s]
    result = {"splits": splits, "degradation": f.degradation, "models": {}}
    frames = {}
    for path in f.model:
        model, config = model_io.load_model(path)
        if config is None or not config.nir_guided_filter_radius:
            raise ValueError(f"{path}: the model has no NIR-guided filter (nir_guided_filter_radius is 0)")
        scale = tiling.model_scale(model, config)
        if scale not in frames:
            frames[scale] = (load_frames(f.dataset, splits, f.data_dir, f.manual_dir, scale, f.degradation),
                             load_frames(f.dataset, splits, f.data_dir, f.manual_dir, scale, "none"))
        degraded, clean = frames[scale]
        result["num_frames"] = len(degraded)
        result["models"][bench_util.rel(path)] = guides = measure(model, config, degraded, clean)
        print(path)
        for name, values in guides.items():
            ncc2 = f"ncc2 {values['ncc2']:.4f}" if "ncc2" in values else " " * 11
            print(f"  {name:10s} {ncc2}  filter PSNR {values['filter_psnr']:.2f} dB")
    if f.out:
        bench_util.write_json(f.out, result)


if __name__ == "__main__":
    flags.DEFINE_list("model", None, "One or more .keras models with NIR-guided filters.", required=True)
    flags.DEFINE_string("dataset", "nirvis_folder", "Dataset builder.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory.")
    flags.DEFINE_string("manual_dir", None, "Manual files of the dataset (nirvis_folder).")
    flags.DEFINE_string("split", "test", "Split(s), comma-separated (frames taken in order).")
    flags.DEFINE_string("degradation", "none", "Degradation of the LR VIS input (as evaluate.py).")
    flags.DEFINE_string("out", None, "JSON output.")
    app.run(main)
