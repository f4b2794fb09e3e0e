"""Residual translation of a registered RGB-NIR pair, and its re-registration by cropping.

Pairs sold as registered are not always: in the shared EPFL `country` pairs the NIR is off by
1-18 px in half of them (`../shared/data/nirvis_samples/SOURCE.md`), and a model trained with
zero disparity on them learns to distrust the NIR. `estimate_shift` measures the translation
the way SOURCE.md does (phase correlation of Hann-windowed gradient magnitudes, which is
insensitive to the contrast differences between the two spectra; 1/20 px precision), and
`crop_registered` removes its integer part by cropping both images to their overlap, so no
pixel is resampled and the residual is at most 0.5 px per axis. A translation does not fix
every pair: `local_spread` measures the shift in the four quadrants, and where they disagree
(parallax, or clouds, leaves and water that moved between the exposures) the pair is not
registered by any single shift.
"""

import math

import cv2
import numpy as np

# skimage.registration's sub-pixel refinement: 1 / UPSAMPLE px.
UPSAMPLE = 20


def gradient_magnitude(image):
    """|gradient| of a [h, w] image after a sigma-1 Gaussian, Hann-windowed (no edge wrap)."""
    from skimage.filters import window

    smooth = cv2.GaussianBlur(np.asarray(image, np.float32), (0, 0), 1.0)
    magnitude = np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))
    return magnitude * window("hann", magnitude.shape).astype(np.float32)


def grey(rgb):
    """BT.601 luma of an [h, w, 3] RGB image, float32 in the image's range."""
    rgb = np.asarray(rgb, np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def estimate_shift(rgb, nir):
    """(dy, dx) in pixels that moves the NIR onto the RGB: NIR'(y, x) = NIR(y - dy, x - dx).

    Args:
        rgb: [h, w, 3] RGB image (any numeric dtype).
        nir: [h, w] or [h, w, 1] NIR image of the same size.
    """
    from skimage.registration import phase_cross_correlation

    nir = np.asarray(nir)
    if nir.ndim == 3:
        nir = nir[..., 0]
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.shape[:2] != nir.shape:
        raise ValueError(
            f"estimate_shift needs an [h, w, 3] RGB and an [h, w] NIR of the same size. "
            f"Received: {rgb.shape} and {nir.shape}"
        )
    shift, _, _ = phase_cross_correlation(
        gradient_magnitude(grey(rgb)), gradient_magnitude(nir), upsample_factor=UPSAMPLE,
        normalization="phase",
    )
    return float(shift[0]), float(shift[1])


def integer_shift(shift):
    """The shift rounded to whole pixels; exactly half a pixel rounds towards zero (cropping
    a pixel would not make the residual smaller)."""
    def rounded(s):
        whole = math.floor(abs(s))
        return int(math.copysign(whole + (abs(s) - whole > 0.5), s))

    return tuple(rounded(s) for s in shift)


def crop_registered(rgb, nir, shift):
    """Both images cropped to the overlap where RGB(y, x) meets NIR(y - dy, x - dx).

    `shift` is rounded to whole pixels (`integer_shift`); the crops have equal sizes,
    (h - |dy|) x (w - |dx|).
    """
    if np.shape(rgb)[:2] != np.shape(nir)[:2]:
        raise ValueError(f"RGB and NIR differ in size: {np.shape(rgb)} and {np.shape(nir)}")
    height, width = np.shape(rgb)[:2]
    dy, dx = integer_shift(shift)
    if abs(dy) >= height or abs(dx) >= width:
        raise ValueError(f"Shift {shift} leaves no overlap in a {height}x{width} pair.")
    rgb_rows = slice(max(0, dy), height + min(0, dy))
    nir_rows = slice(max(0, -dy), height - max(0, dy))
    rgb_cols = slice(max(0, dx), width + min(0, dx))
    nir_cols = slice(max(0, -dx), width - max(0, dx))
    return rgb[rgb_rows, rgb_cols], nir[nir_rows, nir_cols]


def local_spread(rgb, nir):
    """Largest distance (px, either axis) of a quadrant's shift from the quadrants' median.

    Rough: a quadrant with little texture (sky, water) gives a noisy estimate, so a large
    spread means "not shown to be registered" rather than "misregistered by that much".
    """
    height, width = np.shape(rgb)[:2]
    shifts = np.array([
        estimate_shift(rgb[rows, cols], nir[rows, cols])
        for rows in (slice(0, height // 2), slice(height // 2, height))
        for cols in (slice(0, width // 2), slice(width // 2, width))
    ])
    return float(np.abs(shifts - np.median(shifts, axis=0)).max())
