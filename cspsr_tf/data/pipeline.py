"""tf.data input pipeline: HR frame pairs from a dataset builder -> CSPSR batches.

Input: a `tf.data.Dataset` of dict examples as the TFDS builders yield them: `vis` uint8
[H, W, 3] (HR left visible image), `nir` uint8 [H, W, 1] (HR NIR image in its own camera's
view: the right camera for stereo data), `geometry` (`stereo` or `aligned`), `id`, and
optionally `disparity` float32 [H, W, 1] (ground-truth left disparity in HR pixels:
vis(i, j) matches nir(i, j - d)).

Output: `(inputs, targets)` with inputs = {"vis_lr" [B, h, w, 3], "nir_lr" [B, h, w, 1]} and
targets = {"vis_hr" [B, h*s, w*s, 3], "nir_hr" [B, h*s, w*s, 1]} (+ "disparity_hr"
[B, h*s, w*s, 1] when the source has disparity), all float32 with images in [0, 1]. The
evaluation dataset adds a third element, meta = {"id", "geometry"}.

Training steps per example (`make_training_dataset`):
1. uint8 -> float32 in [0, 1]. Nothing brightens the frames (the Zhi et al. stereo frames are
   dark, mean about 25/255, and are kept so).
2. Optional random downscaling of the whole HR frame (the paper's "randomly downscaling"
   augmentation) by a factor drawn uniformly from `random_downscale`, never below the patch
   size; ground-truth disparities are multiplied by the same (width) factor.
3. A random hr_patch_size x hr_patch_size crop at the same window in both views: the
   rectified pair keeps matching pixels on the same row, and a horizontal disparity d keeps
   its value.
4. A vertical flip of both views together (and of the disparity) with probability 0.5.
5. LR inputs by antialiased bicubic downscaling (`resize.bicubic_downscale`), then the
   optional degradation of the LR VIS input (`degradations`).

Randomness is stateless: each element's seed is derived from `seed` and the element's
position in the (shuffled, repeated) stream, so a dataset built twice with the same seed
yields identical batches and a different seed yields different ones. `Dataset.shuffle`
takes the op seed `seed`; it also depends on the global seed when one is set with
`tf.random.set_seed`, so set the same global seed (or none) in runs to be compared.
Iterating the same dataset object a second time reshuffles the frames (a new epoch order,
still reproducible) while the per-element seeds restart from position 0; with `repeat=True`
and `steps_per_epoch`, Keras keeps one iterator, so positions keep counting across epochs.
With `shuffle_buffer=0` and `repeat=False`, every iteration yields the same patches.
"""

import math
import numbers
from collections.abc import Mapping

import tensorflow as tf
from absl import logging

from cspsr_tf.data.degradations import apply_degradation, resolve_degradation
from cspsr_tf.data.stereo_synthesis import synthesize_stereo
from cspsr_tf.ops.frame_statistics import frame_statistics
from cspsr_tf.ops.resize import bicubic_downscale

# Channels of every per-pixel field of a frame; fixes static shapes after cropping.
_CHANNELS = {"vis": 3, "nir": 1, "disparity": 1, "disparity_valid": 1}

# Second word of the base seeds, so training and evaluation streams with the same user seed
# draw unrelated random numbers.
_TRAIN_STREAM = 0x7261696E
_EVAL_STREAM = 0x6576616C
# Folded into an element's seed for its synthetic disparity field, leaving the other draws
# (crops, flips, noise) as they were before stereo synthesis existed.
_STEREO_STREAM = 0x73747265


def to_float_image(image):
    """Converts an image to float32 in [0, 1].

    Args:
        image: uint8 (or other integer) image, scaled by its dtype's maximum, or a float
            image assumed to be in [0, 1] already (only cast).

    Returns:
        float32 tensor of the same shape.
    """
    return tf.image.convert_image_dtype(tf.convert_to_tensor(image), tf.float32)


def frame_from_example(example):
    """Extracts the per-pixel fields of a builder example as a float32 frame dict.

    Args:
        example: dict with `vis`, `nir` and optionally `disparity` and `disparity_valid`
            (other keys are ignored).

    Returns:
        dict with `vis` float32 [H, W, 3], `nir` float32 [H, W, 1] in [0, 1] and, when the
        example has one, `disparity` float32 [H, W, 1] in HR pixels with `disparity_valid`
        [H, W, 1] (1.0 where the disparity is known; all ones when the example has no mask).
    """
    frame = {"vis": to_float_image(example["vis"]), "nir": to_float_image(example["nir"])}
    if "disparity" in example:
        disparity = tf.cast(example["disparity"], tf.float32)
        if disparity.shape.rank == 2:
            disparity = disparity[..., tf.newaxis]
        frame["disparity"] = disparity
        if "disparity_valid" in example:
            valid = tf.cast(example["disparity_valid"], tf.float32)
            frame["disparity_valid"] = valid[..., tf.newaxis] if valid.shape.rank == 2 else valid
        else:
            frame["disparity_valid"] = tf.ones_like(disparity)
    return frame


def _frame_size(frame):
    """Dynamic (height, width) of the VIS image of a frame."""
    shape = tf.shape(frame["vis"])
    return shape[0], shape[1]


def _assert_same_size(frame):
    """Assertions that every field of a frame has the VIS image's height and width."""
    vis_hw = tf.shape(frame["vis"])[:2]
    return [
        tf.debugging.assert_equal(
            tf.shape(value)[:2], vis_hw, message=f"'{key}' and 'vis' differ in height/width"
        )
        for key, value in frame.items()
        if key != "vis"
    ]


def random_downscale_frame(frame, seed, factor_range, min_size):
    """Downscales the whole HR frame by a random factor; disparities scale with it.

    The factor is drawn uniformly from `factor_range`, with the lower end raised where needed
    so that neither side falls below `min_size`. Images use antialiased bicubic resizing
    (the same kernel as the LR degradation). The disparity map is resized with nearest
    neighbour sampling, so no disparity between a foreground and a background value is
    invented at depth edges and invalid markers are not blended into valid values; its values
    are multiplied by the width ratio, because disparity is a horizontal distance in pixels.

    Args:
        frame: dict with `vis` [H, W, 3], `nir` [H, W, 1] float32, optional `disparity`.
        seed: shape [2] integer tensor for `tf.random.stateless_uniform`.
        factor_range: (low, high) with 0 < low <= high <= 1.
        min_size: smallest allowed height and width after downscaling (the patch size).

    Returns:
        A frame dict of the same keys at the new size. A frame already smaller than
        `min_size` is returned at its own size (the crop step then reports it).
    """
    low, high = _check_factor_range(factor_range)
    height, width = _frame_size(frame)
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    smallest = tf.cast(min_size, tf.float32) / tf.minimum(height_f, width_f)
    low_t = tf.maximum(tf.constant(low, tf.float32), smallest)
    high_t = tf.maximum(tf.constant(high, tf.float32), low_t)
    factor = tf.random.stateless_uniform([], seed=seed, minval=low_t, maxval=high_t)

    def new_length(length, length_f):
        scaled = tf.cast(tf.round(length_f * factor), tf.int32)
        # Never below the patch, never above the original (no upscaling of small frames).
        return tf.minimum(length, tf.maximum(scaled, min_size))

    new_height, new_width = new_length(height, height_f), new_length(width, width_f)
    size = tf.stack([new_height, new_width])
    out = {}
    with tf.control_dependencies(_assert_same_size(frame)):
        for key in ("vis", "nir"):
            resized = tf.image.resize(frame[key], size, method="bicubic", antialias=True)
            out[key] = tf.clip_by_value(resized, 0.0, 1.0)
        if "disparity" in frame:
            ratio = tf.cast(new_width, tf.float32) / width_f
            resized = tf.image.resize(frame["disparity"], size, method="nearest")
            out["disparity"] = resized * ratio
        if "disparity_valid" in frame:
            out["disparity_valid"] = tf.image.resize(frame["disparity_valid"], size, method="nearest")
    return out


def random_crop_frame(frame, patch_size, seed, frame_id=None):
    """Crops the same random patch_size x patch_size window from every field of a frame.

    The same rows and the same columns are cut from both views, so a rectified stereo pair
    stays rectified and a ground-truth disparity keeps its values.

    Args:
        frame: dict with `vis` [H, W, 3], `nir` [H, W, 1], optional `disparity` [H, W, 1].
        patch_size: int, the HR patch side.
        seed: shape [2] integer tensor for the stateless random offsets.
        frame_id: optional string tensor, named in the error for a frame that is too small.

    Returns:
        A frame dict with every field [patch_size, patch_size, C] (static shape).

    Raises:
        tf.errors.InvalidArgumentError: (at run time) when the frame is smaller than the
            patch; the message carries the frame's id and shape. Small frames are refused
            rather than padded or skipped, so a data problem cannot silently bias training.
    """
    height, width = _frame_size(frame)
    frame_id = tf.constant("<no id>") if frame_id is None else frame_id
    checks = _assert_same_size(frame) + [
        # tf.debugging.Assert (unlike assert_greater_equal) can print the frame's id.
        tf.debugging.Assert(
            tf.minimum(height, width) >= patch_size,
            [f"Frame smaller than hr_patch_size={patch_size}. id:", frame_id,
             "shape:", tf.shape(frame["vis"])],
        )
    ]
    row_seed, col_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    with tf.control_dependencies(checks):
        top = tf.random.stateless_uniform(
            [], seed=row_seed, minval=0, maxval=height - patch_size + 1, dtype=tf.int32
        )
        left = tf.random.stateless_uniform(
            [], seed=col_seed, minval=0, maxval=width - patch_size + 1, dtype=tf.int32
        )
    return {
        key: tf.ensure_shape(
            value[top : top + patch_size, left : left + patch_size],
            [patch_size, patch_size, _CHANNELS[key]],
        )
        for key, value in frame.items()
    }


def mirror_frame(frame):
    """Every per-pixel field of `frame` mirrored left-right (its width axis reversed).

    The views of a rig whose NIR camera is on the left, mirrored, are those of a rig whose NIR
    camera is on the right, the rig every model here is trained for; a disparity keeps its
    (positive) value.
    """
    return {key: tf.reverse(value, axis=[1]) for key, value in frame.items()}


def random_vertical_flip_frame(frame, seed, probability=0.5):
    """Flips every field of a frame upside down together, with the given probability.

    Only vertical flips are geometry-safe for a VIS-left / NIR-right pair: a horizontal flip
    would turn the disparity around (the NIR camera would then sit to the left, with negative
    disparities), and a 90-degree rotation would make the disparity vertical. Neither is ever
    applied. A vertical flip keeps every pixel on its (mirrored) row and its disparity value.

    Args:
        frame: dict of [H, W, C] tensors (`vis`, `nir`, optional `disparity`).
        seed: shape [2] integer tensor for the stateless coin.
        probability: chance of flipping.

    Returns:
        A frame dict of the same shapes, all flipped or none.
    """
    flip = tf.random.stateless_uniform([], seed=seed) < probability

    def maybe_flip(value):
        return tf.cond(flip, lambda: tf.reverse(value, axis=[0]), lambda: value)

    return {key: maybe_flip(value) for key, value in frame.items()}


def crop_to_multiple(frame, multiple, frame_id=None):
    """Crops a whole frame, anchored at the top-left corner, to a multiple of `multiple`.

    Anchoring at the top-left keeps pixel coordinates (and so the disparity map and any
    per-pixel annotation) identical to the uncropped frame; at most `multiple - 1` rows at the
    bottom and columns at the right are dropped.

    Args:
        frame: dict of [H, W, C] tensors (`vis`, `nir`, optional `disparity`).
        multiple: positive int.
        frame_id: optional string tensor, named in the error for a frame that is too small.

    Returns:
        A frame dict with height and width floor(H / multiple) * multiple, and so on.

    Raises:
        tf.errors.InvalidArgumentError: (at run time) for a frame smaller than `multiple`.
    """
    height, width = _frame_size(frame)
    frame_id = tf.constant("<no id>") if frame_id is None else frame_id
    checks = _assert_same_size(frame) + [
        tf.debugging.Assert(
            tf.minimum(height, width) >= multiple,
            [f"Frame smaller than the crop multiple {multiple}. id:", frame_id,
             "shape:", tf.shape(frame["vis"])],
        )
    ]
    with tf.control_dependencies(checks):
        new_height = height // multiple * multiple
        new_width = width // multiple * multiple
    return {
        key: tf.ensure_shape(value[:new_height, :new_width], [None, None, _CHANNELS[key]])
        for key, value in frame.items()
    }


def prepare_pair(
    vis, nir, scale, *, disparity=None, disparity_valid=None, degradation=None, seed=None
):
    """Makes the model's (inputs, targets) from one HR pair (or a batch of pairs).

    Args:
        vis: HR visible image [H, W, 3] or [B, H, W, 3], uint8 or float in [0, 1].
        nir: HR NIR image [H, W, 1] or [B, H, W, 1], uint8 or float in [0, 1].
        scale: int, the SR factor; H and W must be divisible by it.
        disparity: optional ground-truth left disparity [H, W, 1] in HR pixels.
        disparity_valid: optional [H, W, 1] mask of the known disparities (default: all).
        degradation: None, a name or a mapping (see `degradations.resolve_degradation`),
            applied to the LR VIS input only.
        seed: shape [2] integer tensor, needed by the random degradations.

    Returns:
        (inputs, targets): inputs = {"vis_lr", "nir_lr"}; targets = {"vis_hr", "nir_hr"} plus
        "disparity_hr" and "disparity_valid_hr" when `disparity` is given; all float32.
    """
    name, params = resolve_degradation(degradation)
    vis, nir = to_float_image(vis), to_float_image(nir)
    vis_lr = apply_degradation(bicubic_downscale(vis, scale), name, seed, **params)
    inputs = {"vis_lr": vis_lr, "nir_lr": bicubic_downscale(nir, scale)}
    targets = {"vis_hr": vis, "nir_hr": nir}
    if disparity is not None:
        disparity = tf.cast(disparity, tf.float32)
        targets["disparity_hr"] = disparity
        targets["disparity_valid_hr"] = (
            tf.ones_like(disparity) if disparity_valid is None else tf.cast(disparity_valid, tf.float32)
        )
    return inputs, targets


def is_stereo_example(example):
    """1.0 unless the example's `geometry` is `aligned` (a registered pair), as float32."""
    if "geometry" not in example:
        return tf.constant(1.0)
    return tf.cast(tf.not_equal(example["geometry"], "aligned"), tf.float32)


def with_synthetic_stereo(frame, stereo, seed, max_disparity):
    """Turns a registered frame (stereo == 0) into a stereo frame with a known disparity.

    Real stereo frames pass through; frames without a ground-truth disparity get a zero map
    with a zero mask, so every element of a dataset has the same keys.

    Returns:
        (frame, stereo): the frame with `disparity` and `disparity_valid`, and 1.0.
    """
    def synthesize():
        return {**frame, **synthesize_stereo(frame["nir"], seed, max_disparity)}

    def keep():
        if "disparity" in frame:
            return dict(frame)
        zeros = tf.zeros_like(frame["nir"][..., :1])
        return {**frame, "disparity": zeros, "disparity_valid": zeros}

    frame = tf.cond(stereo < 0.5, synthesize, keep)
    return frame, tf.constant(1.0)


def _check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 1:
        raise ValueError(f"scale must be a positive integer. Received: scale={scale!r}")
    return int(scale)


def _check_factor_range(factor_range):
    try:
        low, high = (float(v) for v in factor_range)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"random_downscale must be a (low, high) pair or None. Received: {factor_range!r}"
        ) from error
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(
            "random_downscale must satisfy 0 < low <= high <= 1. "
            f"Received: random_downscale={factor_range!r}"
        )
    return low, high


def _check_source(ds, min_size=None):
    """Checks the element spec of a builder dataset; returns whether it has disparity."""
    spec = ds.element_spec
    if not isinstance(spec, Mapping) or not {"vis", "nir"} <= set(spec):
        keys = sorted(spec) if isinstance(spec, Mapping) else spec
        raise ValueError(f"Examples must be dicts with 'vis' and 'nir'. Received: {keys}")
    for key in ("vis", "nir"):
        height, width = spec[key].shape[0], spec[key].shape[1]
        if min_size is not None and any(n is not None and n < min_size for n in (height, width)):
            raise ValueError(
                f"Every frame of this dataset is {height}x{width} ('{key}'), smaller than "
                f"hr_patch_size={min_size}."
            )
    return "disparity" in spec


def _no_autograph(fn):
    """`fn` as Dataset.map must run it, without AutoGraph's conversion: the pipeline has no
    Python control flow over tensors (tf.cond where it branches), and converting its source
    cost seconds at the start of every training and evaluation."""
    return tf.autograph.experimental.do_not_convert(fn)


def _string_or_default(example, key):
    return example[key] if key in example else tf.constant("")


def _check_training_arguments(scale, hr_patch_size, batch_size, seed, random_downscale):
    """(scale, hr_patch_size, random_downscale) checked; a one-line ValueError otherwise."""
    scale = _check_scale(scale)
    if isinstance(hr_patch_size, bool) or not isinstance(hr_patch_size, numbers.Integral):
        raise ValueError(f"hr_patch_size must be an integer. Received: {hr_patch_size!r}")
    hr_patch_size = int(hr_patch_size)
    if hr_patch_size < 1 or hr_patch_size % scale:
        raise ValueError(
            "hr_patch_size must be a positive multiple of scale. "
            f"Received: hr_patch_size={hr_patch_size}, scale={scale}"
        )
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
    if not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer. Received: seed={seed!r}")
    if random_downscale is not None:
        random_downscale = _check_factor_range(random_downscale)
    return scale, hr_patch_size, random_downscale


def degraded_frame_statistics(vis, nir, scale, degradation, seed, use_nir):
    """`frame_statistics` of a whole HR frame's degraded LR version: what a model with
    exposure conditioning computes from its input when it serves that frame.

    The frame is cut to a multiple of `scale` (top-left) and degraded with the `seed` of its
    training patch, so the statistics see the patch's condition and gain (`blind` draws them
    from the seed alone; only the noise pixels differ).
    """
    name, params = resolve_degradation(degradation)
    vis, nir = to_float_image(vis), to_float_image(nir)
    shape = tf.shape(vis)
    h, w = shape[0] // scale * scale, shape[1] // scale * scale
    vis_lr = apply_degradation(bicubic_downscale(vis[:h, :w], scale), name, seed, **params)
    nir_lr = bicubic_downscale(nir[:h, :w], scale) if use_nir else None
    return frame_statistics(vis_lr[None], None if nir_lr is None else nir_lr[None])[0]


def _training_example_fn(scale, hr_patch_size, seed, random_downscale, vertical_flip,
                         degradation, synthetic_stereo_max_disparity, mirror=False,
                         frame_statistics_of=None):
    """The per-example map of `make_training_dataset`: (index, example) -> (inputs,
    targets), its randomness keyed by (seed, running index)."""
    base_seed = tf.constant([int(seed), _TRAIN_STREAM], tf.int64)

    def process(index, example):
        element_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
        downscale_seed, crop_seed, flip_seed, degrade_seed = tf.unstack(
            tf.random.experimental.stateless_split(element_seed, num=4)
        )
        stereo_seed = tf.random.experimental.stateless_fold_in(element_seed, _STEREO_STREAM)
        frame = frame_from_example(example)
        if mirror:
            frame = mirror_frame(frame)
        if random_downscale is not None:
            frame = random_downscale_frame(
                frame, downscale_seed, random_downscale, min_size=hr_patch_size
            )
        frame_id = example["id"] if "id" in example else None
        stats = None
        if frame_statistics_of:
            stats = degraded_frame_statistics(frame["vis"], frame["nir"], scale, degradation,
                                           degrade_seed, use_nir=frame_statistics_of == "vis_nir")
        frame = random_crop_frame(frame, hr_patch_size, crop_seed, frame_id=frame_id)
        if vertical_flip:
            frame = random_vertical_flip_frame(frame, flip_seed)
        stereo = is_stereo_example(example)
        if synthetic_stereo_max_disparity:
            frame, stereo = with_synthetic_stereo(
                frame, stereo, stereo_seed, float(synthetic_stereo_max_disparity)
            )
        inputs, targets = prepare_pair(
            frame["vis"],
            frame["nir"],
            scale,
            disparity=frame.get("disparity"),
            disparity_valid=frame.get("disparity_valid"),
            degradation=degradation,
            seed=degrade_seed,
        )
        targets["stereo"] = stereo
        if stats is not None:
            inputs["frame_stats"] = stats
        return inputs, targets

    return process


def make_training_dataset(
    ds,
    *,
    scale,
    hr_patch_size,
    batch_size,
    seed,
    random_downscale=(0.5, 1.0),
    vertical_flip=True,
    degradation=None,
    synthetic_stereo_max_disparity=None,
    shuffle_buffer=256,
    mirror=False,
    repeat=True,
    drop_remainder=True,
    frame_statistics_of=None,
):
    """Builds the batched, prefetched training dataset of HR patches and their LR inputs.

    Args:
        ds: dataset of builder examples (see the module docstring); with or without
            `disparity`.
        scale: int, the SR factor.
        hr_patch_size: int, HR patch side; must be divisible by `scale` (the paper uses 120).
        batch_size: int, patches per batch (the paper uses 32).
        seed: int, makes the stream reproducible (shuffle order, downscale factors, crops,
            flips, degradation noise).
        random_downscale: (low, high) range of the whole-frame downscaling factor, or None
            to train on the frames at their recorded size.
        vertical_flip: whether to flip both views upside down with probability 0.5.
        degradation: None (the paper protocol), a name or a mapping for the LR VIS input;
            see `degradations.resolve_degradation`.
        synthetic_stereo_max_disparity: None, or the largest disparity in HR pixels of the
            random piecewise-planar fields that turn registered (`aligned`) patches into
            stereo pairs with a known disparity (`stereo_synthesis`), for training the CVM.
        shuffle_buffer: frames held by the shuffle buffer; 0 or None disables shuffling.
        mirror: mirror both views of every frame left-right first (`mirror_frame`): the data
            of a rig whose NIR camera is on the left.
        repeat: repeat the source forever (then train with `steps_per_epoch`).
        drop_remainder: drop a last partial batch, so the batch dimension is static.
        frame_statistics_of: None, or `vis` / `vis_nir`: inputs also hold `frame_stats`, the
            `frame_statistics` of each example's whole degraded LR frame (of the VIS, or of
            both views), for a model with exposure conditioning.

    Returns:
        A dataset of `(inputs, targets)` batches (see the module docstring); targets also
        hold `stereo` [B], 1.0 for a stereo pair and 0.0 for a registered one (whose NIR must
        not be shifted), and, with `synthetic_stereo_max_disparity`, `disparity_hr` and
        `disparity_valid_hr` for every example (a zero mask where no disparity is known).

    Raises:
        ValueError: for a bad argument, or a source without `vis`/`nir`. A frame smaller than
            the patch stops iteration with `tf.errors.InvalidArgumentError` naming its id.
    """
    scale, hr_patch_size, random_downscale = _check_training_arguments(
        scale, hr_patch_size, batch_size, seed, random_downscale
    )
    degradation_name, degradation_params = resolve_degradation(degradation)
    degradation = {"name": degradation_name, **degradation_params}
    has_disparity = _check_source(ds, min_size=hr_patch_size)
    logging.info(
        "Training pipeline: scale=%d hr_patch_size=%d batch_size=%d seed=%d "
        "random_downscale=%s vertical_flip=%s degradation=%s shuffle_buffer=%s disparity=%s",
        scale, hr_patch_size, batch_size, seed, random_downscale, vertical_flip,
        degradation, shuffle_buffer, has_disparity,
    )

    process = _training_example_fn(
        scale, hr_patch_size, seed, random_downscale, vertical_flip, degradation,
        synthetic_stereo_max_disparity, mirror, frame_statistics_of,
    )
    if shuffle_buffer:
        # Shuffle whole frames before repeating so every epoch sees a new order.
        ds = ds.shuffle(int(shuffle_buffer), seed=int(seed), reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # The running index keys the per-element seeds: a repeated frame gets a new crop.
    ds = ds.enumerate()
    ds = ds.map(_no_autograph(process), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(
    ds, *, scale, multiple=1, degradation=None, seed=0, synthetic_stereo_max_disparity=None,
    mirror=False,
):
    """Builds the whole-frame evaluation dataset, one frame per batch.

    Each frame is cropped at its top-left corner (see `crop_to_multiple`) to a multiple of
    lcm(scale, scale * multiple), so the HR size divides by `scale` and the LR size divides
    by `multiple` (e.g. a network's stride). Frames are batched singly because their sizes
    differ.

    Args:
        ds: dataset of builder examples, with or without `disparity`.
        scale: int, the SR factor.
        multiple: int, what the LR height and width must be a multiple of.
        degradation: None (the paper protocol), a name or a mapping for the LR VIS input.
        seed: int, seeds the random degradations and synthetic disparities (per frame, from
            its position).
        synthetic_stereo_max_disparity: None, or the largest disparity (HR pixels) of the
            fields that turn registered frames into stereo frames with a known disparity
            (held-out measurement of the CVM); their meta geometry then reads `stereo`.
        mirror: mirror every frame left-right (`mirror_frame`; training's validation of a
            NIR-left rig). Keypoints are not mirrored: not with sources that have them.

    Returns:
        A dataset of `(inputs, targets, meta)` with a batch dimension of 1; meta =
        {"id": string [1], "geometry": string [1]} (empty strings where the source lacks
        them), plus "keypoints" [1, N, 4] where the source has them (`rgb_nir_stereo`).
        Disparities are cropped but not rescaled.
    """
    scale = _check_scale(scale)
    if isinstance(multiple, bool) or not isinstance(multiple, numbers.Integral) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer. Received: multiple={multiple!r}")
    crop_multiple = math.lcm(scale, scale * int(multiple))
    degradation_name, degradation_params = resolve_degradation(degradation)
    degradation = {"name": degradation_name, **degradation_params}
    _check_source(ds)
    base_seed = tf.constant([int(seed), _EVAL_STREAM], tf.int64)

    def process(index, example):
        element_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
        frame_id = example["id"] if "id" in example else None
        frame = frame_from_example(example)
        if mirror:
            frame = mirror_frame(frame)
        frame = crop_to_multiple(frame, crop_multiple, frame_id=frame_id)
        degrade_seed = element_seed
        stereo_seed = tf.random.experimental.stateless_fold_in(element_seed, _STEREO_STREAM)
        geometry = _string_or_default(example, "geometry")
        if synthetic_stereo_max_disparity:
            frame, _ = with_synthetic_stereo(
                frame, is_stereo_example(example), stereo_seed, float(synthetic_stereo_max_disparity)
            )
            geometry = tf.constant("stereo")
        inputs, targets = prepare_pair(
            frame["vis"],
            frame["nir"],
            scale,
            disparity=frame.get("disparity"),
            disparity_valid=frame.get("disparity_valid"),
            degradation=degradation,
            seed=degrade_seed,
        )
        meta = {"id": _string_or_default(example, "id"), "geometry": geometry}
        if "keypoints" in example and not mirror:  # (row, column, disparity, class); the crop keeps them
            meta["keypoints"] = tf.cast(example["keypoints"], tf.float32)
        return inputs, targets, meta

    ds = ds.enumerate().map(_no_autograph(process), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(1).prefetch(tf.data.AUTOTUNE)
