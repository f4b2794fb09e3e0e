"""A similarity of VIS and NIR images that survives the spectral gap: local NCC squared.

Between the visible and the near-infrared band, edges mostly stay where they are while their
contrast changes with the material: vegetation is dark in VIS and bright in NIR, many dyes
vanish in NIR, skin and red paint brighten. Locally, the NIR image is roughly an affine
function of the VIS luminance whose gain may be negative. The squared normalised
cross-correlation in a small window is invariant to exactly that (gain, offset and sign), so
it peaks where the two views show the same structure. The CVM's cost volume and its matching
loss both use it.

Flat windows must give 0 (no evidence either way), so each variance gets a floor before the
division. The floor is relative: `NCC_RELATIVE_FLOOR` times the image's mean local variance
(per example), so the measure stays invariant to a global gain. An absolute floor (it was 1e-6
on var_a * var_b) is not: natural images at LR have local variances whose product is mostly far
below 1e-6, so an image compared with itself scored 0.15 on average, and dark frames almost 0.
"""

import numpy as np
import tensorflow as tf

NCC_WINDOW_SIGMA = 1.5
# A window whose variance is this share of the image's mean local variance counts half.
NCC_RELATIVE_FLOOR = 0.01
# Keeps 0 / 0 away on an image that is flat everywhere.
_ABSOLUTE_FLOOR = 1e-12


def luminance(image):
    image = tf.cast(image, tf.float32)
    if image.shape[-1] == 3:
        return tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
    return image


def _edge_pad(image, radius):
    """Pads [B, H, W, C] by `radius` on every side, replicating the border (any frame size)."""
    def indices(length):
        return tf.clip_by_value(tf.range(-radius, length + radius), 0, length - 1)

    image = tf.gather(image, indices(tf.shape(image)[1]), axis=1)
    return tf.gather(image, indices(tf.shape(image)[2]), axis=2)


def gaussian_kernel(sigma):
    """(kernel, radius): the normalised 1-D Gaussian of `sigma` over +-radius, float32 NumPy."""
    radius = int(3 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * np.square(x / sigma))
    return (kernel / kernel.sum()).astype(np.float32), radius


def gaussian_blur(image, sigma):
    """Separable Gaussian blur of [B, H, W, C] (each channel alone), border replicated.

    The kernels are constants built in NumPy: a graph that blurs often (the CVM) stays small,
    which is most of its tracing time."""
    if sigma <= 0:
        return image
    kernel, radius = gaussian_kernel(sigma)
    channels = image.shape[-1]
    padded = _edge_pad(image, radius)
    rows = tf.nn.depthwise_conv2d(
        padded, tf.constant(np.tile(kernel.reshape(-1, 1, 1, 1), [1, 1, channels, 1]), image.dtype),
        [1, 1, 1, 1], "VALID",
    )
    return tf.nn.depthwise_conv2d(
        rows, tf.constant(np.tile(kernel.reshape(1, -1, 1, 1), [1, 1, channels, 1]), image.dtype),
        [1, 1, 1, 1], "VALID",
    )


def gaussian_blur_each(images, sigma):
    """[gaussian_blur(x, sigma) for x in images] (all [B, H, W, c_i]) as one blur of their
    channel concatenation: the same numbers with a fraction of the graph."""
    sizes = [image.shape[-1] for image in images]
    return tf.split(gaussian_blur(tf.concat(images, axis=-1), sigma), sizes, axis=-1)


def shifted_column_indices(width, offsets):
    """[len(offsets), width] int32: row k holds clip(j + offsets[k], 0, width - 1), the columns
    a gather reads to move an image by offsets[k] with its border columns replicated."""
    columns = tf.range(width)[tf.newaxis, :] + tf.constant(offsets, tf.int32)[:, tf.newaxis]
    return tf.clip_by_value(columns, 0, width - 1)


def shift_columns(image, offsets):
    """[B, H, W, 1] -> [B, H, W, len(offsets)]: channel k is image(i, j + offsets[k]), border
    columns replicated beyond the frame."""
    indices = shifted_column_indices(tf.shape(image)[2], offsets)
    shifted = tf.gather(image[..., 0], indices, axis=2)
    return tf.transpose(shifted, [0, 1, 3, 2])


def variance_floor(variance, relative_floor=NCC_RELATIVE_FLOOR):
    """[B, H, W, 1] local variances -> [B, 1, 1, 1]: the floor each window's variance gets."""
    mean = tf.reduce_mean(tf.maximum(variance, 0.0), axis=[1, 2], keepdims=True)
    return relative_floor * mean + _ABSOLUTE_FLOOR


def ncc_squared_volume(reference, other, offsets, window_sigma=NCC_WINDOW_SIGMA,
                       relative_floor=NCC_RELATIVE_FLOOR):
    """Local NCC^2 of `reference` against `other` moved by each offset: [B, H, W, len(offsets)].

    Channel k compares reference(i, j) with other(i, j + offsets[k]); both [B, H, W, 1]. Equal
    to `local_ncc_squared(reference, shift_columns(other, [offsets[k]]))` away from the borders
    (the floors come from the unshifted images).
    """
    reference, other = _centred(reference), _centred(other)
    moved = shift_columns(other, offsets)
    mean_r, square_r, mean_o_unshifted, square_o, product = gaussian_blur_each(
        [reference, reference * reference, other, other * other, reference * moved], window_sigma
    )
    var_r = square_r - mean_r * mean_r
    var_o_unshifted = square_o - mean_o_unshifted * mean_o_unshifted
    mean_o = shift_columns(mean_o_unshifted, offsets)
    var_o = shift_columns(var_o_unshifted, offsets)
    cov = product - mean_r * mean_o
    return _ncc_squared(cov, var_r, var_o, variance_floor(var_r, relative_floor),
                        variance_floor(var_o_unshifted, relative_floor))


def local_ncc_squared(a, b, window_sigma=NCC_WINDOW_SIGMA, relative_floor=NCC_RELATIVE_FLOOR):
    """Squared normalised cross-correlation of a and b [B, H, W, 1] in Gaussian windows.

    Invariant to a global gain of either image and to a local offset, and (squared) to a
    reversed contrast, which is what changes between a VIS and a NIR view of the same edge.
    Textured windows of an image compared with itself give close to 1; windows much flatter
    than the image's average give close to 0 (see the module docstring on the floor).
    """
    a, b = _centred(a), _centred(b)
    mean_a, mean_b, square_a, square_b, product = gaussian_blur_each(
        [a, b, a * a, b * b, a * b], window_sigma
    )
    var_a = square_a - mean_a * mean_a
    var_b = square_b - mean_b * mean_b
    cov = product - mean_a * mean_b
    return _ncc_squared(cov, var_a, var_b, variance_floor(var_a, relative_floor),
                        variance_floor(var_b, relative_floor))


def _centred(image):
    """`image` minus its mean per example. The NCC ignores offsets, and the local moments,
    differences of means, lose far less to float32 round-off about 0: a frame flat at
    mid-grey otherwise scored up to 1e9, its round-off being far above the floor."""
    return image - tf.reduce_mean(image, axis=[1, 2], keepdims=True)


def _ncc_squared(cov, var_a, var_b, floor_a, floor_b):
    # Variances computed as differences of means can dip just below zero in float32, and
    # round-off must not push a squared correlation above 1 (Cauchy-Schwarz).
    ncc2 = tf.square(cov) / ((tf.maximum(var_a, 0.0) + floor_a) * (tf.maximum(var_b, 0.0) + floor_b))
    return tf.minimum(ncc2, 1.0)
