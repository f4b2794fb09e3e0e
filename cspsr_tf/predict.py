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

Any problem with the arguments or the files (unreadable or missing image, sizes that differ,
wrong channel count, missing model) prints one line on stderr and exits with code 2; no
output file is written then, and outputs only appear once complete (temporary names,
renamed at the end).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import io  # noqa: E402
import tempfile  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

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
    from cspsr_tf import tiling

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
    vis_f = _to_float(vis_rgb, "vis_rgb")
    nir_f = _to_float(nir, "nir")[..., np.newaxis]
    scale = tiling.model_scale(model, config)
    outputs = tiling.predict(
        model, vis_f, nir_f, scale, tile=tile, self_ensemble=self_ensemble, overlap=overlap
    )
    sr = np.clip(outputs["vis_sr"][0], 0.0, 1.0)
    peak = _DTYPE_MAX[vis_rgb.dtype]
    return {
        "sr": np.round(sr.astype(np.float64) * peak).astype(vis_rgb.dtype),
        "sr_float": sr.astype(np.float32),
        "disp_l": outputs["disp_l"][0, ..., 0] if "disp_l" in outputs else None,
        "scale": scale,
    }


def _extension(path):
    return os.path.splitext(path)[1].lower()


def _encode_image(path, image):
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(_extension(path), image)
    if not ok:
        raise InputError(f"cannot encode a {image.dtype} image as {path}")
    return encoded.tobytes()


def _encode_disparity(path, disparity, max_disparity):
    from cspsr_tf import figures

    extension = _extension(path)
    if extension == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, disparity.astype(np.float32))
        return buffer.getvalue()
    if extension == ".png":
        return _encode_image(path, figures.disparity_to_color(disparity, max_disparity))
    return _encode_image(path, disparity.astype(np.float32))


def _write_all(files):
    """Writes {path: bytes} to temporary names first, then renames them all."""
    staged = []
    try:
        for path, data in files.items():
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_extension(path), dir=folder)
            staged.append((tmp, path))
            with os.fdopen(handle, "wb") as f:
                f.write(data)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)


def _check_outputs(out, disparity_out, tile, overlap):
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


def run(model_path, vis_path, nir_path, out_path, *, disparity_out=None, tile=None,
        overlap=8, self_ensemble=False):
    """Reads a pair of files, super-resolves it and writes the results.

    Returns:
        the `predict_pair` result.

    Raises:
        InputError: for any problem with the arguments or files; nothing is written then.
    """
    _check_outputs(out_path, disparity_out, tile, overlap)
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

    from cspsr_tf import model_io, tiling

    try:
        model, config = model_io.load_model(model_path)
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"--model {model_path}: cannot load ({error})") from None
    max_disparity, _ = tiling.model_geometry(model)
    if disparity_out is not None and not max_disparity:
        raise InputError(
            f"--disparity_out: model {model_path} has no cross-view matching, so no disparity"
        )
    logging.info(
        "Super-resolving %s + %s (%dx%d, %s) with %s", vis_path, nir_path,
        vis.shape[1], vis.shape[0], vis.dtype, model_path,
    )
    result = predict_pair(
        model, config, vis, nir, tile=tile, overlap=overlap, self_ensemble=self_ensemble
    )
    files = {out_path: _encode_image(out_path, result["sr"])}
    if disparity_out is not None:
        files[disparity_out] = _encode_disparity(disparity_out, result["disp_l"], max_disparity)
    _write_all(files)
    logging.info("Wrote %s (%dx%d)", out_path, result["sr"].shape[1], result["sr"].shape[0])
    return result


def main(argv):
    from cspsr_tf.cli import fail

    if len(argv) > 1:
        fail("predict", f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        for name in ("model", "vis", "nir", "out"):
            if not getattr(FLAGS, name):
                raise InputError(f"--{name} is required")
        run(
            FLAGS.model, FLAGS.vis, FLAGS.nir, FLAGS.out, disparity_out=FLAGS.disparity_out,
            tile=FLAGS.tile, overlap=FLAGS.tile_overlap, self_ensemble=FLAGS.self_ensemble,
        )
    except InputError as error:
        fail("predict", str(error))


if __name__ == "__main__":
    app.run(main)
