"""Pictures for people: disparity colour maps, side-by-side comparison figures, image files.

All functions take and return RGB (not OpenCV's BGR) numpy images; `write_image` converts
to BGR on the way to disk.
"""

import os

import cv2
import numpy as np

from cspsr_tf.util import atomic_files

# Perceptually ordered and readable by colour-blind viewers; near = bright.
DISPARITY_COLORMAP = cv2.COLORMAP_TURBO

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.4
_LABEL_HEIGHT = 16
_GAP = 4


def write_image(path, image):
    """Writes an RGB (H x W x 3) or grey (H x W or H x W x 1) image, atomically.

    The image goes to a temporary file in the target folder, which is then renamed, so a
    reader never sees a half-written file; it gets the umask's mode, like any new file. The
    folder is created when missing. uint8 and uint16 are written as they are (16-bit needs
    PNG or TIFF).

    Raises:
        ValueError: when OpenCV cannot encode the image under that file extension.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    extension = os.path.splitext(path)[1] or ".png"
    try:
        ok, encoded = cv2.imencode(extension, image)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"OpenCV could not write a {image.dtype} image as {path}")
    atomic_files.write_bytes(path, encoded.tobytes())


def disparity_to_color(disparity, max_disparity=None):
    """Colour-codes a disparity map (TURBO: blue = far / small, red = near / large).

    Args:
        disparity: [H, W] or [H, W, 1] (or [1, H, W, 1]) float disparities.
        max_disparity: value mapped to the top of the colour map; None uses the largest
            finite value of the map. Values are clipped to [0, max_disparity].

    Returns:
        uint8 RGB image [H, W, 3]; non-finite pixels are black.
    """
    disparity = np.asarray(disparity, np.float32)
    disparity = np.squeeze(disparity)
    if disparity.ndim != 2:
        raise ValueError(f"disparity must be a single map. Received: shape={disparity.shape}")
    finite = np.isfinite(disparity)
    if max_disparity is None:
        max_disparity = float(disparity[finite].max()) if finite.any() else 1.0
    max_disparity = max(float(max_disparity), 1e-6)
    levels = np.clip(np.where(finite, disparity, 0.0) / max_disparity, 0.0, 1.0)
    colour = cv2.applyColorMap(np.round(levels * 255).astype(np.uint8), DISPARITY_COLORMAP)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    colour[~finite] = 0
    return colour


def _to_rgb_uint8(image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"Figure panels must be uint8. Received: dtype={image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., np.newaxis], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Figure panels must be grey or RGB. Received: shape={image.shape}")
    return image


def select_crop(image, size):
    """Top-left corner of the `size` x `size` window with the most gradient energy.

    Falls back to the centre window for a flat image. An image smaller than `size` gives
    (0, 0) (the crop is then the whole image).

    Args:
        image: uint8 or float RGB / grey image [H, W(, C)].
        size: int, window side in pixels.

    Returns:
        (top, left) ints.
    """
    image = np.asarray(image, np.float32)
    grey = image.mean(axis=-1) if image.ndim == 3 else image
    height, width = grey.shape
    size_h, size_w = min(size, height), min(size, width)
    grad_y, grad_x = np.gradient(grey)
    energy = np.hypot(grad_x, grad_y).astype(np.float64)
    # Window sums of the gradient magnitude from an integral image.
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (
        integral[size_h:, size_w:]
        - integral[:-size_h, size_w:]
        - integral[size_h:, :-size_w]
        + integral[:-size_h, :-size_w]
    )
    if not np.any(sums > 0):
        return (height - size_h) // 2, (width - size_w) // 2
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left)


def _label(panel, text):
    """Puts a dark strip with `text` above a panel."""
    strip = np.full((_LABEL_HEIGHT, panel.shape[1], 3), 32, np.uint8)
    cv2.putText(strip, text, (3, _LABEL_HEIGHT - 4), _FONT, _FONT_SCALE, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def comparison_figure(panels, labels, crop=None, crop_size=None, panel_size=192, overview=True):
    """A row of zoomed crops of equally sized images, labelled, with an overview frame.

    Args:
        panels: list of uint8 images of one size [H, W(, 1 or 3)] (e.g. bicubic, model, HR,
            NIR). The crop is chosen on the last RGB panel unless `crop` is given.
        labels: list of short strings, one per panel.
        crop: (top, left) of the crop, or None to pick the window with the most gradient
            energy in the reference panel (see `select_crop`).
        crop_size: side of the crop in pixels; None uses a third of the shorter side,
            kept within [16, 96] pixels so that the crop is really zoomed in.
        panel_size: side of each zoomed panel in the figure (nearest-neighbour zoom, so the
            pixels stay visible).
        overview: prepend the whole reference frame with the crop outlined in red.

    Returns:
        uint8 RGB figure.
    """
    if len(panels) != len(labels) or not panels:
        raise ValueError(
            f"Need one label per panel. Received: {len(panels)} panels, {len(labels)} labels"
        )
    panels = [_to_rgb_uint8(p) for p in panels]
    shape = panels[0].shape
    if any(p.shape != shape for p in panels):
        raise ValueError(f"Panels differ in size: {[p.shape for p in panels]}")
    height, width = shape[:2]
    reference = next((p for p in reversed(panels) if not _is_grey(p)), panels[-1])
    if crop_size is None:
        crop_size = min(96, max(16, min(height, width) // 3))
    crop_h, crop_w = min(crop_size, height), min(crop_size, width)
    top, left = select_crop(reference, crop_size) if crop is None else crop
    zoom_w = panel_size
    zoom_h = max(1, round(panel_size * crop_h / crop_w))
    row = []
    if overview:
        thumb_h = zoom_h
        thumb_w = max(1, round(width * thumb_h / height))
        thumb = cv2.resize(reference, (thumb_w, thumb_h), interpolation=cv2.INTER_AREA)
        factor = thumb_h / height
        cv2.rectangle(
            thumb,
            (int(left * factor), int(top * factor)),
            (int((left + crop_w) * factor) - 1, int((top + crop_h) * factor) - 1),
            (255, 0, 0),
            1,
        )
        row.append(_label(thumb, "frame"))
    for panel, text in zip(panels, labels, strict=True):
        patch = panel[top : top + crop_h, left : left + crop_w]
        patch = cv2.resize(patch, (zoom_w, zoom_h), interpolation=cv2.INTER_NEAREST)
        row.append(_label(patch, text))
    gap = np.full((row[0].shape[0], _GAP, 3), 255, np.uint8)
    pieces = []
    for index, piece in enumerate(row):
        if index:
            pieces.append(gap)
        pieces.append(piece)
    return np.concatenate(pieces, axis=1)


def _is_grey(image):
    return bool(np.array_equal(image[..., 0], image[..., 1])) and bool(
        np.array_equal(image[..., 1], image[..., 2])
    )
