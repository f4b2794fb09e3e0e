"""Cross-spectral stereo synthesis for `nirvis_synthetic` (pure numpy / OpenCV / scikit-image).

Disparity convention (the same as Middlebury and as the `disparity` feature): for a LEFT-view
pixel (i, j) with disparity d = d(i, j) >= 0, the same scene point is at (i, j - d) in the RIGHT
view. The visible image is the left view; the NIR image is made from the right view.

Pseudo-NIR spectral model (`pseudo_nir`), applied to an sRGB image of the right view:

1. Linearise sRGB (IEC 61966-2-1) to reflectance-like values r, g, b in [0, 1].
2. Base NIR response ``0.60 r + 0.30 g + 0.10 b``: silicon NIR sensors correlate most with the
   red end of the spectrum, and red/orange pigments and skin reflect strongly in the NIR.
3. Colourants: many dyes are transparent in the NIR, so saturated colours lose their hue
   contrast; the response moves towards the brightest channel: ``base += 0.35 * sat * (max -
   base)``, with ``sat = (max - min) / max``.
4. Vegetation (chlorophyll absorbs red and blue, and reflects strongly past the red edge at
   ~700 nm): with the chromatic index ``veg = clip(4 (g - max(r, b)) / (r + g + b), 0, 1)``,
   the response moves towards ``min(1, 3.5 g)`` by ``veg`` (foliage ~0.1 green reflectance
   becomes ~0.4-0.5 NIR reflectance: bright, as in NIR photographs).
5. Blue sky and water (Rayleigh scattering falls as wavelength^-4; water absorbs NIR): with
   ``blue = clip(4 (b - max(r, g)) / (r + g + b), 0, 1)`` the response is scaled by
   ``1 - 0.7 blue`` (dark sky, dark water).
6. Camera: auto exposure puts the 99th percentile at 0.9, then a 1/2.0 gamma (not sRGB's
   curve: a different tone response from the RGB camera), a Gaussian blur of sigma 0.8 px
   (NIR optics/sensors are softer), read noise of sigma 0.8 grey levels (seeded), uint8.

Synthetic disparity for photos (`synthetic_disparity`), in units of ``d_max`` HR pixels:
a background plane that comes nearer towards the bottom of the frame (like a ground plane),
plus smooth low-frequency relief (bicubic upsampling of a 3x4 random grid), plus 2-4 near
layers: segments of a SLIC over-segmentation of the photo (so depth edges follow image edges,
as real depth edges mostly do), each lifted by 0.25-0.6 with its own small slant. The near
layers occlude the background in the right view.

Right view synthesis (`render_right`): the left disparity is forward-projected with a z-buffer
(nearest surface wins) into a right-view disparity; the right image is then inverse-warped
(bicubic) from the left image, ``right(i, x) = left(i, x + d_R(i, x))``, so that
``left(i, j) = right(i, j - d(i, j))`` wherever the point is visible in both views.
Right-view pixels seen by no left pixel (disocclusions next to near layers) are filled by
OpenCV's Telea inpainting; content beyond the left image's right border comes from a mirror
padding of the photo.

``disparity_valid`` (`visible_mask`) is 1 where the disparity is known, (i, j - d) is inside
the NIR frame and the point is not occluded in the NIR view (it is the z-buffer winner there,
to 1 px), else 0. ``disparity`` keeps its value on occluded and out-of-frame pixels (it is the
left view's disparity) and is 0 where it is unknown (the motorcycle's invalid pixels).
"""

from __future__ import annotations

import cv2
import numpy as np


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def pseudo_nir(rgb: np.ndarray, seed: int) -> np.ndarray:
    """sRGB uint8 (H, W, 3) -> pseudo-NIR uint8 (H, W, 1); see the module docstring."""
    lin = srgb_to_linear(rgb.astype(np.float32) / 255.0)
    r, g, b = lin[..., 0], lin[..., 1], lin[..., 2]
    total = r + g + b + 1e-3
    high = lin.max(axis=-1)
    low = lin.min(axis=-1)

    nir = 0.60 * r + 0.30 * g + 0.10 * b
    sat = (high - low) / (high + 1e-3)
    nir = nir + 0.35 * sat * (high - nir)
    veg = np.clip(4.0 * (g - np.maximum(r, b)) / total, 0.0, 1.0)
    nir = (1.0 - veg) * nir + veg * np.minimum(1.0, 3.5 * g)
    blue = np.clip(4.0 * (b - np.maximum(r, g)) / total, 0.0, 1.0)
    nir = nir * (1.0 - 0.7 * blue)

    exposure = 0.9 / max(float(np.percentile(nir, 99)), 1e-3)
    nir = np.clip(nir * exposure, 0.0, 1.0) ** (1.0 / 2.0)
    nir = cv2.GaussianBlur(nir.astype(np.float32), (0, 0), sigmaX=0.8)
    rng = np.random.default_rng(seed)
    nir = nir * 255.0 + rng.normal(0.0, 0.8, size=nir.shape)
    return np.clip(np.round(nir), 0, 255).astype(np.uint8)[:, :, None]


def segments(rgb: np.ndarray) -> np.ndarray:
    """SLIC over-segmentation used for the near depth layers (deterministic)."""
    from skimage.segmentation import slic

    return slic(rgb, n_segments=24, compactness=20, start_label=0)


def synthetic_disparity(labels: np.ndarray, rng: np.random.Generator, d_max: float) -> np.ndarray:
    """Smooth layered disparity field (float32, HR pixels, 0..d_max); see module docstring."""
    h, w = labels.shape
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    field = rng.uniform(0.05, 0.2) + rng.uniform(0.1, 0.3) * yy + rng.uniform(-0.08, 0.08) * xx
    coarse = rng.normal(0.0, 1.0, size=(3, 4)).astype(np.float32)
    field = field + 0.05 * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    n_labels = int(labels.max()) + 1
    n_layers = min(int(rng.integers(2, 5)), n_labels)
    for label in rng.choice(n_labels, size=n_layers, replace=False):
        lift = rng.uniform(0.25, 0.6) + rng.uniform(-0.05, 0.05) * (yy - 0.5)
        lift = lift + rng.uniform(-0.05, 0.05) * (xx - 0.5)
        field = np.where(labels == label, field + lift, field)
    return (np.clip(field, 0.0, 1.0) * d_max).astype(np.float32)


def forward_disparity(disp: np.ndarray) -> np.ndarray:
    """Right-view disparity by forward projection with a z-buffer; -inf where nothing lands.

    `disp` is the left disparity (NaN/inf = unknown, ignored). Neighbouring left pixels whose
    disparities differ by less than 1 px are treated as one continuous surface and their
    projection is linearly interpolated (sub-pixel exact for smooth surfaces).
    """
    h, w = disp.shape
    known = np.isfinite(disp)
    d = np.where(known, disp, 0.0).astype(np.float64)
    out = np.full(h * w, -np.inf)
    rows = np.repeat(np.arange(h), w - 1).reshape(h, w - 1)
    cols = np.arange(w - 1)[None, :]
    d0, d1 = d[:, :-1], d[:, 1:]
    xa = cols - d0
    xb = cols + 1 - d1
    cont = known[:, :-1] & known[:, 1:] & (np.abs(d1 - d0) < 1.0)
    for k in (0, 1):
        x = np.ceil(xa) + k
        sel = cont & (x <= xb) & (x >= 0) & (x <= w - 1)
        t = (x - xa) / np.maximum(xb - xa, 1e-6)
        val = d0 + t * (d1 - d0)
        np.maximum.at(out, rows[sel] * w + x[sel].astype(np.int64), val[sel])
    # Single pixels (ends of surfaces at depth edges).
    x = np.round(np.arange(w)[None, :] - d)
    sel = known & (x >= 0) & (x <= w - 1)
    rows_all = np.repeat(np.arange(h), w).reshape(h, w)
    np.maximum.at(out, rows_all[sel] * w + x[sel].astype(np.int64), d[sel])
    return out.reshape(h, w)


def _fill_background(d_right: np.ndarray) -> np.ndarray:
    """Fills -inf holes along each row with the smaller (farther) of the two nearest values."""
    h, w = d_right.shape
    hole = ~np.isfinite(d_right)
    idx = np.where(hole, 0, np.arange(w)[None, :])
    np.maximum.accumulate(idx, axis=1, out=idx)
    left_val = np.take_along_axis(d_right, idx, axis=1)
    left_ok = ~np.take_along_axis(hole, idx, axis=1)
    ridx = np.where(hole, w - 1, np.arange(w)[None, :])
    ridx = np.minimum.accumulate(ridx[:, ::-1], axis=1)[:, ::-1]
    right_val = np.take_along_axis(d_right, ridx, axis=1)
    right_ok = ~np.take_along_axis(hole, ridx, axis=1)
    both = np.where(left_ok & right_ok, np.minimum(left_val, right_val), 0.0)
    filled = np.where(left_ok & ~right_ok, left_val, both)
    filled = np.where(right_ok & ~left_ok, right_val, filled)
    return np.where(hole, filled, d_right)


def render_right(left: np.ndarray, disp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Synthesises the right view of `left` (uint8 RGB) for left disparity `disp` (finite).

    Returns (right uint8 RGB, right-view z-buffer disparity with -inf where nothing landed,
    cropped to the left image's width).
    """
    h, w = disp.shape
    pad = int(np.ceil(float(disp.max()))) + 4
    left_pad = cv2.copyMakeBorder(left, 0, 0, 0, pad, cv2.BORDER_REFLECT_101)
    disp_pad = cv2.copyMakeBorder(disp, 0, 0, 0, pad, cv2.BORDER_REPLICATE)
    d_right_raw = forward_disparity(disp_pad)
    d_right = _fill_background(d_right_raw)
    map_x = (np.arange(w + pad, dtype=np.float32)[None, :] + d_right).astype(np.float32)
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], w + pad, axis=1)
    right = cv2.remap(
        left_pad, map_x, map_y, interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101
    )
    holes = (~np.isfinite(d_right_raw)).astype(np.uint8)
    if holes.any():
        right = cv2.inpaint(right, holes, 3, cv2.INPAINT_TELEA)
    return right[:, :w], d_right_raw[:, :w]


def visible_mask(disp: np.ndarray, d_right_raw: np.ndarray) -> np.ndarray:
    """1 where the left pixel is known, lands inside the right frame and is not occluded."""
    h, w = disp.shape
    known = np.isfinite(disp)
    d = np.where(known, disp, 0.0)
    x = np.arange(w)[None, :] - d
    inside = known & (x >= 0) & (x <= w - 1)
    xr = np.clip(np.round(x), 0, w - 1).astype(np.int64)
    z = np.take_along_axis(d_right_raw, xr, axis=1)
    return (inside & (d >= z - 1.0)).astype(np.uint8)


def crop_example(vis, nir, disp, valid, y0, x0, h, w):
    """Crops the same window from all views; pixels whose match leaves the crop become invalid."""
    vis = vis[y0 : y0 + h, x0 : x0 + w]
    nir = nir[y0 : y0 + h, x0 : x0 + w]
    disp = disp[y0 : y0 + h, x0 : x0 + w]
    valid = valid[y0 : y0 + h, x0 : x0 + w].copy()
    x = np.arange(w)[None, :] - disp
    valid &= ((x >= 0) & (x <= w - 1)).astype(np.uint8)
    return vis, nir, disp, valid


def motorcycle_half():
    """Middlebury 2014 Motorcycle from scikit-image at half resolution (250x370).

    Returns (left RGB, right RGB, left disparity in half-res pixels with NaN = unknown). A
    2x2 block's disparity is unknown if any of its 4 pixels is unknown.
    """
    from skimage import data

    left, right, disp = data.stereo_motorcycle()
    h, w = disp.shape[0] // 2 * 2, disp.shape[1] // 2 * 2
    left = cv2.resize(left[:h, :w], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    right = cv2.resize(right[:h, :w], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    blocks = disp[:h, :w].reshape(h // 2, 2, w // 2, 2).astype(np.float64)
    known = np.isfinite(blocks).all(axis=(1, 3))
    mean = np.where(np.isfinite(blocks), blocks, 0.0).mean(axis=(1, 3))
    half = np.where(known, mean / 2.0, np.nan).astype(np.float32)
    return left, right, half
