"""Train CSPSR (or one of its ablations) with a custom tf.distribute loop.

    python train.py --dataset=nirvis_synthetic --preset=small --scale=4 --steps=2000 \
        --batch_size=16 --patch_size=96 --model_dir=runs/small_x4

Every field of the run config (cspsr_tf.train.run_config.TrainConfig) and of the model config
(cspsr_tf.model.configs.CSPSRConfig) is a flag; `--helpfull` lists them. Running the same command
again resumes from the last checkpoint in --model_dir (also after the folder was moved); the
learning rate, the length and the logging may change on resume.

Exit codes:
    0  trained to --steps, or stopped by the --max_minutes budget (final.keras written)
    2  a bad setting, a bad dataset, or a diverged run (non-finite loss): one line on stderr
       saying what to change; a run that fails before its first checkpoint leaves nothing
    3  stopped early by SIGTERM: the checkpoint is saved and the same command resumes
"""

import sys

from absl import flags, logging  # noqa: E402

# No TensorFlow here: the flags are defined and a bad setting is refused before it loads.
from cspsr_tf.train import run_config  # noqa: E402
from cspsr_tf.util.cli import (
    STOPPED_EARLY,
    define_dataclass_flags,
    fail,
    flag_values,
    quiet_dataset_progress,
    quiet_library_logs,
    quiet_tensorflow,
    quiet_tfds_notices,
    run_main,
)

TRAIN_HELP = {
    "dataset": "Dataset builder of datasets/: nirvis_synthetic, nirvis_folder, rgb_nir_stereo, nirscene, ranus.",
    "data_dir": "TFDS data directory (default ~/tensorflow_datasets).",
    "manual_dir": "Folder with the manually downloaded files of a manual dataset.",
    "train_split": "TFDS split to train on (slicing allowed, e.g. train[4:]).",
    "val_split": "TFDS split for validation PSNR/SSIM (e.g. test or train[:4]).",
    "preset": "Model preset: paper, small or tiny.",
    "ablation": "Ablation row of the paper's Tables 3-4: full, baseline, w_nir, w_cvm, wo_cvm, wo_csft, wo_dyconv, wo_cssc; or (not in the paper) full_gf (the VIS guided-filtered by the NIR, radius 2, also at the VIS branch input) or full_gf_skip (full_gf whose skip upsamples the guided-filtered VIS, with a learned gain; best in low light) or full_zero_conv (--fusion=zero_conv).",
    "stage": "sr: train the SR model (Eq. 3; preceded by --cvm_steps of CVM pre-training); cvm: train the CVM alone with the matching loss.",
    "patch_size": "HR training patch side in pixels (paper: 120); a multiple of --scale.",
    "batch_size": "Global batch size, split over replicas (paper: 32).",
    "steps": "Number of optimiser steps to train to (a resumed run continues to this step).",
    "max_minutes": "Stop after this many minutes of training (checkpoint and final.keras written); 0: no limit.",
    "learning_rate": "Adam learning rate (paper: 1e-4).",
    "lr_schedule": "constant or cosine (decays to 1% over --steps).",
    "adam_beta1": "Adam beta_1 (paper: 0.9).",
    "adam_beta2": "Adam beta_2 (paper: 0.999).",
    "random_downscale": "Randomly downscale HR frames by 0.5-1x before cropping (paper's augmentation).",
    "vertical_flip": "Random vertical flips of both views (the only geometry-safe flip for a stereo pair).",
    "nir_side": "Side of the training rig's NIR camera, seen from behind the cameras: right (the models' rig) or left (every pair is mirrored left-right, so the model trains as for a NIR-right rig; run it with --nir_side=left).",
    "degradation": "Extra degradation of the LR VIS input: none (paper), noise, low_light, over_exposure; parameters after a colon, e.g. low_light:gain=0.1 (cspsr_tf/data/degradations.py).",
    "seed": "Random seed of the initialisation and of the data stream.",
    "model_dir": "Training directory: config.json, checkpoints, best.keras, final.keras, TensorBoard logs.",
    "strategy": "auto (mirrored if >1 GPU), default, mirrored, or multi_worker (cluster from TF_CONFIG).",
    "mixed_precision": "Compute in float16 (mixed_float16 policy, with loss scaling); the same as --precision=float16.",
    "precision": "Compute precision of the model: float32, bfloat16 (mixed_bfloat16 policy; fast on CPUs with AVX512_BF16 / AMX) or float16 (mixed_float16, with loss scaling). Variables, losses, the CVM and the outputs stay float32 (cspsr_tf/model/precision.py).",
    "jit_compile": "Compile the training step with XLA.",
    "cvm_init": "Training directory of a --stage=cvm run whose CVM weights start this run.",
    "freeze_cvm": "Keep the (pre-trained) CVM fixed in the SR stage; --nofreeze_cvm trains it along, with --lambda_match.",
    "cvm_steps": "Pre-train the CVM for this many steps (in <model_dir>/cvm_pretrain) before the SR stage of a model with a CVM; 0: none.",
    "cvm_learning_rate": "Adam learning rate of the CVM pre-training.",
    "cvm_lr_schedule": "Learning-rate schedule of the CVM pre-training: constant or cosine (decays to 1% over --cvm_steps).",
    "cvm_patch_size": "HR patch side of the CVM pre-training (default: the largest multiple of --scale up to 192 that every training frame holds, at least --patch_size).",
    "synthetic_max_disparity": "CVM pre-training: registered pairs become stereo pairs with random disparities up to this many LR pixels (default: the model's max_disparity).",
    "lambda_match": "With --nofreeze_cvm: weight of the CVM matching loss in the joint SR loss (0: Eq. 3 alone).",
    "cvm_smoothness": "Weight of the edge-aware smoothness term of the matching loss.",
    "cvm_consistency": "Weight of the left-right consistency term of the matching loss.",
    "cvm_supervision": "Weight of the supervised disparity term where the data knows the disparity.",
    "save_every": "Checkpoint every N steps (a killed run loses at most N steps).",
    "eval_every": "Validate every N steps (0: never).",
    "log_every": "Write TensorBoard scalars every N steps; also a progress line when stdout is not a terminal.",
    "val_frames": "Number of validation frames.",
    "val_crop": "Validation frames are cropped to this HR size (top-left) to keep validation quick.",
}
MODEL_HELP = {
    "scale": "SR factor: 2, 3, 4 or 8.",
    "channels": "Feature channels C of each SR branch (paper: 64).",
    "num_modules": "Number T of DMF modules (paper: 15).",
    "kernel_size": "Size k of the per-pixel dynamic kernels (paper: 3).",
    "architecture": "dual (CSPSR) or single (VIS branch only).",
    "single_branch_input": "Single-branch input: vis or vis_nir.",
    "use_cvm": "Align the NIR with the cross-view matching module.",
    "use_csft": "Fuse with the CSFT unit (else concatenation + 1x1 conv).",
    "use_dynamic_conv": "Filter NIR features with the dynamic convolution (else a common conv).",
    "dmf_residual": "Residual connection around each DMF module.",
    "fusion": "Dual branch: dmf (the paper: the VIS features pass through the DMF modules) or zero_conv (not in the paper: the VIS-only network, with each DMF module's VIS output added through a 1x1 conv initialised at zero).",
    "global_skip": "Add the bicubic upsampling of the input to the SR output.",
    "nir_guided_filter_radius": "Dual branch: also feed the VIS branch the LR VIS guided-filtered by the aligned NIR with this window radius (0: none; not in the paper).",
    "skip_gain": "Multiply the VIS bicubic skip by a learned gain per colour (not in the paper).",
    "skip_source": "What the VIS bicubic skip upsamples: vis (paper) or guided_filter (needs nir_guided_filter_radius).",
    "exposure_conditioning": "Statistics of the whole LR frame set a gain per colour on the LR VIS and a scale and shift of the VIS features: one model for frames of unknown exposure, trained with --degradation=blind (not in the paper).",
    "dynamic_conv_implementation": "fused (XLA-compiled element-wise parts, fastest), shift (plain TF ops) or patches (tf.image.extract_patches reference).",
    "kernel_normalization": "softmax or none, over the k*k dynamic kernel taps.",
    "cvm_base_channels": "Width of the first CVM stage.",
    "cvm_depth": "Number of stride-2 stages of the CVM.",
    "cvm_normalization": "Normalisation in the CVM's encoder and decoder: group (default; per example, matched best, see README) or none (batch norm was retired).",
    "max_disparity": "Upper bound of the predicted disparity, LR pixels.",
    "geometry": "Camera rig the model serves: stereo (NIR camera to the right) or aligned (registered pair, zero disparity).",
    "lambda_cssc": "Weight lambda1 of the cross-spectral spatial consistency loss (paper: 0.1).",
}

FLAGS = flags.FLAGS
define_dataclass_flags(flags, run_config.train_config_fields(), TRAIN_HELP)
define_dataclass_flags(flags, run_config.model_config_fields(), MODEL_HELP, defaults_none=True)


def main(argv):
    if len(argv) > 1:
        fail("train.py", f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    quiet_library_logs()
    quiet_tfds_notices()
    if FLAGS.mixed_precision and FLAGS["precision"].present and FLAGS.precision != "float16":
        fail("train.py", f"--mixed_precision (float16) disagrees with --precision={FLAGS.precision}; "
             "use --precision alone")
    try:
        train_config, model_config = run_config.build_configs(
            flag_values(FLAGS, run_config.train_config_fields()),
            flag_values(FLAGS, run_config.model_config_fields(), only_set=True),
        )
        run_config.validate_configs(train_config, model_config)
    except run_config.ConfigError as error:
        fail("train.py", str(error))
    quiet_tensorflow()  # only now: a bad setting above is refused in a fraction of a second
    quiet_dataset_progress()  # (imports TensorFlow Datasets)
    from cspsr_tf.data.sources import DataError
    from cspsr_tf.train import loop, run_dir

    try:
        summary = loop.run_training(train_config, model_config)
    except (run_config.ConfigError, DataError, FileNotFoundError) as error:
        fail("train.py", str(error), getattr(error, "details", ""))
    step, target, where = summary["step"], summary["target_steps"], summary["model_dir"]
    if summary["stopped"] == "sigterm":
        print(
            f"train.py: stopped early by SIGTERM at step {step} of {target}; checkpoint saved in "
            f"{where}; run the same command to resume",
            file=sys.stderr,
        )
        sys.exit(STOPPED_EARLY)
    if summary["stopped"] == "time_budget":
        done = f"Stopped at step {step} of {target} (--max_minutes reached); outputs in {where}"
    else:
        done = f"Trained to step {step}; outputs in {where}"
    if train_config.nir_side == "left":  # the weights are a NIR-right model's (mirrored data)
        done += " (the model takes mirrored pairs: run predict / evaluate.py / the exports with --nir_side=left)"
    warning = run_dir.below_bicubic_message(run_dir.last_validation(where))
    # The last line says what a user must know: a model worse than bicubic is not done.
    print(f"{done}. Warning: {warning}" if warning else done)


if __name__ == "__main__":
    run_main(main, "train.py")
