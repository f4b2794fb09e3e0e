"""Horizontal warping by a per-pixel disparity (paper Eq. 1) and disparity maps between
resolutions: pure TensorFlow functions used by the CVM layer, the losses, the synthetic
stereo data and the evaluation."""

import tensorflow as tf

DIRECTIONS = ("right_to_left", "left_to_right")


def warp_by_disparity(image, disparity, direction="right_to_left"):
    """Samples `image` along its width at `j - d` (or `j + d`) with linear interpolation.

    `right_to_left` implements Eq. (1): out(i, j) = image(i, j - d(i, j)), which moves a
    right-camera image into the left view using the left disparity. `left_to_right` is the
    same with the sign flipped, out(i, j) = image(i, j + d(i, j)), which moves left-view
    content into the right view using the right disparity.

    Samples that fall outside [0, W - 1] are clamped to the border column and flagged
    invalid in the returned mask. The result is differentiable with respect to both the image
    and the disparity (the gradient with respect to d is the local column difference).

    Args:
        image: float tensor [B, H, W, C].
        disparity: float tensor [B, H, W, 1] or [B, H, W], in pixels of `image`.
        direction: `right_to_left` or `left_to_right`.

    Returns:
        (warped [B, H, W, C], valid [B, H, W, 1]) with valid 1.0 where the sample position lies
        inside the frame and 0.0 where it was clamped.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}. Received: direction={direction!r}")
    image = tf.convert_to_tensor(image)
    # Sample positions in float32 even under mixed precision: float16 cannot address
    # columns past 2048 exactly and rounds sub-pixel positions to 0.5 beyond column 512.
    pos_dtype = tf.float64 if image.dtype == tf.float64 else tf.float32
    disparity = tf.cast(disparity, pos_dtype)
    if disparity.shape.rank == 4:
        disparity = disparity[..., 0]
    width = tf.shape(image)[2]
    columns = tf.cast(tf.range(width), pos_dtype)[tf.newaxis, tf.newaxis, :]
    sign = -1.0 if direction == "right_to_left" else 1.0
    x = columns + sign * disparity  # [B, H, W] sample position along the width

    max_x = tf.cast(width - 1, pos_dtype)
    valid = tf.logical_and(x >= 0.0, x <= max_x)
    x_clamped = tf.clip_by_value(x, 0.0, max_x)
    x0 = tf.floor(x_clamped)
    # tf.expand_dims, not [..., tf.newaxis]: the LiteRT converter turns the latter into a
    # StridedSlice with a new axis, which has no builtin kernel when H and W are unknown.
    frac = tf.expand_dims(tf.cast(x_clamped - x0, image.dtype), -1)
    # For samples outside the frame `frac` has no gradient (clip), so the border value is
    # returned as a constant: the mask removes such pixels from any loss.
    i0 = tf.cast(x0, tf.int32)
    i1 = tf.minimum(i0 + 1, width - 1)
    v0 = tf.gather(image, i0, axis=2, batch_dims=2)
    v1 = tf.gather(image, i1, axis=2, batch_dims=2)
    warped = v0 + frac * (v1 - v0)
    return warped, tf.expand_dims(tf.cast(valid, image.dtype), -1)


def disparity_to_lr(disparity_hr, valid_hr, scale):
    """HR disparity (HR pixels) and mask -> LR disparity (LR pixels) and mask.

    The disparity is averaged over each scale x scale block and divided by the scale; an LR
    pixel is valid only when its whole block is.
    """
    disparity_hr = tf.cast(disparity_hr, tf.float32)
    valid_hr = tf.cast(valid_hr, tf.float32)
    if scale == 1:
        return disparity_hr, valid_hr
    disparity = tf.nn.avg_pool2d(disparity_hr, scale, scale, "VALID") / float(scale)
    valid = -tf.nn.max_pool2d(-valid_hr, scale, scale, "VALID")
    return disparity, valid
