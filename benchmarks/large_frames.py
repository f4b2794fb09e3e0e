"""Tiled inference of large frames: peak memory, and agreement with whole-frame inference.

    .venv/bin/python benchmarks/large_frames.py                 # small preset
    .venv/bin/python benchmarks/large_frames.py --preset=paper
    .venv/bin/python benchmarks/large_frames.py --smoke

Two child processes, each building the same model from the same seed:

1. `large`: `cspsr_tf.infer.tiling.tiled_predict` of a 960x540 LR pair at x4, i.e. a 3840x2160
   output; reports the child's peak resident memory (VmHWM, its whole life), time and
   number of tiles. Target (issue): under 4 GiB.
2. `compare`: a pair small enough for one forward pass (default LR 256x256) run whole
   (`tiling.predict_whole`) and tiled with the same tile settings; PSNR of tiled against
   whole `vis_sr` (and `nir_sr`), both clipped to [0, 1], peak 1. Target: above 50 dB.

Random weights are perturbed before use: the untrained model's reconstruction convolutions
are zero-initialised, so its SR outputs would be exactly the bicubic upsampling, which tiles
perfectly and would make the comparison meaningless. Every trainable weight gets
`rel * std(w) * N(0, 1)` added (`abs_std * N(0, 1)` for weights that are constant, such as
the zero-initialised convolutions and batch-norm scales), seeded. The JSON records this and
the PSNR of the model's output against bicubic, to show the output is not bicubic.

Input: a real image pair from the shared samples when present (EPFL country 0040, resized
or cropped), else a synthetic multi-scale texture; the JSON says which.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cspsr_tf.util.cli import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import json  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from cspsr_tf.model.model_info import parse_size  # noqa: E402

NAME = "large_frames"
TARGET_PEAK_GIB = 4.0
TARGET_PSNR_DB = 50.0
SAMPLE_RGB = "epfl_nirscene1/YuChuang1205_VIS-NIR-registration-dataset/country/0040_rgb.jpg"
CALIBRATION_SIZE = (64, 64)
SAMPLE_NIR = "epfl_nirscene1/YuChuang1205_VIS-NIR-registration-dataset/country/0040_nir.jpg"

FLAGS = flags.FLAGS
bench_util.define_common_flags(flags, NAME, jit_default="off")
flags.DEFINE_string("preset", "small", "Config preset (paper for the full model).")
flags.DEFINE_integer("scale", 4, "SR factor.")
flags.DEFINE_string("large_lr_size", "540x960", "LR size HEIGHTxWIDTH of the large frame.")
flags.DEFINE_string("compare_lr_size", "256x256", "LR size HEIGHTxWIDTH for tiled vs whole.")
flags.DEFINE_integer("tile", 128, "LR tile core size (tiling.DEFAULT_TILE).")
flags.DEFINE_integer("overlap", 8, "LR overlap of neighbouring tiles.")
flags.DEFINE_integer("context", 16, "LR context around each tile.")
flags.DEFINE_integer("tile_batch", 1, "Tiles per forward pass.")
flags.DEFINE_integer("seed", 0, "Seed of the weights and of their perturbation.")
flags.DEFINE_float("perturb_rel", 0.1, "Perturbation std relative to each weight's std.")
flags.DEFINE_float("perturb_abs", 1e-3, "Perturbation std of constant (e.g. zero) weights.")
flags.DEFINE_float("residual_rms", 0.03, "RMS of vis_sr - bicubic the recon convs are scaled to.")
flags.DEFINE_string("sample_dir", bench_util.SAMPLES_DIR,
                    "Folder of the shared nirvis samples (synthetic input if absent).")
flags.DEFINE_integer("child_timeout", 3600, "Seconds allowed for one child.")


def make_pair(size, sample_dir, mode, seed=0):
    """(vis [h, w, 3], nir [h, w, 1]) float32 in [0, 1], and a description of the source.

    mode: `resize` (the whole sample resized to `size`) or `crop` (a centre crop at native
    resolution, resized only if the sample is smaller).
    """
    import cv2
    import numpy as np

    height, width = size
    rgb_path = os.path.join(sample_dir or "", SAMPLE_RGB)
    nir_path = os.path.join(sample_dir or "", SAMPLE_NIR)
    if sample_dir and os.path.isfile(rgb_path) and os.path.isfile(nir_path):
        vis = cv2.imread(rgb_path, cv2.IMREAD_COLOR)[..., ::-1]
        nir = cv2.imread(nir_path, cv2.IMREAD_GRAYSCALE)
        source = f"{SAMPLE_RGB} ({mode})"
        if mode == "crop" and vis.shape[0] >= height and vis.shape[1] >= width:
            y0, x0 = (vis.shape[0] - height) // 2, (vis.shape[1] - width) // 2
            vis, nir = vis[y0 : y0 + height, x0 : x0 + width], nir[y0 : y0 + height, x0 : x0 + width]
        else:
            vis = cv2.resize(vis, (width, height), interpolation=cv2.INTER_AREA)
            nir = cv2.resize(nir, (width, height), interpolation=cv2.INTER_AREA)
        vis = np.ascontiguousarray(vis, np.float32) / 255.0
        nir = nir.astype(np.float32)[..., np.newaxis] / 255.0
        return vis, nir, source
    rng = np.random.default_rng(seed)
    vis = np.zeros((height, width, 3), np.float32)
    nir = np.zeros((height, width, 1), np.float32)
    for cells in (4, 16, 64):
        coarse = rng.random((cells, cells, 4)).astype(np.float32)
        fine = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        vis += fine[..., :3] / 3
        nir += fine[..., 3:] / 3
    return np.clip(vis, 0, 1), np.clip(nir, 0, 1), "synthetic multi-scale texture"


def build_perturbed_model(cfg):
    import keras
    import numpy as np

    from cspsr_tf.infer import tiling
    from cspsr_tf.model.build import build_cspsr
    from cspsr_tf.model.configs import get_config

    bench_util.set_mixed_precision(cfg["mixed_precision"])
    keras.utils.set_random_seed(cfg["seed"])
    config = get_config(cfg["preset"], "full", scale=cfg["scale"])
    model = build_cspsr(config)
    rng = np.random.default_rng(cfg["seed"] + 1)
    perturbed = 0
    for variable in model.trainable_variables:
        value = np.asarray(variable.numpy(), np.float64)
        std = float(value.std())
        sigma = cfg["perturb_rel"] * std if std > 0 else cfg["perturb_abs"]
        variable.assign((value + sigma * rng.standard_normal(value.shape)).astype(value.dtype))
        perturbed += 1
    # The SR outputs are bicubic + pixel_shuffle(recon_conv(features)), linear in the recon
    # conv's kernel and bias: scale those so that the residual over bicubic has the RMS a
    # trained model's has (~0.03, i.e. ~30 dB from bicubic), measured on a small crop. Both
    # children do this identically, so they run the same weights.
    vis, nir, _ = make_pair(CALIBRATION_SIZE, cfg["sample_dir"], "crop", cfg["seed"])
    out = tiling.predict_whole(model, vis, nir)
    residual_scales = {}
    references = {"vis": vis[np.newaxis]}
    if "nir_sr" in out:
        references["nir"] = out["nir_l"] if "nir_l" in out else nir[np.newaxis]
    for prefix, reference in references.items():
        skip = np.asarray(model.get_layer(f"{prefix}_bicubic")(reference))
        rms = float(np.sqrt(np.mean((out[f"{prefix}_sr"] - skip) ** 2)))
        factor = cfg["residual_rms"] / rms if rms > 0 else 1.0
        for variable in model.get_layer(f"{prefix}_recon_conv").trainable_variables:
            variable.assign(variable.numpy() * factor)
        residual_scales[prefix] = {"rms_before": rms, "factor": factor}
    return model, config, {"perturbed_variables": perturbed, "residual_scaling": residual_scales}


def psnr(a, b):
    import numpy as np

    a = np.clip(np.asarray(a, np.float64), 0, 1)
    b = np.clip(np.asarray(b, np.float64), 0, 1)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def run_child(cfg):
    import numpy as np

    from cspsr_tf.infer import tiling
    from cspsr_tf.ops.resize import bicubic_upscale

    model, _, perturbation = build_perturbed_model(cfg)
    tile_args = {"tile": cfg["tile"], "overlap": cfg["overlap"], "context": cfg["context"],
                 "batch": cfg["tile_batch"]}
    if cfg["part"] == "large":
        vis, nir, source = make_pair(cfg["lr_size"], cfg["sample_dir"], "resize")
        with bench_util.PeakMemory() as memory:
            start = time.perf_counter()
            out = tiling.tiled_predict(model, vis, nir, cfg["scale"], **tile_args)
            seconds = time.perf_counter() - start
        height, width = cfg["lr_size"]
        n_tiles = (len(tiling.window_starts(height, min(cfg["tile"], height), cfg["overlap"]))
                   * len(tiling.window_starts(width, min(cfg["tile"], width), cfg["overlap"])))
        return {
            "part": "large", "input": source, "lr_size": list(cfg["lr_size"]),
            "output_shape": list(out["vis_sr"].shape), "seconds": round(seconds, 2),
            "num_tiles": n_tiles, "finite": bool(np.isfinite(out["vis_sr"]).all()),
            "memory": memory.result(), "perturbation": perturbation,
            "device": bench_util.machine_info()["device"],
        }
    vis, nir, source = make_pair(cfg["lr_size"], cfg["sample_dir"], "crop")
    whole = tiling.predict_whole(model, vis, nir)
    tiled = tiling.tiled_predict(model, vis, nir, cfg["scale"], **tile_args)
    bicubic = np.asarray(bicubic_upscale(vis[np.newaxis], cfg["scale"]))
    result = {
        "part": "compare", "input": source, "lr_size": list(cfg["lr_size"]),
        "psnr_tiled_vs_whole_vis_sr_db": psnr(tiled["vis_sr"], whole["vis_sr"]),
        "max_abs_diff_vis_sr": float(np.max(np.abs(tiled["vis_sr"] - whole["vis_sr"]))),
        "psnr_whole_vs_bicubic_vis_sr_db": psnr(whole["vis_sr"], bicubic),
        "perturbation": perturbation,
    }
    if "nir_sr" in whole:
        result["psnr_tiled_vs_whole_nir_sr_db"] = psnr(tiled["nir_sr"], whole["nir_sr"])
    if "disp_l" in whole:
        result["max_abs_diff_disp_l_lr_px"] = float(
            np.max(np.abs(tiled["disp_l"] - whole["disp_l"]))
        )
    return result


def main(argv):
    del argv
    if FLAGS.child:
        bench_util.emit_child_result(run_child(json.loads(FLAGS.child)))
        return
    preset, tile, overlap, context = FLAGS.preset, FLAGS.tile, FLAGS.overlap, FLAGS.context
    large, compare = parse_size(FLAGS.large_lr_size), parse_size(FLAGS.compare_lr_size)
    if FLAGS.smoke:
        preset, tile, overlap, context = "tiny", 32, 4, 8
        large, compare = (60, 100), (48, 48)
    base = {"preset": preset, "scale": FLAGS.scale, "tile": tile, "overlap": overlap,
            "context": context, "tile_batch": FLAGS.tile_batch, "seed": FLAGS.seed,
            "perturb_rel": FLAGS.perturb_rel, "perturb_abs": FLAGS.perturb_abs,
            "residual_rms": FLAGS.residual_rms, "sample_dir": FLAGS.sample_dir, "mixed_precision": FLAGS.mixed_precision}
    print(f"Tiled inference of LR {large[1]}x{large[0]} (WxH) at x{FLAGS.scale}, {preset} "
          "preset, in a child process ...", flush=True)
    large_result = bench_util.run_child(
        __file__, {**base, "part": "large", "lr_size": list(large)}, timeout=FLAGS.child_timeout
    )
    print(f"Tiled against whole-frame inference at LR {compare[1]}x{compare[0]} ...", flush=True)
    compare_result = bench_util.run_child(
        __file__, {**base, "part": "compare", "lr_size": list(compare)},
        timeout=FLAGS.child_timeout,
    )

    print()
    if "error" in large_result:
        print(f"large frame: FAILED: {large_result['error']}")
        mem_ok = None
    else:
        peak = large_result["memory"]["process_peak_gib"]
        mem_ok = peak <= TARGET_PEAK_GIB
        out_h, out_w = large_result["output_shape"][1:3]
        print(f"large frame: {out_w}x{out_h} output, {large_result['num_tiles']} tiles, "
              f"{large_result['seconds']:.1f} s, peak resident {peak:.2f} GiB "
              f"(target <= {TARGET_PEAK_GIB} GiB: {'OK' if mem_ok else 'MISSED'})")
    if "error" in compare_result:
        print(f"tiled vs whole: FAILED: {compare_result['error']}")
        psnr_ok = None
    else:
        value = compare_result["psnr_tiled_vs_whole_vis_sr_db"]
        psnr_ok = value > TARGET_PSNR_DB
        print(f"tiled vs whole vis_sr: PSNR {value:.2f} dB (target > {TARGET_PSNR_DB} dB: "
              f"{'OK' if psnr_ok else 'MISSED'}); the perturbed model's output is "
              f"{compare_result['psnr_whole_vs_bicubic_vis_sr_db']:.2f} dB from bicubic")

    data = bench_util.header(NAME, {
        "preset": preset, "scale": FLAGS.scale, "large_lr_size": list(large),
        "compare_lr_size": list(compare), "tile": tile, "overlap": overlap,
        "context": context, "tile_batch": FLAGS.tile_batch, "seed": FLAGS.seed,
        "perturb_rel": FLAGS.perturb_rel, "perturb_abs": FLAGS.perturb_abs,
        "mixed_precision": FLAGS.mixed_precision, "smoke": FLAGS.smoke,
    })
    data["targets"] = {"peak_resident_gib_max": TARGET_PEAK_GIB,
                       "psnr_tiled_vs_whole_db_min": TARGET_PSNR_DB}
    data["meets_target"] = {"peak_memory": mem_ok, "psnr": psnr_ok}
    data["notes"] = (
        "Random weights, perturbed: every trainable weight w += perturb_rel * std(w) * N(0,1) "
        "(perturb_abs * N(0,1) where w is constant, e.g. the zero-initialised reconstruction "
        "convs, whose untrained output would equal bicubic). Peak memory: VmHWM of a child "
        "process that built the model and ran only the tiled inference. PSNR on float "
        "outputs clipped to [0, 1], peak 1, all pixels."
    )
    data["large"] = large_result
    data["compare"] = compare_result
    bench_util.write_json(FLAGS.out, data)


if __name__ == "__main__":
    app.run(main)
