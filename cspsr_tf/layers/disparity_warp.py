"""Horizontal warping of an image by a per-pixel disparity (paper Eq. 1)."""

import keras
import tensorflow as tf

_DIRECTIONS = ("right_to_left", "left_to_right")


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
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}. Received: direction={direction!r}")
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


@keras.saving.register_keras_serializable(package="cspsr_tf")
class DisparityWarp(keras.layers.Layer):
    """Warps an image horizontally by a disparity map (Eq. 1 of the CSPSR paper).

    Args:
        direction: str, `right_to_left` (default; out(i,j) = img(i, j - d(i,j)), moves the
            right NIR into the left view) or `left_to_right` (out(i,j) = img(i, j + d(i,j))).
        return_mask: bool, default True; also return a validity mask, 1 where the sample fell
            inside the frame, 0 where it was clamped at the border.

    Call arguments:
        inputs: a pair `(image, disparity)`: image [B, H, W, C], disparity [B, H, W, 1] in
            pixels of the image.

    Example:
        >>> warp = DisparityWarp()
        >>> nir_left, valid = warp((nir_right, disp_left))

    References:
        Wei et al., "Learning Cross-Spectral Prior for Image Super-Resolution", Eq. (1).
    """

    def __init__(self, direction="right_to_left", return_mask=True, **kwargs):
        super().__init__(**kwargs)
        if direction not in _DIRECTIONS:
            raise ValueError(
                f"direction must be one of {_DIRECTIONS}. Received: direction={direction!r}"
            )
        self.direction = direction
        self.return_mask = return_mask

    def call(self, inputs):
        image, disparity = inputs
        warped, valid = warp_by_disparity(image, disparity, self.direction)
        if self.return_mask:
            return warped, valid
        return warped

    def compute_output_shape(self, input_shape):
        image_shape, _ = input_shape
        if self.return_mask:
            return tuple(image_shape), tuple(image_shape[:-1]) + (1,)
        return tuple(image_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"direction": self.direction, "return_mask": self.return_mask})
        return config
