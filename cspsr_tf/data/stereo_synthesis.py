"""Registered VIS-NIR pairs turned into stereo pairs with a known disparity.

Real cross-spectral stereo frames with ground truth are scarce, while registered pairs
(EPFL, RANUS, beam-splitter cameras) are plentiful. Moving the NIR image of a registered pair
into a virtual right camera by a random smooth, piecewise-planar disparity gives a stereo pair
whose spectral gap is real and whose disparity is known, so the CVM can be trained and
measured on it.

Geometry (the project's convention, `nirvis_synthetic` and Eq. 1): the left view pixel (i, j)
matches the right view pixel (i, j - d_l(i, j)), d >= 0. The disparity field is drawn in the
RIGHT view, `d_r`, so the right image is a plain backward warp of the registered NIR,
`nir_r(i, x) = nir(i, x + d_r(i, x))`; the left disparity then solves
`d_l(j) = d_r(j - d_l(j))`. Where a near object's disparity drops to the background's, the
backward warp shows the object twice in the right view (the band beside it, which the right
camera would see as background, gets a copy), and a left pixel of the object has two
solutions; the left camera sees the nearest surface, so `d_l` is the LARGEST solution, what a
z-buffered forward splat of `d_r` gives (`left_disparity_from_right`). Left pixels with no
solution (occluded in the right view), or whose match falls outside the right frame, are
marked invalid.

The field: a slanted background plane plus one or two elliptical foreground objects, each with
its own plane and a larger disparity (piecewise planar, like man-made scenes and the
Middlebury-style synthetic sets), lightly smoothed so that no step is sharper than a pixel.
Everything is stateless (`tf.random.stateless_*`), so a seed gives the same pair eagerly,
in `tf.function` and in `Dataset.map`.
"""

import tensorflow as tf

from cspsr_tf.ops.warp import warp_by_disparity

FIXED_POINT_ITERATIONS = 8
# A left pixel is valid when d_l and d_r warped to the left agree to this many HR pixels.
CONSISTENCY_TOLERANCE = 0.5


def _plane(seed, height, width, low, high, max_slope):
    """d0 + gx * x / W + gy * y / H with d0 in [low, high] and slopes up to max_slope."""
    values = tf.random.stateless_uniform([3], seed=seed)
    d0 = low + (high - low) * values[0]
    gx = (2.0 * values[1] - 1.0) * max_slope
    gy = (2.0 * values[2] - 1.0) * max_slope
    ys = tf.linspace(0.0, 1.0, height)[:, tf.newaxis]
    xs = tf.linspace(0.0, 1.0, width)[tf.newaxis, :]
    return d0 + gx * xs + gy * ys


def _ellipse(seed, height, width):
    """A boolean [H, W] ellipse with a random centre and radii of 15-40 % of each side."""
    values = tf.random.stateless_uniform([4], seed=seed)
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    cy, cx = values[0] * h, values[1] * w
    ry, rx = (0.15 + 0.25 * values[2]) * h, (0.15 + 0.25 * values[3]) * w
    ys = tf.range(h)[:, tf.newaxis]
    xs = tf.range(w)[tf.newaxis, :]
    return tf.square((ys - cy) / ry) + tf.square((xs - cx) / rx) <= 1.0


def random_disparity_field(seed, height, width, max_disparity):
    """A random piecewise-planar disparity map [H, W, 1] in [0, max_disparity] pixels.

    Args:
        seed: shape [2] integer tensor.
        height, width: ints or scalar int tensors.
        max_disparity: float, the largest disparity in pixels of this map.
    """
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=6))
    max_d = tf.cast(max_disparity, tf.float32)
    field = _plane(seeds[0], height, width, 0.0, 0.5 * max_d, 0.25 * max_d)
    objects = 1 + tf.cast(tf.random.stateless_uniform([], seed=seeds[1]) < 0.5, tf.int32)
    for k in range(2):
        mask = tf.logical_and(_ellipse(seeds[2 + 2 * k], height, width), k < objects)
        nearer = _plane(seeds[3 + 2 * k], height, width, 0.5 * max_d, max_d, 0.15 * max_d)
        # A foreground object always lies in front of what it covers.
        field = tf.where(mask, tf.maximum(field, nearer), field)
    field = tf.clip_by_value(field, 0.0, max_d)[tf.newaxis, :, :, tf.newaxis]
    # A 3x3 mean keeps the pieces planar but spreads each step over a few pixels, as the
    # bicubic downscaling to LR would anyway.
    field = tf.nn.avg_pool2d(tf.pad(field, [[0, 0], [1, 1], [1, 1], [0, 0]], "SYMMETRIC"), 3, 1, "VALID")
    return field[0]


def _nearest_surface(d_r):
    """Z-buffered forward splat of `d_r` [B, H, W]: the largest exact solution per left pixel.

    `d_r` is linear between right pixels, so on the segment [k, k + 1] the left column seen at
    right x is g(x) = x + d_r(x), linear from k + d_r(k) to k + 1 + d_r(k + 1), and the left
    pixel j is solved there by x = k + t with t = (j - k - d_r(k)) / (1 + d_r(k + 1) - d_r(k))
    in [0, 1], d = d_r(x). Only segments with |d_r(k + 1) - d_r(k)| < 1 are surfaces: a steeper
    rise is the depth step that hides the left pixels behind it (their "solutions" on it are
    the stretched rubber sheet, repelling for the fixed-point iteration), a steeper fall the
    fold that the backward warp fills with a second copy. Every segment that can hold a
    solution (x = j - d in [k, k + 1], so k = j - m with m from floor(min d_r) - 1 to
    ceil(max d_r) + 1) is visited at once.

    Returns:
        (d, found): [B, H, W] the largest solution (-inf where none) and whether there is one.
    """
    width = tf.shape(d_r)[2]
    lo = tf.cast(tf.floor(tf.reduce_min(d_r)), tf.int32) - 1
    hi = tf.cast(tf.math.ceil(tf.reduce_max(d_r)), tf.int32) + 1
    columns = tf.range(width)
    k = columns[:, tf.newaxis] - tf.range(lo, hi + 1)[tf.newaxis, :]  # [W, M] segment starts
    in_frame = tf.logical_and(k >= 0, k <= width - 2)
    k0 = tf.clip_by_value(k, 0, tf.maximum(width - 2, 0))
    k1 = tf.minimum(k0 + 1, width - 1)
    shape = tf.concat([tf.shape(d_r), tf.shape(k)[1:]], axis=0)  # [B, H, W, M]
    a = tf.reshape(tf.gather(d_r, tf.reshape(k0, [-1]), axis=2), shape)
    b = tf.reshape(tf.gather(d_r, tf.reshape(k1, [-1]), axis=2), shape)
    step = b - a
    surface = tf.abs(step) < 1.0
    # t = (j - g(k)) / (g(k + 1) - g(k)); j - k0 is the integer part, exact in float.
    t = (tf.cast(columns[:, tf.newaxis] - k0, d_r.dtype) - a) / tf.where(
        surface, 1.0 + step, tf.ones_like(step)
    )
    found = in_frame & surface & (t >= 0.0) & (t <= 1.0)
    d = tf.where(found, a + t * step, tf.fill(tf.shape(a), tf.constant(-float("inf"), d_r.dtype)))
    return tf.reduce_max(d, axis=-1), tf.reduce_any(found, axis=-1)


def left_disparity_from_right(d_r):
    """Solves d_l(j) = d_r(j - d_l(j)), keeping the nearest surface; also returns the residual.

    Where the left pixel has solutions on surface segments of `d_r` (`_nearest_surface`),
    d_l is the largest of them (the left camera sees the nearest surface; the smaller ones are
    the copies the backward warp puts into the band beside a near object). Elsewhere (occluded
    in the right view, or matched outside the frame) d_l is the fixed-point iterate from
    d_l = d_r, as before, whose residual is then large (or whose match lies outside the frame).

    Args:
        d_r: [B, H, W, 1] right-view disparity (pixels).

    Returns:
        (d_l, residual): [B, H, W, 1] each; residual = |d_l - d_r(j - d_l)| (about 0 where a
        solution exists, large where the left pixel is occluded in the right view).
    """
    d_iter = d_r
    for _ in range(FIXED_POINT_ITERATIONS):
        d_iter, _ = warp_by_disparity(d_r, d_iter, "right_to_left")
    nearest, found = _nearest_surface(d_r[..., 0])
    d_l = tf.where(found[..., tf.newaxis], nearest[..., tf.newaxis], d_iter)
    again, _ = warp_by_disparity(d_r, d_l, "right_to_left")
    return d_l, tf.abs(again - d_l)


def synthesize_stereo(nir, seed, max_disparity):
    """Moves a registered (left-view) NIR image into a virtual right camera.

    Args:
        nir: [H, W, C] float image registered with the left VIS image.
        seed: shape [2] integer tensor.
        max_disparity: float, largest disparity in pixels of `nir`.

    Returns:
        dict with `nir` [H, W, C] (the right view), `disparity` [H, W, 1] (left disparity,
        pixels) and `disparity_valid` [H, W, 1] (1.0 where the left pixel is seen in the right
        view inside the frame).
    """
    nir = tf.convert_to_tensor(nir, tf.float32)
    height, width = tf.shape(nir)[0], tf.shape(nir)[1]
    d_r = random_disparity_field(seed, height, width, max_disparity)[tf.newaxis]
    nir_right, valid_r = warp_by_disparity(nir[tf.newaxis], d_r, "left_to_right")
    d_l, residual = left_disparity_from_right(d_r)
    # The left pixel's match in the right view must exist (inside the frame, and itself
    # sampled from inside the registered image) and agree with it.
    seen, inside = warp_by_disparity(valid_r, d_l, "right_to_left")
    valid = inside * tf.cast(seen > 0.999, tf.float32) * tf.cast(
        residual < CONSISTENCY_TOLERANCE, tf.float32
    )
    return {"nir": nir_right[0], "disparity": d_l[0], "disparity_valid": valid[0]}
