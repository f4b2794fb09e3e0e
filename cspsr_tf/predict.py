"""Super-resolves one VIS-left / NIR-right pair of your own images.

    python -m cspsr_tf.predict --model runs/x4/model.keras \\
        --vis left.png --nir right.png --out left_x4.png --disparity_out disparity.png

The inputs are the low-resolution images, of any size (the same for both). VIS: 8- or
16-bit RGB PNG / TIFF / JPEG (an alpha channel is dropped with a warning). NIR: 8- or
16-bit, one channel, or three equal channels (one is taken), or three different channels
(converted to grey with a warning). The NIR must come from the camera to the *right* of the
visible one, rectified, as in training. The output is `scale` times larger: 8-bit for an
8-bit VIS input, 16-bit (PNG / TIFF) for a 16-bit one. `--disparity_out` writes the left
disparity map (LR pixels) as a colour PNG, or as raw float32 with `.npy` / `.tif`.
`--precision bfloat16` computes in bfloat16 (faster on CPUs with AVX512_BF16 / AMX; the
disparity stays float32, see cspsr_tf/model/precision.py); the default is float32 (an exported
SavedModel: the precision it was exported in).

Large frames: `--tile N` runs overlapping N x N LR tiles and keeps only one row of tiles in
memory; a `.png` (or `.npy`) output is then written band by band as the rows finish. Before
starting, the memory needed is estimated; when it exceeds what is free, predict says so in
one line and suggests a `--tile`.

Any problem with the arguments or the files (unreadable or missing image, sizes that differ,
wrong channel count, missing model, an output path that is a folder or lies under a file,
an existing output without `--overwrite`, not enough memory) prints one line on stderr and
exits with code 2; no output file is written then, and outputs only appear once complete
(temporary names, renamed at the end), with the mode a new file gets under the umask.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from cspsr_tf.model.precision import PRECISIONS  # noqa: E402  (no TensorFlow import)
from cspsr_tf.model.run_options import define_speed_flags  # noqa: E402  (no TensorFlow import)
from cspsr_tf.util.cli import run_main  # noqa: E402

# TensorFlow and the model code are imported only once the inputs have been checked, so a
# bad argument is reported in a fraction of a second.

flags.DEFINE_string("model", None, "Trained model: a .keras file or a training directory.")
flags.DEFINE_string("vis", None, "Low-resolution left visible image (RGB, 8- or 16-bit).")
flags.DEFINE_string("nir", None, "Low-resolution right NIR image, same size as --vis.")
flags.DEFINE_string("out", None, "Where to write the super-resolved image (.png or .tif).")
flags.DEFINE_string("disparity_out", None, "Optional left disparity map: .png colour, .npy/.tif.")
flags.DEFINE_integer("tile", None, "Tile side in LR pixels for large frames (default: whole).")
flags.DEFINE_integer("tile_overlap", 8, "LR pixels shared and blended by neighbouring tiles.")
flags.DEFINE_bool("self_ensemble", False, "Average with the vertically flipped prediction.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out / --disparity_out.")
flags.DEFINE_enum(
    "geometry", None, ["stereo", "aligned"],
    "Camera rig of the pair: stereo (NIR camera to the right; the CVM aligns it) or aligned (a "
    "registered pair: zero disparity). Default: the model's own (stereo unless trained otherwise).",
)
define_speed_flags(flags)

FLAGS = flags.FLAGS

_DTYPE_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
_IMAGE_EXTENSIONS_ANY_DEPTH = (".png", ".tif", ".tiff")
_IMAGE_EXTENSIONS_8BIT = (".jpg", ".jpeg", ".bmp")
_DISPARITY_EXTENSIONS = (".png", ".npy", ".tif", ".tiff")


class InputError(Exception):
    """A problem with the user's arguments or files, reported as one line (exit code 2)."""


def _read_image(path, flag):
    if not os.path.isfile(path):
        raise InputError(f"{flag} {path}: no such file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise InputError(f"{flag} {path}: cannot read ({error.strerror or error})") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InputError(f"{flag} {path}: not a readable image (PNG, TIFF, JPEG, ...)")
    if image.dtype not in _DTYPE_MAX:
        raise InputError(
            f"{flag} {path}: unsupported pixel type {image.dtype} (8- or 16-bit expected)"
        )
    return image


def read_vis(path, flag="--vis"):
    """Reads an RGB image file as H x W x 3 RGB, uint8 or uint16 (alpha dropped)."""
    image = _read_image(path, flag)
    channels = 1 if image.ndim == 2 else image.shape[-1]
    if channels == 4:
        logging.warning("%s %s has an alpha channel; it is ignored.", flag, path)
        image = image[..., :3]
        channels = 3
    if channels != 3:
        raise InputError(
            f"{flag} {path}: has {channels} channel(s); an RGB image with 3 channels is needed"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_nir(path, flag="--nir"):
    """Reads an NIR image file as H x W, uint8 or uint16.

    Three equal channels give one of them; three different channels are converted to grey
    (BT.601 weights, with a warning); an alpha channel is dropped with a warning.
    """
    image = _read_image(path, flag)
    if image.ndim == 2:
        return image
    channels = image.shape[-1]
    if channels == 1:
        return image[..., 0]
    if channels == 4:
        logging.warning("%s %s has an alpha channel; it is ignored.", flag, path)
        image = image[..., :3]
        channels = 3
    if channels != 3:
        raise InputError(f"{flag} {path}: has {channels} channels; 1 or 3 expected")
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(
        image[..., 1], image[..., 2]
    ):
        return np.ascontiguousarray(image[..., 0])
    logging.warning(
        "%s %s has 3 different channels; converting it to grey. Is it really an NIR image?",
        flag, path,
    )
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _to_float(image, name):
    image = np.asarray(image)
    if image.dtype not in _DTYPE_MAX:
        raise ValueError(f"{name} must be uint8 or uint16. Received: dtype={image.dtype}")
    return image.astype(np.float32) / _DTYPE_MAX[image.dtype]


def predict_pair(model, config, vis_rgb, nir, tile=None, *, overlap=8, self_ensemble=False):
    """Super-resolves one LR pair held in memory.

    Args:
        model: a CSPSR Keras model.
        config: its `CSPSRConfig`, or None (the scale is then read from the model).
        vis_rgb: uint8 (or uint16) RGB image [h, w, 3], the left visible view.
        nir: uint8 (or uint16) NIR image [h, w] or [h, w, 1], the right view.
        tile: None for one forward pass, else the LR tile side (`tiling.tiled_predict`).
        overlap: tile overlap in LR pixels, with `tile`.
        self_ensemble: average with the vertically flipped pass.

    Returns:
        dict: "sr" [h*s, w*s, 3] in the dtype of `vis_rgb` (uint8 for uint8 input; rounded
        after clipping to [0, 1]); "sr_float" float32 in [0, 1]; "disp_l" float32 [h, w]
        left disparity in LR pixels, or None for a model without CVM; "scale".
    """
    from cspsr_tf.infer import tiling

    vis_rgb, nir = _check_pair(vis_rgb, nir)
    scale = tiling.model_scale(model, config)
    outputs = tiling.predict(
        model, _to_float(vis_rgb, "vis_rgb"), _to_float(nir, "nir")[..., np.newaxis], scale,
        tile=tile, self_ensemble=self_ensemble, overlap=overlap, keys=("vis_sr", "disp_l"),
    )
    sr = np.clip(outputs["vis_sr"][0], 0.0, 1.0)
    return {
        "sr": _sr_to_dtype(sr, vis_rgb.dtype),
        "sr_float": sr,
        "disp_l": outputs["disp_l"][0, ..., 0] if "disp_l" in outputs else None,
        "scale": scale,
    }


def _check_pair(vis_rgb, nir):
    vis_rgb = np.asarray(vis_rgb)
    nir = np.asarray(nir)
    if nir.ndim == 3 and nir.shape[-1] == 1:
        nir = nir[..., 0]
    if vis_rgb.ndim != 3 or vis_rgb.shape[-1] != 3:
        raise ValueError(f"vis_rgb must be [h, w, 3]. Received: shape={vis_rgb.shape}")
    if nir.ndim != 2:
        raise ValueError(f"nir must be [h, w] or [h, w, 1]. Received: shape={nir.shape}")
    if vis_rgb.shape[:2] != nir.shape:
        raise ValueError(
            f"vis_rgb and nir differ in size. Received: {vis_rgb.shape[:2]} and {nir.shape}"
        )
    return vis_rgb, nir


def _sr_to_dtype(sr, dtype):
    """Clipped, rounded [0, 1] floats as uint8 / uint16 (float64 so 16-bit rounds exactly)."""
    sr = np.clip(sr, 0.0, 1.0).astype(np.float64)
    return np.round(sr * _DTYPE_MAX[np.dtype(dtype)]).astype(dtype)


def _extension(path):
    return os.path.splitext(path)[1].lower()


def _encode_image(path, image):
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(_extension(path), image)
    if not ok:
        raise InputError(f"cannot encode a {image.dtype} image as {path}")
    return encoded.tobytes()


class _OutputFile:
    """One output filled band by band: PNG and .npy are streamed, other formats held whole.

    Args:
        path: the target; the data goes to a staged temporary file until `commit`.
        staged: an `atomic_files.StagedFiles`.
        shape: (height, width, channels) of what `convert` returns.
        dtype: the file's pixel type.
        convert: float32 band of the model output -> rows of the file.
    """

    def __init__(self, path, staged, shape, dtype, convert):
        from cspsr_tf.infer import png_writer

        self._path, self._shape, self._dtype, self._convert = path, shape, dtype, convert
        self._file = staged.open(path)
        self._row = 0
        self._png = self._array = None
        height, width, channels = shape
        extension = _extension(path)
        if extension == ".png":
            self._png = png_writer.PngWriter(self._file, width, height, channels, dtype)
        elif extension == ".npy":
            np.lib.format.write_array_header_1_0(self._file, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(dtype).newbyteorder("<")),
                "fortran_order": False, "shape": shape[:2] if channels == 1 else shape,
            })
        else:  # OpenCV's TIFF / JPEG encoders need the whole image
            self._array = np.empty(shape, dtype)

    def write(self, band):
        rows = self._convert(band)
        stop = self._row + rows.shape[0]
        if self._png is not None:
            self._png.write_rows(rows)
        elif self._array is not None:
            self._array[self._row : stop] = rows.reshape(-1, *self._shape[1:])
        else:
            self._file.write(rows.astype(np.dtype(self._dtype).newbyteorder("<")).tobytes())
        self._row = stop

    def finish(self):
        if self._row != self._shape[0]:
            raise RuntimeError(f"{self._path}: {self._row} of {self._shape[0]} rows written")
        if self._png is not None:
            self._png.close()
        elif self._array is not None:
            image = self._array[..., 0] if self._shape[2] == 1 else self._array
            self._file.write(_encode_image(self._path, image))
            self._array = None


def _check_output_path(path, flag, overwrite):
    """One-line errors for an output path that cannot be written, before any work."""
    if os.path.isdir(path):
        raise InputError(
            f"{flag} {path}: is a folder; give a file name, e.g. {os.path.join(path, 'sr.png')}"
        )
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise InputError(f"{flag} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: no permission to write in {ancestor}")
    if os.path.lexists(path) and not overwrite:
        raise InputError(f"{flag} {path}: already exists; pass --overwrite to replace it")


def _check_outputs(out, disparity_out, tile, overlap, overwrite=False):
    extension = _extension(out)
    if extension not in _IMAGE_EXTENSIONS_ANY_DEPTH + _IMAGE_EXTENSIONS_8BIT:
        raise InputError(
            f"--out {out}: unsupported extension {extension!r} "
            f"(use one of {', '.join(_IMAGE_EXTENSIONS_ANY_DEPTH + _IMAGE_EXTENSIONS_8BIT)})"
        )
    if disparity_out is not None:
        if _extension(disparity_out) not in _DISPARITY_EXTENSIONS:
            raise InputError(
                f"--disparity_out {disparity_out}: unsupported extension "
                f"{_extension(disparity_out)!r} (use one of {', '.join(_DISPARITY_EXTENSIONS)})"
            )
        if os.path.abspath(disparity_out) == os.path.abspath(out):
            raise InputError(f"--out and --disparity_out are the same file: {out}")
    if tile is not None and tile < 1:
        raise InputError(f"--tile must be a positive number of LR pixels. Received: {tile}")
    if tile is not None and not 0 <= overlap < tile:
        raise InputError(
            f"--tile_overlap must lie in [0, tile). Received: tile_overlap={overlap}, "
            f"tile={tile}"
        )
    _check_output_path(out, "--out", overwrite)
    if disparity_out is not None:
        _check_output_path(disparity_out, "--disparity_out", overwrite)


# Forward-pass estimate (`tiling.forward_bytes_per_pixel`) times this, for TensorFlow's
# temporaries and allocator slack.
_MEMORY_MARGIN = 1.5
_SUGGESTED_TILES = (1024, 512, 256, 128, 64)


def memory_need(model, height, width, scale, *, tile, overlap, self_ensemble, out_path,
                dtype=np.uint8, disparity_out=None):
    """Estimated bytes `run` needs beyond what the process already holds."""
    from cspsr_tf.infer import tiling

    per_pixel = tiling.forward_bytes_per_pixel(model) * _MEMORY_MARGIN
    out_pixels = height * width * scale * scale
    out_bytes = out_pixels * 3 * np.dtype(dtype).itemsize
    if tile is None:
        # One pass; the float32 output is clipped, rounded in float64 and kept to the end.
        need = per_pixel * height * width + out_pixels * 3 * (4 + 4 + 8) + 2 * out_bytes
        if self_ensemble:
            need += out_pixels * 3 * 4 * 2
        return int(need)
    # The CVM runs once on the whole frame unless it is huge (`tiling.default_frame_matching`).
    frame_matching = tiling.default_frame_matching(model, height, width)
    max_disparity, align = tiling.tile_geometry(model, frame_matching)
    plan = tiling.TilePlan(height, width, tile, overlap, tiling.DEFAULT_CONTEXT,
                           max_disparity, align)
    biggest = max(h * w for h, w in plan.input_shapes(self_ensemble))
    # Band, its handed-over copy, clipping and float64 rounding: about 5 float32 bands.
    band = plan.tile_h * scale * width * scale * 3 * 4
    need = per_pixel * biggest + 5 * band
    if frame_matching:
        need += tiling.frame_matching_bytes(model, height, width, self_ensemble) * _MEMORY_MARGIN
    if _extension(out_path) != ".png":  # held whole, plus OpenCV's copy while encoding
        need += 2 * out_bytes
    if disparity_out is not None and _extension(disparity_out) not in (".png", ".npy"):
        need += 2 * height * width * 4
    return int(need)


def _check_memory(model, height, width, scale, tile, **kwargs):
    from cspsr_tf.infer import tiling

    available = tiling.available_memory_bytes()
    if available is not None:
        _check_memory_against(model, height, width, scale, tile, available, **kwargs)


def _check_memory_against(model, height, width, scale, tile, available, **kwargs):
    """Raises InputError, suggesting a --tile that fits, when `available` bytes are short."""
    need = memory_need(model, height, width, scale, tile=tile, **kwargs)
    if need <= available:
        return
    fits = [t for t in _SUGGESTED_TILES if (tile is None or t < tile) and memory_need(
        model, height, width, scale, tile=t, **kwargs) <= available]
    gib = 2.0**30
    what = "in one pass" if tile is None else f"with --tile={tile}"
    advice = (f"use --tile={fits[0]} (streamed to a .png --out)" if fits
              else "it does not fit even with --tile=64; free memory or use a smaller frame")
    raise InputError(
        f"a {width}x{height} frame needs about {need / gib:.1f} GiB {what}, but only "
        f"{available / gib:.1f} GiB is free; {advice}"
    )


def _whole_frame_bands(model, vis, nir, scale, keys, self_ensemble):
    """The whole-frame pass, as one band, like `tiling.iter_tiled_rows` hands them over."""
    from cspsr_tf.infer import tiling

    outputs = tiling.predict(
        model, _to_float(vis, "vis_rgb"), _to_float(nir, "nir")[..., np.newaxis], scale,
        self_ensemble=self_ensemble, keys=keys,
    )
    yield 0, vis.shape[0], {key: value[0] for key, value in outputs.items()}


def _write_outputs(bands, out_path, disparity_out, dtype, lr_size, scale, max_disparity, tile):
    """Streams the bands of rows into `--out` (and `--disparity_out`), staged: the files
    appear only when every band is written."""
    import tensorflow as tf

    from cspsr_tf.util import atomic_files, figures

    height, width = lr_size

    def disparity_rows(band):
        if _extension(disparity_out) == ".png":
            return figures.disparity_to_color(band[..., 0], max_disparity)
        return band[..., 0].astype(np.float32)

    with atomic_files.StagedFiles() as staged:
        outputs = {"vis_sr": _OutputFile(
            out_path, staged, (height * scale, width * scale, 3), dtype,
            lambda band: _sr_to_dtype(band, dtype),
        )}
        if disparity_out is not None:
            png = _extension(disparity_out) == ".png"
            outputs["disp_l"] = _OutputFile(
                disparity_out, staged, (height, width, 3 if png else 1),
                np.uint8 if png else np.float32, disparity_rows,
            )
        try:
            for _, _, band in bands:
                for key, output in outputs.items():
                    output.write(band[key])
        except (tf.errors.ResourceExhaustedError, MemoryError):
            advice = f"a --tile smaller than {tile}" if tile else "--tile=256"
            raise InputError(
                f"out of memory super-resolving the {width}x{height} frame; use {advice}"
            ) from None
        for output in outputs.values():
            output.finish()
        staged.commit()


def run(model_path, vis_path, nir_path, out_path, *, disparity_out=None, tile=None,
        overlap=8, self_ensemble=False, overwrite=False, stats=None, geometry=None,
        precision=None, ops=None):
    """Reads a pair of files, super-resolves it and writes the results.

    With `tile`, memory stays bounded by one row of tiles: each finished band of rows goes
    straight into the output file when it is a PNG (or .npy); other formats are assembled
    whole in the output's pixel type.

    Args:
        stats: optional dict, filled with "scale", "output_size" (w, h), and with `tile`
            "tiles", "forward_passes", "model_seconds" (see `tiling.iter_tiled_rows`).
        geometry: None (the model's own), `stereo`, or `aligned` (a registered pair: zero
            disparity; needs a `.keras` model or training directory).
        precision: None (float32; an exported SavedModel: its own), `float32`, `bfloat16`
            or `float16` (`runtime.load_for_running`).
        ops: None (`fused`; an exported SavedModel: its own), `fused`, `shift` or `patches`
            (`runtime.load_for_running`).

    Raises:
        InputError: for any problem with the arguments, the files or the memory needed;
            nothing is written then.
    """
    if precision is not None and precision not in PRECISIONS:
        raise InputError(f"--precision={precision!r} is not one of: {', '.join(PRECISIONS)}")
    _check_outputs(out_path, disparity_out, tile, overlap, overwrite)
    vis = read_vis(vis_path)
    nir = read_nir(nir_path)
    if vis.shape[:2] != nir.shape[:2]:
        raise InputError(
            f"size mismatch: --vis {vis_path} is {vis.shape[1]}x{vis.shape[0]} (WxH) but "
            f"--nir {nir_path} is {nir.shape[1]}x{nir.shape[0]}"
        )
    if vis.dtype == np.uint16 and _extension(out_path) not in _IMAGE_EXTENSIONS_ANY_DEPTH:
        raise InputError(
            f"--out {out_path}: a 16-bit input gives a 16-bit output; use .png or .tif"
        )

    from cspsr_tf.util.cli import quiet_tensorflow

    quiet_tensorflow()  # no CUDA / oneDNN start-up lines around our one-line errors

    from cspsr_tf.infer import tiling
    from cspsr_tf.model import runtime
    from cspsr_tf.model.precision import model_precision

    try:
        model, config = runtime.load_for_running(model_path, geometry, precision, ops)
    except runtime.RunSetupError as error:
        raise InputError(str(error)) from None
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"--model {model_path}: cannot load ({error})") from None
    max_disparity, _ = tiling.model_geometry(model)
    if disparity_out is not None and not max_disparity:
        raise InputError(
            f"--disparity_out: model {model_path} has no cross-view matching, so no disparity"
        )
    scale = tiling.model_scale(model, config)
    height, width = vis.shape[:2]
    _check_memory(model, height, width, scale, tile, overlap=overlap,
                  self_ensemble=self_ensemble, out_path=out_path, dtype=vis.dtype,
                  disparity_out=disparity_out)
    logging.info(
        "Super-resolving %s + %s (%dx%d, %s) with %s in %s", vis_path, nir_path,
        width, height, vis.dtype, model_path, model_precision(model),
    )
    stats = {} if stats is None else stats
    keys = ("vis_sr", "disp_l") if disparity_out is not None else ("vis_sr",)
    if tile is None:
        bands = _whole_frame_bands(model, vis, nir, scale, keys, self_ensemble)
    else:
        bands = tiling.iter_tiled_rows(
            model, vis, nir[..., np.newaxis], scale, keys=keys, tile=tile, overlap=overlap,
            self_ensemble=self_ensemble, stats=stats,
        )

    _write_outputs(bands, out_path, disparity_out, vis.dtype, (height, width), scale,
                   max_disparity, tile)
    stats.update(scale=scale, output_size=(width * scale, height * scale))
    logging.info("Wrote %s (%dx%d)", out_path, width * scale, height * scale)
    return stats


def main(argv):
    from cspsr_tf.util.cli import fail

    if len(argv) > 1:
        fail("predict", f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        for name in ("model", "vis", "nir", "out"):
            if not getattr(FLAGS, name):
                raise InputError(f"--{name} is required")
        run(
            FLAGS.model, FLAGS.vis, FLAGS.nir, FLAGS.out, disparity_out=FLAGS.disparity_out,
            tile=FLAGS.tile, overlap=FLAGS.tile_overlap, self_ensemble=FLAGS.self_ensemble,
            overwrite=FLAGS.overwrite, geometry=FLAGS.geometry, precision=FLAGS.precision,
            ops=FLAGS.ops,
        )
    except InputError as error:
        fail("predict", str(error))


if __name__ == "__main__":
    run_main(main, "predict")
