"""How much of a supervised guide's gain is the NIR's? A guide network trained alone.

    .venv/bin/python studies/supervised_guide.py --degradation=low_light \
        --data_dir=runs/nir_benefit/tfds --out=studies/results/supervised_guide_low_light.json

`full_lgf_sup_skip` trains its learned guide (`layers/learned_guide.py`) towards the clean LR
VIS luminance (`lambda_guide`). Part of what such a guide gains can come from the degraded VIS
alone (a small denoiser), not from the NIR. This script trains the same layer, alone, with the
same loss (`losses.guide_loss_per_example`) on the training split of `benchmarks/nir_benefit.py`
(its split rule, `sample_split.define_splits`) under a degradation, twice:

    vis_nir   the layer as the model has it: the NIR plus a correction from [VIS, NIR];
    vis       the same layer fed a zero NIR: a guide from the degraded VIS alone, the same
              network and parameter count;

and scores each on the held-out frames as `studies/guide_quality.py` does (local NCC^2
with the clean LR luminance; the PSNR of a radius-2 guided filter of the degraded VIS by the
guide, after a least-squares gain per colour, against the clean LR VIS), beside the raw NIR,
the degraded VIS's own luminance and the clean luminance (the oracle). The filter's eps is the
best of a fixed grid for each guide alone (guides of different contrast need different eps).
Registered frames only (the stereo test frame has no aligned NIR without a CVM).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402

EPS_GRID = (1e-4, 1e-3, 1e-2)
RADIUS = 2  # the radius of every guided-filter ablation row

FLAGS = flags.FLAGS


def train_guide(train_ds, with_nir, *, steps, learning_rate, seed, scale, channels, hidden_layers):
    """A LearnedGuide trained alone towards the clean LR luminance of `(inputs, targets)`
    batches; `with_nir=False` feeds it a zero NIR. Returns (layer, last loss)."""
    import keras
    import tensorflow as tf

    from cspsr_tf.layers.learned_guide import LearnedGuide
    from cspsr_tf.losses import guide_loss_per_example

    keras.utils.set_random_seed(seed)
    layer = LearnedGuide(channels=channels, hidden_layers=hidden_layers)
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step(vis, nir, vis_hr):
        nir = nir if with_nir else tf.zeros_like(nir)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(guide_loss_per_example(layer((vis, nir)), vis_hr, scale))
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables, strict=True))
        return loss

    loss = None
    for inputs, targets in train_ds.take(steps):
        loss = step(inputs["vis_lr"], inputs["nir_lr"], targets["vis_hr"])
    return layer, float(loss)


def score(guide_of, degraded, clean):
    """{"ncc2", "filter_psnr", "eps"}: means over frames at the eps of the grid that is best."""
    import tensorflow as tf

    from cspsr_tf.layers.cross_spectral_similarity import local_ncc_squared, luminance
    from cspsr_tf.layers.guided_filter import guided_filter
    from studies.guide_quality import gained_psnr

    ncc2, psnr = [], {eps: [] for eps in EPS_GRID}
    for (frame_id, vis, nir, _, _), (clean_id, clean_lr, *_) in zip(degraded, clean, strict=True):
        if frame_id != clean_id:
            raise ValueError(f"frame lists out of step: {frame_id} vs {clean_id}")
        luma = luminance(tf.constant(clean_lr))
        guide = tf.cast(guide_of(vis, nir, clean_lr), tf.float32)
        ncc2.append(float(tf.reduce_mean(local_ncc_squared(guide, luma))))
        for eps in EPS_GRID:
            filtered = guided_filter(tf.constant(vis), guide, RADIUS, eps)
            psnr[eps].append(gained_psnr(filtered.numpy(), clean_lr))
    means = {eps: float(np.mean(v)) for eps, v in psnr.items()}
    best = max(means, key=means.get)
    return {"ncc2": float(np.mean(ncc2)), "filter_psnr": means[best], "eps": best,
            "filter_psnr_by_eps": {f"{eps:g}": v for eps, v in means.items()}}


def run():
    import tensorflow as tf

    from benchmarks.nir_usage import load_frames
    from benchmarks.sample_split import define_splits
    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.layers.cross_spectral_similarity import luminance
    from studies.guide_quality import gained_psnr

    degradation = FLAGS.degradation
    split = define_splits(FLAGS.data_dir, FLAGS.manual_dir)
    args = ("nirvis_folder", split["eval_splits"], FLAGS.data_dir, FLAGS.manual_dir, FLAGS.scale)
    degraded = [f for f in load_frames(*args, degradation) if f[4] == "aligned"]
    clean = [f for f in load_frames(*args, "none") if f[4] == "aligned"]
    raw = sources.load_split("nirvis_folder", split["train_split"], FLAGS.data_dir, FLAGS.manual_dir)
    train_ds = pipeline.make_training_dataset(
        raw, scale=FLAGS.scale, hr_patch_size=FLAGS.patch_size, batch_size=FLAGS.batch_size,
        seed=FLAGS.seed, degradation=None if degradation == "none" else degradation)

    guides = {
        "nir": score(lambda vis, nir, c: nir, degraded, clean),
        "degraded_vis_luma": score(lambda vis, nir, c: luminance(tf.constant(vis)), degraded, clean),
        "clean_luma_oracle": score(lambda vis, nir, c: luminance(tf.constant(c)), degraded, clean),
    }
    training = {}
    for name, with_nir in (("vis_nir", True), ("vis", False)):
        start = time.time()
        layer, loss = train_guide(
            train_ds, with_nir, steps=FLAGS.steps, learning_rate=FLAGS.learning_rate, seed=FLAGS.seed,
            scale=FLAGS.scale, channels=FLAGS.channels, hidden_layers=FLAGS.hidden_layers)
        training[name] = {"final_loss": loss, "seconds": round(time.time() - start, 1)}
        guides[f"supervised_{name}"] = score(
            lambda vis, nir, c, w=with_nir, g=layer: g((vis, nir if w else np.zeros_like(nir))),
            degraded, clean)
    unfiltered = float(np.mean([gained_psnr(d[1], c[1]) for d, c in zip(degraded, clean, strict=True)]))
    for name, values in guides.items():
        print(f"{name:26s} ncc2 {values['ncc2']:.3f}  filter PSNR {values['filter_psnr']:.2f} dB "
              f"(eps {values['eps']:g})")
    print(f"{'unfiltered':26s}             {unfiltered:.2f} dB")
    return {
        "benchmark": "supervised_guide",
        "command": bench_util.command_line(),
        "machine": bench_util.machine_info(),
        "degradation": degradation,
        "settings": {k: FLAGS[k].value for k in ("steps", "batch_size", "patch_size", "scale", "channels",
                                                  "hidden_layers", "learning_rate", "seed")},
        "train_split": split["train_split"],
        "eval_splits": split["eval_splits"],
        "num_frames": len(degraded),
        "unfiltered_psnr": unfiltered,
        "guides": guides,
        "training": training,
    }


def main(argv):
    del argv
    from cspsr_tf.cli import fail, quiet_library_logs

    quiet_library_logs()
    try:
        result = run()
    except (OSError, ValueError) as error:  # missing data, bad degradation
        fail("supervised_guide.py", str(error).partition("\n")[0])
    if FLAGS.out:
        bench_util.write_json(FLAGS.out, result)


def define_flags():
    # Defined only when run as a script: tests import this module beside others that define
    # flags of the same names.
    flags.DEFINE_string("degradation", "low_light", "Degradation of the LR VIS (train and test).")
    flags.DEFINE_string("data_dir", os.path.join(bench_util.REPO_ROOT, "runs", "nir_benefit", "tfds"),
                        "TFDS data directory (default: nir_benefit.py's, whatever the working directory).")
    flags.DEFINE_string("manual_dir", bench_util.SAMPLES_DIR, "The shared samples folder.")
    flags.DEFINE_integer("steps", 1500, "Training steps of each guide.")
    flags.DEFINE_integer("batch_size", 16, "Patches per step.")
    flags.DEFINE_integer("patch_size", 96, "HR patch side.")
    flags.DEFINE_integer("scale", 4, "SR factor (the LR size of the guide).")
    flags.DEFINE_integer("channels", 16, "Width of the guide's hidden convolutions (the model's: 16).")
    flags.DEFINE_integer("hidden_layers", 2, "Their number (the model's: 2).")
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
    flags.DEFINE_integer("seed", 0, "Seeds the weights and the patch stream.")
    flags.DEFINE_string("out", None, "JSON file for the results.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
