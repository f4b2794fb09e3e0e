"""`make demo`: train briefly on the embedded data, evaluate against bicubic, export, compare.

    python -m cspsr_tf.demo [--steps=1000] [--out_dir=demo_output]

1. Prepares the embedded `nirvis_synthetic` dataset (no download, no manual step).
   Super-resolves its `test` split with the shipped preset `cspsr_small_x4` (seconds; no
   training) and prints that table beside bicubic first (<out_dir>/preset_evaluation).
2. Trains the `small` preset at x4: first the CVM alone for --cvm_steps with its matching
   loss (<out_dir>/run/cvm_pretrain), then the SR model, with that CVM fixed, for --steps (at
   most --minutes) with the project's training loop (checkpoints, TensorBoard logs and best/final
   .keras in <out_dir>/run; running the demo again resumes and then only re-evaluates).
3. Evaluates the final model on the held-out `test` split beside bicubic, under both metric
   protocols, writing tables, SR images, disparity maps and comparison figures.
4. Exports a SavedModel for serving and checks that it reproduces the Keras model.
5. Prints the table, the CVM's disparity error on the test split (LR pixels: untrained, after
   pre-training, after the SR stage) and the folder that holds everything.
"""

from cspsr_tf.util.cli import fail, quiet_library_logs, quiet_tensorflow, run_main

quiet_tensorflow()

import os  # noqa: E402
import shutil  # noqa: E402

from absl import flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "demo_output", "Folder for everything the demo writes.")
flags.DEFINE_float("minutes", 6.0, "Upper bound of the SR training time in minutes (a slow machine's cap).")
# The embedded data hold three training photos, and the test PSNR falls after about 1,000 SR
# steps as the network over-fits them (+0.46 dB over bicubic at 1,000 steps, +0.17 at 4,962;
# README, Training), so the demo stops there; the cosine schedule spans these steps.
flags.DEFINE_integer("steps", 1000, "SR training steps (about 1.5 minutes on 2 cores).")
flags.DEFINE_integer("scale", 4, "SR factor.")
flags.DEFINE_integer("cvm_steps", 500, "Steps of CVM pre-training before the SR stage.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: <out_dir>/tensorflow_datasets).")
flags.DEFINE_string("preset", "cspsr_small_x4", "Shipped preset evaluated before training ('' to skip).")


def run_demo(out_dir, minutes, steps, scale, data_dir=None, cvm_steps=500):
    import numpy as np

    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.evaluate import evaluation
    from cspsr_tf.export import savedmodel_export
    from cspsr_tf.model import model_io
    from cspsr_tf.train import loop, run_config

    out_dir = os.path.abspath(out_dir)
    data_dir = data_dir or os.path.join(out_dir, "tensorflow_datasets")
    model_dir = os.path.join(out_dir, "run")
    train_config, model_config = run_config.build_configs(
        dict(
            dataset="nirvis_synthetic",
            data_dir=data_dir,
            preset="small",
            patch_size=96,
            batch_size=8,
            # Higher than the paper's 1e-4, which needs hundreds of epochs; a short CPU run
            # gets further with 5e-4 and a cosine decay.
            learning_rate=5e-4,
            lr_schedule="cosine",
            steps=steps,
            max_minutes=minutes,
            eval_every=200,
            save_every=100,
            val_frames=2,
            model_dir=model_dir,
            cvm_steps=cvm_steps,
            # cvm_patch_size left to its default: 112 HR px here (the smallest training frame
            # is 115 px high), the largest these frames allow; wider patches match better.
        ),
        dict(scale=scale),
    )
    logging.info("Training the small preset for at most %.1f minutes ...", minutes)
    summary = loop.run_training(train_config, model_config)

    model, config = model_io.load_model(os.path.join(model_dir, "final.keras"))
    eval_dir = os.path.join(out_dir, "evaluation")
    raw = sources.load_split("nirvis_synthetic", "test", data_dir)
    disparity = disparity_report(model, config, raw, model_dir, scale)
    results = evaluation.evaluate_dataset(
        model, config, pipeline.make_eval_dataset(raw, scale=scale), scale=scale,
        out_dir=eval_dir, model_name=f"CSPSR small ({summary['step']} steps)",
    )

    saved_model_dir = os.path.join(out_dir, "savedmodel")
    savedmodel_export.export_savedmodel(model, config, saved_model_dir, overwrite=True)
    import tensorflow as tf

    served = tf.saved_model.load(saved_model_dir).signatures["serving_float"]
    rng = np.random.default_rng(0)
    vis = rng.random((1, 37, 53, 3), dtype=np.float32)
    nir = rng.random((1, 37, 53, 1), dtype=np.float32)
    gap = float(np.abs(served(vis_lr=vis, nir_lr=nir)["vis_sr"].numpy()
                       - model({"vis_lr": vis, "nir_lr": nir})["vis_sr"].numpy()).max())

    figures = sorted(os.listdir(os.path.join(eval_dir, "figures")))
    comparison = os.path.join(out_dir, "comparison.png")
    if figures:
        shutil.copyfile(os.path.join(eval_dir, "figures", figures[0]), comparison)
    return summary, results, saved_model_dir, gap, comparison, disparity


def evaluate_preset(name, out_dir, data_dir):
    """The shipped preset on the embedded test split, beside bicubic (no training)."""
    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.evaluate import evaluation
    from cspsr_tf.infer import tiling
    from cspsr_tf.model import model_io

    model, config = model_io.load_model(name)
    scale = tiling.model_scale(model, config)
    raw = sources.load_split("nirvis_synthetic", "test", data_dir)
    return evaluation.evaluate_dataset(
        model, config, pipeline.make_eval_dataset(raw, scale=scale), scale=scale,
        out_dir=os.path.join(os.path.abspath(out_dir), "preset_evaluation"), model_name=name,
    )


def disparity_report(model, config, raw, model_dir, scale):
    """CVM disparity error on the test split (LR px): untrained, pre-trained, final."""
    import keras

    from cspsr_tf.data import pipeline
    from cspsr_tf.evaluate.disparity_eval import measure_disparity
    from cspsr_tf.model import model_io
    from cspsr_tf.model.build import build_cspsr

    frames = list(pipeline.make_eval_dataset(raw, scale=scale))
    keras.utils.set_random_seed(0)
    candidates = {"untrained": build_cspsr(config)}
    pretrained = os.path.join(model_dir, "cvm_pretrain", "final.keras")
    if os.path.exists(pretrained):
        candidates["after CVM pre-training"] = model_io.load_model(pretrained)[0]
    candidates["after the SR stage"] = model
    return {name: measure_disparity(m.get_layer("cvm"), frames, scale) for name, m in candidates.items()}


def main(argv):
    if len(argv) > 1:
        fail("demo", f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    quiet_library_logs()
    from cspsr_tf.data.sources import DataError, quiet_tfds_notices

    quiet_tfds_notices()
    from cspsr_tf.evaluate import evaluation
    from cspsr_tf.train.run_config import ConfigError

    try:
        if FLAGS.preset:
            data_dir = FLAGS.data_dir or os.path.join(os.path.abspath(FLAGS.out_dir), "tensorflow_datasets")
            preset_results = evaluate_preset(FLAGS.preset, FLAGS.out_dir, data_dir)
            print()
            print(f"Shipped preset {FLAGS.preset}, no training (embedded test split):")
            print(evaluation.results_markdown(preset_results))
            mean = preset_results["mean"]
            print(f"{FLAGS.preset}: PSNR gain over bicubic (standard protocol): "
                  f"{mean['model']['standard']['psnr'] - mean['bicubic']['standard']['psnr']:+.3f} dB")
            print()
        summary, results, saved_model_dir, gap, comparison, disparity = run_demo(
            FLAGS.out_dir, FLAGS.minutes, FLAGS.steps, FLAGS.scale, FLAGS.data_dir, FLAGS.cvm_steps
        )
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        fail("demo", str(error), getattr(error, "details", ""))
    print()
    print(evaluation.results_markdown(results))
    mean = results["mean"]
    gain = mean["model"]["standard"]["psnr"] - mean["bicubic"]["standard"]["psnr"]
    print(f"Trained {summary['step']} steps in {summary['seconds']:.0f} s; "
          f"PSNR gain over bicubic (standard protocol): {gain:+.3f} dB")
    print("CVM disparity error on the test split (LR pixels, valid ground-truth pixels):")
    for name, d in disparity.items():
        print(f"  {name:<24} EPE {d['epe']:.3f} px, {100 * d['bad1']:.1f}% off by > 1 px")
    print(f"SavedModel: {saved_model_dir} (max |SavedModel - Keras| = {gap:.2e})")
    print(f"Comparison figure: {comparison}")
    print(f"Everything is in {os.path.abspath(FLAGS.out_dir)}")


if __name__ == "__main__":
    run_main(main, "demo")
