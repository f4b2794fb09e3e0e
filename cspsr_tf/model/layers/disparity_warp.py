"""Horizontal warping of an image by a per-pixel disparity (paper Eq. 1)."""

import keras

from cspsr_tf.ops.warp import DIRECTIONS, warp_by_disparity


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
        if direction not in DIRECTIONS:
            raise ValueError(
                f"direction must be one of {DIRECTIONS}. Received: direction={direction!r}"
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
