"""PSNR and SSIM under the two named evaluation protocols of the project.

Two families of functions live here:

* numpy, float64 (`psnr`, `ssim`, `evaluate_pair`): the numbers that go into tables. They
  follow the BasicSR evaluation path: the SR output is first quantised to 8 bits exactly as
  it would be saved to PNG (`to_uint8`), then measured against the 8-bit HR image.
* TensorFlow (`psnr_tf`, `ssim_tf`): cheap per-image monitors for training and validation
  graphs. They work on float batches in [0, max_val] without quantisation and in float32, so
  they differ from the reported numbers by the rounding to 8 bits (typically a few hundredths
  of a dB) and by float32 round-off (below 1e-3 dB and 1e-4 SSIM on 8-bit-exact inputs).
  Never put `psnr_tf`/`ssim_tf` numbers in a table.

Protocols (see `PROTOCOLS`):

* `paper`: RGB, 0-255, no border shave, which is what the CSPSR paper's tables used.
  PSNR uses one MSE over all pixels and all three channels (not per-channel PSNRs averaged).
  SSIM is computed on each of R, G, B separately and the three values are averaged (as
  BasicSR with `test_y_channel=False`, and skimage's `structural_similarity(...,
  channel_axis=-1)`).
* `standard`: the usual SR benchmark protocol. Luma Y of ITU-R BT.601 in the 16-235 range,
  `Y = 16 + 65.481 R + 128.553 G + 24.966 B` with R, G, B in [0, 1], kept as float64 (not
  rounded; BasicSR keeps it unrounded too, in float32); `scale` pixels are shaved from every
  border (BasicSR's `crop_border=scale`).

SSIM in both protocols is the one of Wang et al. 2004: 11x11 Gaussian window with sigma 1.5
(scipy's `truncate=3.5` gives radius 5), K1 = 0.01, K2 = 0.03, data range 255, population
(not sample) covariance. The SSIM map is only evaluated where the window lies fully inside
the image, i.e. (11 - 1) // 2 = 5 pixels are dropped on every side before averaging. This is
exactly what scikit-image (`gaussian_weights=True, use_sample_covariance=False`; it filters
with reflection, then crops 5 pixels, so the reflected values never reach the mean),
BasicSR (`cv2.filter2D` then `[5:-5, 5:-5]`) and `tf.image.ssim` (`VALID` convolution) do.
The 5-pixel crop comes on top of the protocol's border shave.

Input convention for the numpy functions (decided by dtype, nothing else):

* `uint8` images are taken as 0-255 as they are;
* floating images are taken as [0, 1] and go through `to_uint8` (clip to [0, 1], times 255,
  round half to even, as `numpy.round`); a floating image whose maximum exceeds 2 raises,
  because it is almost surely a 0-255 image in a float array, and so do NaN / inf values;
* any other dtype raises.

Images are H x W x 3, RGB order (not BGR as in BasicSR's OpenCV-based code).

References:
    Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from
    error visibility to structural similarity", IEEE TIP 13(4), 2004.
    ITU-R Recommendation BT.601.
    X. Wang et al., BasicSR, `basicsr/metrics/psnr_ssim.py`.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

# ITU-R BT.601 luma for R, G, B in [0, 1], giving Y in [16, 235].
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET = 16.0

_DATA_RANGE = 255.0
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_SSIM_SIGMA = 1.5
# scipy.ndimage's radius rule, int(truncate * sigma + 0.5), with skimage's truncate=3.5:
# radius 5, an 11-tap window as in Wang et al. 2004.
_SSIM_RADIUS = int(3.5 * _SSIM_SIGMA + 0.5)
_SSIM_WIN_SIZE = 2 * _SSIM_RADIUS + 1

# A float image brighter than this is taken to be a 0-255 image stored as float.
_FLOAT_MAX_ALLOWED = 2.0

# psnr_tf clamps the MSE to this, so identical images give 10 * log10(max_val**2 / 1e-10)
# (100 dB for max_val = 1) instead of inf, and no NaN ever reaches a metric or a summary.
_TF_MSE_FLOOR = 1e-10


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How images are prepared before PSNR / SSIM are measured.

    Args:
        name: key in `PROTOCOLS`.
        y_channel: measure the BT.601 luma (16-235) instead of the three RGB channels.
        shave_scale: shave `scale` pixels from every border before measuring.
        description: one line for tables and logs.
    """

    name: str
    y_channel: bool
    shave_scale: bool
    description: str

    def crop_border(self, scale):
        """Pixels removed from each border for an SR factor `scale`."""
        return scale if self.shave_scale else 0


PROTOCOLS = {
    "paper": Protocol(
        name="paper",
        y_channel=False,
        shave_scale=False,
        description="RGB, 0-255, no border shave; SSIM averaged over R, G, B",
    ),
    "standard": Protocol(
        name="standard",
        y_channel=True,
        shave_scale=True,
        description="BT.601 Y (16-235), `scale` border pixels shaved",
    ),
}


def get_protocol(protocol):
    """Returns the `Protocol` named `protocol` (a `Protocol` instance is passed through)."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"Unknown metric protocol. Expected one of {sorted(PROTOCOLS)}. "
            f"Received: protocol={protocol!r}"
        )
    return PROTOCOLS[protocol]


def to_uint8(image):
    """Quantises an image to uint8 the way an SR output is saved (BasicSR's `tensor2img`).

    uint8 input is returned unchanged. Floating input is read as [0, 1]: clipped to [0, 1],
    multiplied by 255 and rounded to the nearest integer (half to even, `numpy.round`).

    Raises:
        ValueError: for any other dtype, for NaN or infinite values, or for a float image with
            values above 2 (most likely a 0-255 image stored as float: cast it to uint8 or
            divide it by 255 first).
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            "Images must be uint8 (0-255) or floating point ([0, 1]). "
            f"Received: dtype={image.dtype}"
        )
    if not np.all(np.isfinite(image)):
        raise ValueError("Image contains NaN or infinite values.")
    if image.size and float(np.max(image)) > _FLOAT_MAX_ALLOWED:
        raise ValueError(
            "Floating-point images are read as [0, 1], but this one reaches "
            f"{float(np.max(image)):.4g}; pass 0-255 images as uint8 or divide by 255."
        )
    return np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb_to_y(image):
    """BT.601 luma of an RGB image, Y = 16 + 65.481 R + 128.553 G + 24.966 B, R, G, B in [0, 1].

    Args:
        image: H x W x 3, uint8 or float in [0, 1] (see `to_uint8`).

    Returns:
        float64 H x W array in [16, 235], not rounded.
    """
    image = _check_rgb(to_uint8(image), "image")
    return image.astype(np.float64) / 255.0 @ _Y_WEIGHTS + _Y_OFFSET


def psnr(a, b, *, protocol="standard", scale=4):
    """Peak signal-to-noise ratio in dB between two RGB images, data range 255.

    Args:
        a, b: H x W x 3 RGB images, uint8 (0-255) or float in [0, 1] (quantised with
            `to_uint8`). The order does not matter.
        protocol: `"paper"`, `"standard"` or a `Protocol`.
        scale: SR factor; the `standard` protocol shaves this many pixels per border.

    Returns:
        A Python float; `float("inf")` when the prepared images are identical.
    """
    x, y = _prepare_pair(a, b, protocol, scale)
    mse = np.mean((x - y) ** 2, dtype=np.float64)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(_DATA_RANGE**2 / mse))


def ssim(a, b, *, protocol="standard", scale=4):
    """Structural similarity (Wang et al. 2004) between two RGB images, data range 255.

    Gaussian 11x11 window, sigma 1.5, K1 = 0.01, K2 = 0.03, population covariance; the mean
    is taken over the positions where the window lies inside the image. Under `paper` the
    value is the mean of the R, G and B SSIMs; under `standard` it is the SSIM of Y.

    Args:
        a, b: H x W x 3 RGB images, uint8 (0-255) or float in [0, 1] (quantised with
            `to_uint8`).
        protocol: `"paper"`, `"standard"` or a `Protocol`.
        scale: SR factor; the `standard` protocol shaves this many pixels per border.

    Returns:
        A Python float in [-1, 1]; 1.0 for identical images.

    Raises:
        ValueError: also when the (shaved) images are smaller than the 11x11 window.
    """
    x, y = _prepare_pair(a, b, protocol, scale)
    if min(x.shape[:2]) < _SSIM_WIN_SIZE:
        raise ValueError(
            f"SSIM needs images of at least {_SSIM_WIN_SIZE}x{_SSIM_WIN_SIZE} after the border "
            f"shave. Received: shape after shave={x.shape}"
        )
    if x.ndim == 2:
        return float(_ssim_single_channel(x, y))
    return float(np.mean([_ssim_single_channel(x[..., c], y[..., c]) for c in range(3)]))


def evaluate_pair(sr, hr, scale):
    """PSNR and SSIM of an SR image against its HR reference under every protocol.

    Args:
        sr: H x W x 3 super-resolved RGB image, uint8 or float in [0, 1].
        hr: H x W x 3 ground-truth RGB image, uint8 or float in [0, 1].
        scale: SR factor (border shave of the `standard` protocol).

    Returns:
        `{"paper": {"psnr": float, "ssim": float}, "standard": {"psnr": ..., "ssim": ...}}`.
    """
    sr = to_uint8(sr)
    hr = to_uint8(hr)
    return {
        name: {
            "psnr": psnr(sr, hr, protocol=name, scale=scale),
            "ssim": ssim(sr, hr, protocol=name, scale=scale),
        }
        for name in PROTOCOLS
    }


def gaussian_window_1d(sigma=_SSIM_SIGMA, radius=_SSIM_RADIUS):
    """Normalised 1-D Gaussian taps; the SSIM window is its outer product with itself."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _check_rgb(image, name):
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must be an H x W x 3 RGB image. Received: shape={image.shape}")
    return image


def _prepare_pair(a, b, protocol, scale):
    """Validates, quantises, shaves and colour-converts a pair; returns float64 arrays."""
    protocol = get_protocol(protocol)
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise ValueError(f"scale must be a positive integer. Received: scale={scale!r}")
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"Images must have the same shape. Received: {a.shape} and {b.shape}")
    a = _check_rgb(to_uint8(a), "a")
    b = _check_rgb(to_uint8(b), "b")
    border = protocol.crop_border(int(scale))
    if border:
        height, width = a.shape[:2]
        if 2 * border >= min(height, width):
            raise ValueError(
                f"Shaving {border} pixels from each border leaves nothing of an image of "
                f"shape {a.shape} (protocol={protocol.name!r}, scale={scale})."
            )
        a = a[border:-border, border:-border]
        b = b[border:-border, border:-border]
    if protocol.y_channel:
        return rgb_to_y(a), rgb_to_y(b)
    return a.astype(np.float64), b.astype(np.float64)


def _filter_valid(image, taps):
    """Separable correlation with `taps` on both axes, keeping only fully covered positions."""
    size = taps.shape[0]
    rows = np.lib.stride_tricks.sliding_window_view(image, size, axis=0) @ taps
    return np.lib.stride_tricks.sliding_window_view(rows, size, axis=1) @ taps


def _ssim_single_channel(x, y):
    taps = gaussian_window_1d()
    c1 = (_SSIM_K1 * _DATA_RANGE) ** 2
    c2 = (_SSIM_K2 * _DATA_RANGE) ** 2
    mu_x = _filter_valid(x, taps)
    mu_y = _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x * mu_x
    var_y = _filter_valid(y * y, taps) - mu_y * mu_y
    cov_xy = _filter_valid(x * y, taps) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dtype=np.float64)


# --- TensorFlow monitors for training / validation graphs ---------------------------------


def rgb_to_y_tf(images, max_val=1.0):
    """BT.601 luma of an RGB batch [..., 3] in [0, max_val], returned on the same scale.

    `Y / 255 * max_val` with Y = 16 + 65.481 r + 128.553 g + 24.966 b, r = R / max_val, so for
    `max_val=1` the output lies in [16/255, 235/255]. Output shape [..., 1].
    """
    images = tf.convert_to_tensor(images)
    images = tf.cast(images, tf.float32) if not images.dtype.is_floating else images
    weights = tf.constant(_Y_WEIGHTS / 255.0, dtype=images.dtype)
    offset = tf.cast(_Y_OFFSET / 255.0 * max_val, images.dtype)
    return tf.tensordot(images, weights, axes=[[-1], [0]])[..., tf.newaxis] + offset


def _prepare_batch_tf(a, b, max_val, crop_border, y_channel):
    a = tf.convert_to_tensor(a)
    b = tf.convert_to_tensor(b)
    if not a.dtype.is_floating:
        a = tf.cast(a, tf.float32)
    b = tf.cast(b, a.dtype)
    if crop_border:
        a = a[:, crop_border:-crop_border, crop_border:-crop_border, :]
        b = b[:, crop_border:-crop_border, crop_border:-crop_border, :]
    if y_channel:
        a = rgb_to_y_tf(a, max_val)
        b = rgb_to_y_tf(b, max_val)
    return a, b


def psnr_tf(a, b, max_val=1.0, *, crop_border=0, y_channel=False):
    """Per-image PSNR in dB of a batch, for training and validation monitoring.

    Unlike `psnr`, there is no quantisation to 8 bits and the arithmetic is float32 (for
    float32 inputs). The MSE is clamped below at 1e-10, so identical images give the finite
    value `10 * log10(max_val**2 / 1e-10)` (100 dB for `max_val=1`), never inf or NaN.

    Args:
        a, b: float tensors [B, H, W, C] in [0, max_val].
        max_val: dynamic range of the images.
        crop_border: pixels removed from each border first (use `scale` to follow the
            `standard` protocol).
        y_channel: measure BT.601 luma (needs C = 3), as the `standard` protocol.

    Returns:
        float tensor [B].
    """
    a, b = _prepare_batch_tf(a, b, max_val, crop_border, y_channel)
    mse = tf.reduce_mean(tf.math.squared_difference(a, b), axis=[1, 2, 3])
    mse = tf.maximum(mse, tf.cast(_TF_MSE_FLOOR, mse.dtype))
    max_val = tf.cast(max_val, mse.dtype)
    return 10.0 * (tf.math.log(max_val * max_val / mse) / math.log(10.0))


def ssim_tf(a, b, max_val=1.0, *, crop_border=0, y_channel=False):
    """Per-image SSIM of a batch: `tf.image.ssim` with the Wang et al. 2004 settings.

    Gaussian 11x11 window, sigma 1.5, K1 = 0.01, K2 = 0.03, `VALID` filtering, values averaged
    over positions and then over channels: the same definition as `ssim`, but without the
    8-bit quantisation and in float32.

    Args:
        a, b: float tensors [B, H, W, C] in [0, max_val], H and W at least 11 after the crop.
        max_val: dynamic range of the images.
        crop_border: pixels removed from each border first.
        y_channel: measure BT.601 luma (needs C = 3), as the `standard` protocol.

    Returns:
        float tensor [B].
    """
    a, b = _prepare_batch_tf(a, b, max_val, crop_border, y_channel)
    return tf.image.ssim(
        a,
        b,
        max_val=max_val,
        filter_size=_SSIM_WIN_SIZE,
        filter_sigma=_SSIM_SIGMA,
        k1=_SSIM_K1,
        k2=_SSIM_K2,
    )
