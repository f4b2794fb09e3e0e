"""Statistics of whole LR frames that tell their exposure condition apart (clean, dark,
over-exposed). The model's exposure conditioning (`model/layers/exposure.py`) reads them from
its input; the training pipeline computes them on each example's whole degraded frame, with
this one function, so training and serving see the same numbers.
"""

import tensorflow as tf

# BT.601 luma weights, as the metrics use.
_LUMA = (0.299, 0.587, 0.114)
# A pixel at or above this is taken as clipped (8-bit 250 and up).
CLIPPED_LEVEL = 250.0 / 255.0
_LOG_FLOOR = 1e-4


def statistics_size(use_nir):
    """Length of the `frame_statistics` vector."""
    return 13 if use_nir else 8


def _log(x):
    # Natural log scaled to about [-2, 0] for values in [1e-4, 1]: keeps the MLP's inputs O(1).
    return tf.math.log(x + _LOG_FLOOR) / 4.0


def _mean_abs_dx(image):
    """Mean absolute difference of horizontal neighbours: texture plus noise."""
    return tf.reduce_mean(tf.abs(image[:, :, 1:, :] - image[:, :, :-1, :]), axis=[1, 2, 3])


def frame_statistics(vis, nir=None):
    """Statistics of whole LR frames that tell their exposure condition apart.

    Args:
        vis: [B, h, w, 3] LR visible frames in [0, 1] (as the model receives them).
        nir: optional [B, h, w, 1] LR NIR frames (any view: only global values are read).

    Returns:
        float32 [B, statistics_size(nir is not None)]: the mean of each colour, the luma's
        standard deviation and log mean, the share of clipped pixels (any colour >= 250/255)
        and of black ones (luma < 2/255), and the log mean |horizontal difference| of the luma
        (noise and texture); with `nir`, the NIR's mean, standard deviation, clipped share,
        log mean |difference|, and the log ratio of the VIS luma's mean to the NIR's.
    """
    vis = tf.cast(vis, tf.float32)
    luma = tf.reduce_sum(vis * tf.constant(_LUMA, tf.float32), axis=-1, keepdims=True)
    luma_mean = tf.reduce_mean(luma, axis=[1, 2, 3])
    columns = [
        tf.reduce_mean(vis, axis=[1, 2]),  # [B, 3]
        tf.math.reduce_std(luma, axis=[1, 2, 3])[:, None],
        _log(luma_mean)[:, None],
        tf.reduce_mean(tf.cast(tf.reduce_max(vis, axis=-1) >= CLIPPED_LEVEL, tf.float32), axis=[1, 2])[:, None],
        tf.reduce_mean(tf.cast(luma < 2.0 / 255.0, tf.float32), axis=[1, 2, 3])[:, None],
        _log(_mean_abs_dx(luma))[:, None],
    ]
    if nir is not None:
        nir = tf.cast(nir, tf.float32)
        nir_mean = tf.reduce_mean(nir, axis=[1, 2, 3])
        columns += [
            nir_mean[:, None],
            tf.math.reduce_std(nir, axis=[1, 2, 3])[:, None],
            tf.reduce_mean(tf.cast(nir >= CLIPPED_LEVEL, tf.float32), axis=[1, 2, 3])[:, None],
            _log(_mean_abs_dx(nir))[:, None],
            (_log(luma_mean) - _log(nir_mean))[:, None],
        ]
    return tf.concat(columns, axis=-1)
