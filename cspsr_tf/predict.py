"""Super-resolves VIS-left / NIR-right pairs of your own images: one pair, or a list of them.

    python -m cspsr_tf.predict --model runs/x4/model.keras \\
        --vis left.png --nir right.png --out left_x4.png --disparity_out disparity.png

    python -m cspsr_tf.predict --model cspsr_small_x4 --pairs my_pairs/pairs.csv --out_dir sr/

The inputs are the low-resolution images, of any size (the same for both). VIS: 8- or
16-bit RGB PNG / TIFF / JPEG (an alpha channel is dropped with a warning). NIR: 8- or
16-bit, one channel, or three equal channels (one is taken), or three different channels
(converted to grey with a warning). The NIR must come from the camera to the *right* of the
visible one, rectified, as in training; for a rig with the NIR camera on the left, pass
`--nir_side=left` (both views are mirrored left-right, run, and the outputs mirrored back; the
disparity keeps its positive value, the NIR pixel of VIS column x then being at x + d). The output is `scale` times larger: 8-bit for an
8-bit VIS input, 16-bit (PNG / TIFF) for a 16-bit one. `--disparity_out` writes the left
disparity map (LR pixels) as a colour PNG, or as raw float32 with `.npy` / `.tif`.
`--precision` defaults to auto: bfloat16 on a CPU with AVX512_BF16 / AMX or a GPU of compute
capability >= 8.0, float32 elsewhere, the choice logged (the disparity stays float32, see
cspsr_tf/model/precision.py); `--precision float32` forces float32; an exported SavedModel
runs in the precision it was exported in.

`--model` takes a preset name, a `.keras` file, a training directory or a SavedModel exported
by export/export_savedmodel.py. A SavedModel's rig, precision and ops are baked into its graph:
`--geometry` other than the one it was exported for is refused (export it again with
`--geometry`), and with `--tile` its CVM runs tile by tile (it cannot be split after the CVM).

Many pairs: `--pairs=<csv> --out_dir=<dir>` reads a `pairs.csv` as the `nirvis_folder` dataset
does (header `rgb,nir[,geometry]`, paths relative to the CSV's folder; a `geometry` cell
`stereo` / `aligned` (or `registered`, `stereo_rgb_left_nir_right`) picks the rig of that row,
an empty cell or no column the model's own; `--geometry` overrides them all) and runs every
pair in one process: the model is loaded once (once per geometry the rows ask for), one
progress line per pair, pairs whose output exists are skipped unless `--overwrite`. Each
output is `<out_dir>/<rgb file name without extension>.png`; two rows with the same name, or
an output that would be one of the inputs, are refused before anything runs. A pair that
fails (missing or unreadable file, sizes that differ, not enough memory, a full disk) does not
stop the others; the failures are listed at the end and the exit code is then 2.

Large frames: `--tile N` runs overlapping N x N LR tiles and keeps only one row of tiles in
memory; a `.png` (or `.npy`) output is then written band by band as the rows finish. Every
tile has the same input size (no retracing), with a context derived from the model's
receptive field (`tiling.tile_context`); tiles below `tiling.minimum_tile` (at least 32, the
context, more than twice `--tile_overlap`) are refused. Before starting, the memory needed is
estimated (for a SavedModel from a Keras model of its config, an upper bound); when it exceeds
what is free, predict says so in one line and suggests a `--tile`.

Any problem with the arguments or the files (unreadable or missing image, sizes that differ,
wrong channel count, missing model, an output path that is a folder or lies under a file,
an existing output without `--overwrite`, a tile too small, not enough memory, a full disk)
prints one line on stderr and exits with code 2; no output file is written then, and outputs
only appear once complete (temporary names, renamed at the end), with the mode a new file
gets under the umask.

Exit codes: 0 done; 2 a bad argument or file (with `--pairs`: any pair failed); 143 stopped by
SIGTERM, 130 by SIGINT (Ctrl-C), i.e. 128 + the signal's number, as a shell reports a process
the signal killed. A stopped run first removes its temporary files, so nothing half-written
is left; with `--pairs` the outputs finished before stay, and the same command goes on with
the rest (existing outputs are skipped).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402
import csv  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from cspsr_tf.model.run_options import NIR_SIDE_HELP, NIR_SIDES, RUN_PRECISIONS, define_speed_flags  # noqa: E402  (no TensorFlow import)
from cspsr_tf.util.cli import run_main  # noqa: E402

# TensorFlow and the model code are imported only once the inputs have been checked, so a
# bad argument is reported in a fraction of a second.

flags.DEFINE_string(
    "model", None,
    "Trained model: a preset name, a .keras file, a training directory or an exported SavedModel.",
)
flags.DEFINE_string("vis", None, "Low-resolution left visible image (RGB, 8- or 16-bit).")
flags.DEFINE_string("nir", None, "Low-resolution right NIR image, same size as --vis.")
flags.DEFINE_string("out", None, "Where to write the super-resolved image (.png or .tif).")
flags.DEFINE_string("disparity_out", None, "Optional left disparity map: .png colour, .npy/.tif.")
flags.DEFINE_string(
    "pairs", None,
    "A pairs.csv (header rgb,nir[,geometry], paths relative to it): super-resolve every pair "
    "in one run, into --out_dir (instead of --vis / --nir / --out).",
)
flags.DEFINE_string("out_dir", None, "With --pairs: the folder of the outputs, <rgb stem>.png.")
flags.DEFINE_integer(
    "tile", None,
    "Tile side in LR pixels for large frames (default: whole). At least 32, and at least the "
    "model's context (its receptive field) and twice --tile_overlap: the minimum is named "
    "when a tile is refused.",
)
flags.DEFINE_integer("tile_overlap", 8, "LR pixels shared and blended by neighbouring tiles.")
flags.DEFINE_bool("self_ensemble", False, "Average with the vertically flipped prediction.")
flags.DEFINE_bool(
    "overwrite", False, "Replace an existing --out / --disparity_out (--pairs: existing outputs).")
flags.DEFINE_enum(
    "geometry", None, ["stereo", "aligned"],
    "Camera rig of the pair: stereo (NIR camera to the right; the CVM aligns it) or aligned (a "
    "registered pair: zero disparity). Default: the model's own (stereo unless trained otherwise).",
)
flags.DEFINE_enum("nir_side", None, list(NIR_SIDES), NIR_SIDE_HELP + " Default: the model's own "
                  "(right; a SavedModel exported with --nir_side: that side).")
define_speed_flags(flags)

FLAGS = flags.FLAGS

_DTYPE_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
_IMAGE_EXTENSIONS_ANY_DEPTH = (".png", ".tif", ".tiff")
_IMAGE_EXTENSIONS_8BIT = (".jpg", ".jpeg", ".bmp")
_DISPARITY_EXTENSIONS = (".png", ".npy", ".tif", ".tiff")
# `tiling.MIN_TILE`, checked before TensorFlow (which tiling imports) loads.
MIN_TILE = 32
# 128 + the signal's number: what a shell reports for a process the signal killed.
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class InputError(Exception):
    """A problem with the user's arguments or files, reported as one line (exit code 2)."""


class Interrupted(BaseException):  # not an error: a request to stop
    """SIGTERM or SIGINT arrived (`stop_on_signals`): raised in the main thread, it unwinds
    through every staged output (their temporary files are removed); exit `exit_code`.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.

    Attributes:
        signum: the signal's number; `done`: with --pairs, the pairs written before it.
    """

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = int(signum)
        self.done = None

    @property
    def signal_name(self):
        return signal.Signals(self.signum).name

    @property
    def exit_code(self):
        return 128 + self.signum


class _SignalState:
    """What `stop_on_signals` shares with the commit of a staged output."""

    stopping = False  # Interrupted was raised: later signals are ignored (cleanup finishes)
    held = 0  # inside `_signals_held`: a signal waits in `pending`
    pending = None


def _on_signal(signum, frame):
    del frame
    if _SignalState.stopping:
        return
    if _SignalState.held:
        _SignalState.pending = signum
        return
    _SignalState.stopping = True
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGINT raise `Interrupted` in the main thread while inside; the handlers
    before are restored at the end. (Elsewhere than the main thread: nothing changes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SignalState.stopping, _SignalState.held, _SignalState.pending = False, 0, None
    previous = {signum: signal.signal(signum, _on_signal)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _SignalState.pending = None


@contextlib.contextmanager
def _signals_held():
    """Holds SIGTERM / SIGINT while the staged files are renamed (all or none of them
    appear); a signal that arrived meanwhile is raised after."""
    _SignalState.held += 1
    try:
        yield
    finally:
        _SignalState.held -= 1
        if not _SignalState.held and _SignalState.pending is not None:
            signum, _SignalState.pending = _SignalState.pending, None
            if not _SignalState.stopping:
                _SignalState.stopping = True
                raise Interrupted(signum)


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


def predict_pair(model, config, vis_rgb, nir, tile=None, *, overlap=8, self_ensemble=False,
                 nir_side="right"):
    """Super-resolves one LR pair held in memory.

    Args:
        model: a CSPSR Keras model.
        config: its `CSPSRConfig`, or None (the scale is then read from the model).
        vis_rgb: uint8 (or uint16) RGB image [h, w, 3], the left visible view.
        nir: uint8 (or uint16) NIR image [h, w] or [h, w, 1], the right view.
        tile: None for one forward pass, else the LR tile side (`tiling.tiled_predict`; any
            size here, only the command line refuses tiles below `tiling.minimum_tile`).
        overlap: tile overlap in LR pixels, with `tile`.
        self_ensemble: average with the vertically flipped pass.
        nir_side: `right` (the model's rig) or `left` (the pair is run mirrored; the
            outputs come back in the pair's own orientation).

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
        config=config, nir_side=nir_side,
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
        try:
            with _signals_held():  # a signal waits until the new file is staged (removable)
                self._file = staged.open(path)
        except OSError as error:
            error.filename = path
            raise
        self._row = 0
        self._png = self._array = None
        height, width, channels = shape
        extension = _extension(path)
        with self._naming_errors():
            if extension == ".png":
                self._png = png_writer.PngWriter(self._file, width, height, channels, dtype)
            elif extension == ".npy":
                np.lib.format.write_array_header_1_0(self._file, {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(dtype).newbyteorder("<")),
                    "fortran_order": False, "shape": shape[:2] if channels == 1 else shape,
                })
            else:  # OpenCV's TIFF / JPEG encoders need the whole image
                self._array = np.empty(shape, dtype)

    @contextlib.contextmanager
    def _naming_errors(self):
        """OSErrors (a full disk) carry this output's path as their `filename`."""
        try:
            yield
        except OSError as error:
            if error.filename is None:
                error.filename = self._path
            raise

    def write(self, band):
        with self._naming_errors():
            self._write(band)

    def finish(self):
        with self._naming_errors():
            self._finish()

    def _write(self, band):
        rows = self._convert(band)
        stop = self._row + rows.shape[0]
        if self._png is not None:
            self._png.write_rows(rows)
        elif self._array is not None:
            self._array[self._row : stop] = rows.reshape(-1, *self._shape[1:])
        else:
            self._file.write(rows.astype(np.dtype(self._dtype).newbyteorder("<")).tobytes())
        self._row = stop

    def _finish(self):
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


def _check_tile_flags(tile, overlap):
    """The model-independent bounds of --tile / --tile_overlap (`check_tile` the rest)."""
    if tile is not None and tile < 1:
        raise InputError(f"--tile must be a positive number of LR pixels. Received: {tile}")
    if tile is not None and tile < MIN_TILE:
        raise InputError(
            f"--tile={tile} is below the minimum of {MIN_TILE} LR pixels (more for deep models: "
            f"see --help); use --tile={MIN_TILE} or more, or no --tile for one pass"
        )
    if tile is not None and not 0 <= overlap < tile:
        raise InputError(
            f"--tile_overlap must lie in [0, tile). Received: tile_overlap={overlap}, "
            f"tile={tile}"
        )


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
    _check_tile_flags(tile, overlap)
    _check_output_path(out, "--out", overwrite)
    if disparity_out is not None:
        _check_output_path(disparity_out, "--disparity_out", overwrite)


# Forward-pass estimate (`tiling.forward_bytes_per_pixel`) times this, for TensorFlow's
# temporaries and allocator slack.
_MEMORY_MARGIN = 1.5
_SUGGESTED_TILES = (1024, 512, 256, 128, 64)


def memory_need(model, height, width, scale, *, tile, overlap, self_ensemble, out_path,
                dtype=np.uint8, disparity_out=None, config=None):
    """Estimated bytes `run` needs beyond what the process already holds; None where the
    model gives no estimate (an exported SavedModel without config)."""
    from cspsr_tf.infer import tiling

    per_pixel = tiling.forward_bytes_per_pixel(model, config)
    if per_pixel is None:
        return None
    per_pixel *= _MEMORY_MARGIN
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
    plan = tiling.TilePlan(height, width, tile, overlap,
                           tiling.tile_context(model, config, frame_matching),
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
    if need is None:
        logging.info("No memory estimate for %s (no config); not checked.",
                     getattr(model, "name", "the model"))
        return
    if need <= available:
        return
    smallest = _minimum_tile(model, kwargs.get("config"), kwargs["overlap"], height, width)
    candidates = [t for t in _SUGGESTED_TILES if t >= smallest] or [smallest]
    fits = [t for t in candidates if (tile is None or t < tile) and memory_need(
        model, height, width, scale, tile=t, **kwargs) <= available]
    gib = 2.0**30
    what = "in one pass" if tile is None else f"with --tile={tile}"
    advice = (f"use --tile={fits[0]} (streamed to a .png --out)" if fits
              else f"it does not fit even with --tile={candidates[-1]}; free memory or use a "
                   "smaller frame")
    raise InputError(
        f"a {width}x{height} frame needs about {need / gib:.1f} GiB {what}, but only "
        f"{available / gib:.1f} GiB is free; {advice}"
    )


def _minimum_tile(model, config, overlap, height, width, with_context=False):
    """`tiling.minimum_tile` of `model` on a frame of this size (and its context)."""
    from cspsr_tf.infer import tiling

    frame_matching = tiling.default_frame_matching(model, height, width)
    context = tiling.tile_context(model, config, frame_matching)
    _, align = tiling.tile_geometry(model, frame_matching)
    minimum = tiling.minimum_tile(context, overlap, align)
    return (minimum, context) if with_context else minimum


def check_tile(model, config, tile, overlap, height, width):
    """Raises InputError for a `tile` below `tiling.minimum_tile` of this model and frame
    (its context: the receptive field, plus the CVM's where it runs per tile)."""
    if tile is None:
        return
    minimum, context = _minimum_tile(model, config, overlap, height, width, with_context=True)
    if tile < minimum:
        raise InputError(
            f"--tile={tile} is below the minimum of {minimum} LR pixels for this model (a "
            f"context of {context} px on each side, --tile_overlap={overlap}); use "
            f"--tile={minimum} or more, or no --tile for one pass"
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
    appear only when every band is written. Any failure (out of memory, a full disk, an
    interrupt) removes the temporary files."""
    try:
        _stage_outputs(bands, out_path, disparity_out, dtype, lr_size, scale, max_disparity,
                       tile)
    except OSError as error:
        flag = {out_path: "--out ", disparity_out: "--disparity_out "}.get(error.filename, "")
        raise InputError(
            f"cannot write {flag}{error.filename or out_path}: {error.strerror or error}; "
            "nothing was written"
        ) from None


@contextlib.contextmanager
def _staged_files(atomic_files):
    """`atomic_files.StagedFiles` whose cleanup no signal interrupts (it waits until the
    temporary files are removed, then stops the run)."""
    staged = atomic_files.StagedFiles()
    try:
        yield staged
    finally:
        with _signals_held():
            staged.discard()


def _stage_outputs(bands, out_path, disparity_out, dtype, lr_size, scale, max_disparity, tile):
    import tensorflow as tf

    from cspsr_tf.util import atomic_files, figures

    height, width = lr_size

    def disparity_rows(band):
        if _extension(disparity_out) == ".png":
            return figures.disparity_to_color(band[..., 0], max_disparity)
        return band[..., 0].astype(np.float32)

    with _staged_files(atomic_files) as staged:
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
        with _signals_held():
            staged.commit()


def load(model_path, geometry=None, precision=None, ops=None):
    """`(model, config)` as predict runs them (`runtime.load_for_running`).

    An exported SavedModel carries its config, but its rig is baked into its graph: a
    `geometry` other than its own cannot be rebuilt and is refused.

    Raises:
        InputError: one line, for a model that cannot be found, loaded or set up.
    """
    from cspsr_tf.util.cli import quiet_tensorflow

    quiet_tensorflow()  # no CUDA / oneDNN start-up lines around our one-line errors

    from cspsr_tf.model import runtime

    try:
        return runtime.load_for_running(model_path, geometry, precision, ops)
    except runtime.RunSetupError as error:
        raise InputError(str(error)) from None
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"--model {model_path}: cannot load ({error})") from None


def _read_pair(vis_path, nir_path, out_path, names=("--vis", "--nir")):
    vis = read_vis(vis_path, names[0])
    nir = read_nir(nir_path, names[1])
    if vis.shape[:2] != nir.shape[:2]:
        raise InputError(
            f"size mismatch: {names[0]} {vis_path} is {vis.shape[1]}x{vis.shape[0]} (WxH) but "
            f"{names[1]} {nir_path} is {nir.shape[1]}x{nir.shape[0]}"
        )
    if vis.dtype == np.uint16 and _extension(out_path) not in _IMAGE_EXTENSIONS_ANY_DEPTH:
        raise InputError(
            f"--out {out_path}: a 16-bit input gives a 16-bit output; use .png or .tif"
        )
    return vis, nir


def _run_loaded(model, config, model_path, vis, nir, out_path, *, disparity_out, tile,
                overlap, self_ensemble, stats, nir_side=None):
    """Super-resolves a pair read into memory with a loaded model and writes the outputs
    (mirrored in and out for a rig the model does not take as it is, `nir_side`)."""
    from cspsr_tf.infer import tiling
    from cspsr_tf.model import runtime
    from cspsr_tf.model.precision import model_precision

    try:
        mirror = runtime.needs_mirroring(model, nir_side)
    except runtime.RunSetupError as error:
        raise InputError(str(error)) from None
    if mirror:
        vis, nir = tiling.mirror_views(vis), tiling.mirror_views(nir)

    max_disparity, _ = tiling.model_geometry(model)
    if disparity_out is not None and not max_disparity:
        raise InputError(
            f"--disparity_out: model {model_path} has no cross-view matching, so no disparity"
        )
    height, width = vis.shape[:2]
    check_tile(model, config, tile, overlap, height, width)
    scale = tiling.model_scale(model, config)
    _check_memory(model, height, width, scale, tile, overlap=overlap,
                  self_ensemble=self_ensemble, out_path=out_path, dtype=vis.dtype,
                  disparity_out=disparity_out, config=config)
    logging.info("Super-resolving a %dx%d %s pair with %s in %s", width, height, vis.dtype,
                 model_path, model_precision(model))
    keys = ("vis_sr", "disp_l") if disparity_out is not None else ("vis_sr",)
    if tile is None:
        bands = _whole_frame_bands(model, vis, nir, scale, keys, self_ensemble)
    else:
        bands = tiling.iter_tiled_rows(
            model, vis, nir[..., np.newaxis], scale, keys=keys, tile=tile, overlap=overlap,
            self_ensemble=self_ensemble, stats=stats, config=config,
        )
    if mirror:
        bands = ((top, bottom, {key: tiling.mirror_views(value) for key, value in band.items()})
                 for top, bottom, band in bands)
    _write_outputs(bands, out_path, disparity_out, vis.dtype, (height, width), scale,
                   max_disparity, tile)
    stats.update(scale=scale, output_size=(width * scale, height * scale))
    logging.info("Wrote %s (%dx%d)", out_path, width * scale, height * scale)
    return stats


def run(model_path, vis_path, nir_path, out_path, *, disparity_out=None, tile=None,
        overlap=8, self_ensemble=False, overwrite=False, stats=None, geometry=None,
        precision=None, ops=None, nir_side=None):
    """Reads a pair of files, super-resolves it and writes the results.

    With `tile`, memory stays bounded by one row of tiles: each finished band of rows goes
    straight into the output file when it is a PNG (or .npy); other formats are assembled
    whole in the output's pixel type.

    Args:
        stats: optional dict, filled with "scale", "output_size" (w, h), and with `tile`
            "tiles", "forward_passes", "model_seconds", "context", "input_shape" (see
            `tiling.iter_tiled_rows`).
        geometry: None (the model's own), `stereo`, or `aligned` (a registered pair: zero
            disparity; an exported SavedModel only takes its own).
        precision: None (float32; an exported SavedModel: its own), `float32`, `bfloat16`
            or `float16` (`runtime.load_for_running`).
        ops: None (`fused`; an exported SavedModel: its own), `fused`, `shift` or `patches`
            (`runtime.load_for_running`).
        nir_side: None (the model's own rig: right, or the side a SavedModel was exported
            for), `right` or `left` (the pair is mirrored in and the outputs mirrored back).

    Raises:
        InputError: for any problem with the arguments, the files, the memory needed or
            the disk; nothing is written then.
        Interrupted: within `stop_on_signals`, at a SIGTERM / SIGINT; nothing is written.
    """
    if precision is not None and precision not in RUN_PRECISIONS:
        raise InputError(f"--precision={precision!r} is not one of: {', '.join(RUN_PRECISIONS)}")
    _check_outputs(out_path, disparity_out, tile, overlap, overwrite)
    vis, nir = _read_pair(vis_path, nir_path, out_path)
    model, config = load(model_path, geometry, precision, ops)
    return _run_loaded(model, config, model_path, vis, nir, out_path,
                       disparity_out=disparity_out, tile=tile, overlap=overlap,
                       self_ensemble=self_ensemble, stats={} if stats is None else stats,
                       nir_side=nir_side)


# --- Many pairs (--pairs) ------------------------------------------------------------------

# The `geometry` cells of a pairs.csv (datasets/nirvis_folder), case-insensitive.
GEOMETRY_VALUES = {
    "stereo_rgb_left_nir_right": "stereo", "stereo": "stereo",
    "aligned": "aligned", "registered": "aligned",
}


class PairRow:
    """One row of a pairs.csv: its line number, its rgb cell (`name`), the two image paths,
    its geometry (None: the model's own) and its output path."""

    def __init__(self, line, name, rgb, nir, geometry, out):
        self.line, self.name, self.rgb, self.nir = line, name, rgb, nir
        self.geometry, self.out = geometry, out


def read_pairs(csv_path, out_dir):
    """The rows of a pairs.csv with their outputs `<out_dir>/<rgb stem>.png`.

    Raises:
        InputError: an unreadable CSV, no `rgb` / `nir` column, a row with one path only,
            an unknown geometry, no rows, two rows with the same output name, or an output
            that would replace an input.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            cells = [(reader.line_num, row) for row in reader]  # the file's line numbers
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"--pairs {csv_path}: cannot read ({error})") from None
    if "rgb" not in header or "nir" not in header:
        raise InputError(f"--pairs {csv_path}: needs the columns rgb and nir in its header line "
                         f"(found: {','.join(header) or 'nothing'})")
    base = os.path.dirname(os.path.abspath(csv_path))
    rows = [_pair_row(csv_path, base, out_dir, line, row) for line, row in cells]
    rows = [row for row in rows if row is not None]
    if not rows:
        raise InputError(f"--pairs {csv_path}: lists no pair")
    _check_pair_outputs(csv_path, rows)
    return rows


def _pair_row(csv_path, base, out_dir, line, row):
    rgb, nir = (row.get("rgb") or "").strip(), (row.get("nir") or "").strip()
    if not rgb and not nir:
        return None  # a blank line
    where = f"--pairs {csv_path}, line {line}"
    if not rgb or not nir:
        raise InputError(f"{where}: both rgb and nir must be given")
    cell = (row.get("geometry") or "").strip().lower()
    if cell and cell not in GEOMETRY_VALUES:
        raise InputError(f"{where}: unknown geometry {row.get('geometry')!r} "
                         f"(use one of {', '.join(sorted(GEOMETRY_VALUES))}, or leave it empty)")
    stem = os.path.splitext(os.path.basename(rgb.replace("\\", "/")))[0]
    return PairRow(line, rgb, os.path.join(base, rgb), os.path.join(base, nir),
                   GEOMETRY_VALUES.get(cell), os.path.join(out_dir, stem + ".png"))


def _check_pair_outputs(csv_path, rows):
    seen = {}
    inputs = {os.path.abspath(p): row.line for row in rows for p in (row.rgb, row.nir)}
    for row in rows:
        key = os.path.abspath(row.out)
        if key in seen:
            raise InputError(
                f"--pairs {csv_path}: lines {seen[key]} and {row.line} would both write "
                f"{row.out} (outputs are named after the rgb file); rename one of the files"
            )
        if key in inputs:
            raise InputError(
                f"--pairs {csv_path}, line {row.line}: the output {row.out} would replace an "
                f"input of line {inputs[key]}; use another --out_dir"
            )
        seen[key] = row.line


def _pairs_models(model_path, rows, geometry, precision, ops):
    """{geometry or None: (model, config)}: one load per rig the rows ask for (None: the
    model's own; a rig equal to the first model's own reuses it)."""
    wanted = {geometry or row.geometry for row in rows}
    first = None if None in wanted else sorted(wanted)[0]
    models = {first: load(model_path, first, precision, ops)}
    _, own_config = models[first]
    for rig in sorted(wanted - {first}):
        same = own_config is not None and (not own_config.use_cvm or own_config.geometry == rig)
        models[rig] = models[first] if same else load(model_path, rig, precision, ops)
    return models


def _check_out_dir(out_dir):
    ancestor = os.path.abspath(out_dir)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise InputError(f"--out_dir {out_dir}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"--out_dir {out_dir}: no permission to write in {ancestor}")


def _print_progress(line):
    print(line, flush=True)


def run_pairs(model_path, csv_path, out_dir, *, tile=None, overlap=8, self_ensemble=False,
              overwrite=False, geometry=None, precision=None, ops=None, nir_side=None,
              progress=_print_progress):
    """Super-resolves every pair of a pairs.csv into `out_dir`, with one model load.

    Args:
        tile, overlap, self_ensemble, overwrite, geometry, precision, ops, nir_side: as
            for `run`; `geometry` overrides the CSV's column.
        progress: called with one line per pair (default: printed on stdout).

    Returns:
        dict: "total", "written", "skipped" (outputs that exist, without `overwrite`) and
        "failed" ([(PairRow, one-line reason)]).

    Raises:
        InputError: a problem with the arguments, the CSV or the model (before any pair).
        Interrupted: within `stop_on_signals`; its `done` counts the pairs written.
    """
    if precision is not None and precision not in RUN_PRECISIONS:
        raise InputError(f"--precision={precision!r} is not one of: {', '.join(RUN_PRECISIONS)}")
    _check_tile_flags(tile, overlap)
    _check_out_dir(out_dir)
    rows = read_pairs(csv_path, out_dir)
    models = _pairs_models(model_path, rows, geometry, precision, ops)
    os.makedirs(out_dir, exist_ok=True)
    summary = {"total": len(rows), "written": 0, "skipped": 0, "failed": []}
    try:
        for index, row in enumerate(rows, start=1):
            _pairs_step(f"[{index}/{len(rows)}] {row.name}", model_path,
                        models[geometry or row.geometry], row, summary, progress, tile=tile,
                        overlap=overlap, self_ensemble=self_ensemble, overwrite=overwrite,
                        nir_side=nir_side)
    except Interrupted as stop:
        stop.done = summary["written"]
        raise
    return summary


def _pairs_step(head, model_path, loaded, row, summary, progress, *, tile, overlap,
                self_ensemble, overwrite, nir_side=None):
    """One pair of `run_pairs`: skipped, written or failed (recorded in `summary`)."""
    if os.path.lexists(row.out) and not overwrite:
        summary["skipped"] += 1
        progress(f"{head}: {row.out} exists, skipped (--overwrite replaces it)")
        return
    started = time.perf_counter()
    try:
        stats = _run_pair(model_path, loaded, row, tile, overlap, self_ensemble, overwrite,
                          nir_side)
    except InputError as error:
        summary["failed"].append((row, str(error)))
        progress(f"{head}: FAILED: {error}")
    except Exception as error:  # one pair's unexpected failure must not stop the rest
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        summary["failed"].append((row, reason))
        progress(f"{head}: FAILED: {reason}")
    else:
        summary["written"] += 1
        width, height = stats["output_size"]
        progress(f"{head} -> {row.out} ({width}x{height}, "
                 f"{time.perf_counter() - started:.1f} s)")


def _run_pair(model_path, loaded, row, tile, overlap, self_ensemble, overwrite, nir_side=None):
    _check_output_path(row.out, "output", overwrite)
    vis, nir = _read_pair(row.rgb, row.nir, row.out, names=("rgb", "nir"))
    model, config = loaded
    return _run_loaded(model, config, model_path, vis, nir, row.out, disparity_out=None,
                       tile=tile, overlap=overlap, self_ensemble=self_ensemble, stats={},
                       nir_side=nir_side)


def _pairs_report(summary):
    """The summary lines of a --pairs run, and the one-line error if any pair failed."""
    failed = summary["failed"]
    print(f"predict: {summary['total']} pairs: {summary['written']} written, "
          f"{summary['skipped']} skipped (output exists), {len(failed)} failed",
          file=sys.stderr if failed else sys.stdout, flush=True)
    for row, reason in failed:
        print(f"  line {row.line} ({row.name}): {reason}", file=sys.stderr)
    if failed:
        return f"{len(failed)} of {summary['total']} pairs failed (listed above)"
    return None


# --- Command line ------------------------------------------------------------------------


def _main_pairs():
    for name in ("model", "out_dir"):
        if not getattr(FLAGS, name):
            raise InputError(f"--{name} is required with --pairs")
    given = [f"--{name}" for name in ("vis", "nir", "out", "disparity_out")
             if getattr(FLAGS, name)]
    if given:
        raise InputError(f"--pairs runs every pair of the CSV into --out_dir: {', '.join(given)} "
                         "cannot be given with it")
    summary = run_pairs(
        FLAGS.model, FLAGS.pairs, FLAGS.out_dir, tile=FLAGS.tile, overlap=FLAGS.tile_overlap,
        self_ensemble=FLAGS.self_ensemble, overwrite=FLAGS.overwrite, geometry=FLAGS.geometry,
        precision=FLAGS.precision, ops=FLAGS.ops, nir_side=FLAGS.nir_side,
    )
    error = _pairs_report(summary)
    if error:
        raise InputError(error)


def _main_one_pair():
    for name in ("model", "vis", "nir", "out"):
        if not getattr(FLAGS, name):
            raise InputError(f"--{name} is required (or --pairs and --out_dir for many pairs)")
    if FLAGS.out_dir:
        raise InputError("--out_dir goes with --pairs; for one pair give --out")
    run(
        FLAGS.model, FLAGS.vis, FLAGS.nir, FLAGS.out, disparity_out=FLAGS.disparity_out,
        tile=FLAGS.tile, overlap=FLAGS.tile_overlap, self_ensemble=FLAGS.self_ensemble,
        overwrite=FLAGS.overwrite, geometry=FLAGS.geometry, precision=FLAGS.precision,
        ops=FLAGS.ops, nir_side=FLAGS.nir_side,
    )


def main(argv):
    from cspsr_tf.util.cli import fail

    if len(argv) > 1:
        fail("predict", f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        with stop_on_signals():
            if FLAGS.pairs:
                _main_pairs()
            else:
                _main_one_pair()
    except InputError as error:
        fail("predict", str(error))
    except Interrupted as stop:
        kept = ""
        if stop.done is not None:
            kept = (f"; {stop.done} pair(s) written in this run are kept, the same command "
                    "does the rest")
        print(f"predict: stopped by {stop.signal_name}; its temporary files were removed{kept}",
              file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)


if __name__ == "__main__":
    run_main(main, "predict")
