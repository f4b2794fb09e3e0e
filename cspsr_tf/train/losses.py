"""The CSPSR loss: MSE + lambda1 * cross-spectral spatial consistency (paper Eq. 3)."""

import tensorflow as tf

from cspsr_tf.ops.warp import warp_by_disparity


def upsample_disparity(disparity, hr_size, scale):
    """LR disparity [B, h, w, 1] in LR pixels -> HR disparity [B, H, W, 1] in HR pixels.

    Bilinear resizing of the map, then its values multiplied by the scale, since a shift of
    one LR pixel is `scale` HR pixels.
    """
    disparity = tf.cast(disparity, tf.float32)
    return tf.image.resize(disparity, hr_size, method="bilinear") * float(scale)


def masked_mean_per_example(values, mask):
    """Mean of [B, H, W, C] values per example [B], over the pixels where mask [B, H, W, 1] == 1.

    An example with no valid pixel gives 0 rather than NaN.
    """
    mask = tf.cast(mask, tf.float32)
    channels = tf.cast(tf.shape(values)[-1], tf.float32)
    total = tf.reduce_sum(values * mask, axis=[1, 2, 3])
    return tf.math.divide_no_nan(total, tf.reduce_sum(mask, axis=[1, 2, 3]) * channels)


def masked_mse_per_example(a, b, mask=None):
    """Mean squared error per example [B], averaged over the pixels where mask == 1."""
    squared = tf.square(tf.cast(a, tf.float32) - tf.cast(b, tf.float32))
    if mask is None:
        return tf.reduce_mean(squared, axis=[1, 2, 3])
    return masked_mean_per_example(squared, mask)


def cssc_loss_per_example(nir_sr_l, nir_hr_r, disp_l, disp_r, scale):
    """L_CSSC of Eq. (3) per example [B].

    L_CSSC = MSE(NIR^l_SR, warp_to_left(NIR^r_HR, disp_l)) + MSE(NIR^r_HR, warp_to_right(NIR^l_SR, disp_r))
    with the LR disparities upsampled to HR (values times the scale), and the pixels whose
    warp sample fell outside the frame left out of each MSE.

    Args:
        nir_sr_l: [B, H, W, 1], the model's NIR output in the left view.
        nir_hr_r: [B, H, W, 1], the ground-truth HR NIR in the right view.
        disp_l, disp_r: [B, h, w, 1] LR disparities (LR pixels); None means zero disparity
            (models without CVM, or aligned data).
        scale: the SR factor.
    """
    nir_sr_l = tf.cast(nir_sr_l, tf.float32)
    nir_hr_r = tf.cast(nir_hr_r, tf.float32)
    if disp_l is None or disp_r is None:
        return 2.0 * masked_mse_per_example(nir_sr_l, nir_hr_r)
    hr_size = tf.shape(nir_hr_r)[1:3]
    d_l = upsample_disparity(disp_l, hr_size, scale)
    d_r = upsample_disparity(disp_r, hr_size, scale)
    nir_hr_l, valid_l = warp_by_disparity(nir_hr_r, d_l, "right_to_left")
    nir_sr_r, valid_r = warp_by_disparity(nir_sr_l, d_r, "left_to_right")
    return masked_mse_per_example(nir_sr_l, nir_hr_l, valid_l) + masked_mse_per_example(
        nir_hr_r, nir_sr_r, valid_r
    )


def cspsr_loss_per_example(outputs, targets, scale, lambda_cssc=0.1):
    """Eq. (3) per example: a dict of [B] tensors `total`, `vis_mse` and `cssc`.

    Args:
        outputs: the model's output dict (`vis_sr`, and `nir_sr`, `disp_l`, `disp_r` when the
            model has them).
        targets: dict with `vis_hr` [B, H, W, 3] and `nir_hr` [B, H, W, 1] (right view).
        scale: the SR factor.
        lambda_cssc: lambda1 (paper: 0.1). The term is skipped for models without a NIR branch.
    """
    vis_mse = masked_mse_per_example(outputs["vis_sr"], targets["vis_hr"])
    if "nir_sr" in outputs and lambda_cssc > 0:
        cssc = cssc_loss_per_example(
            outputs["nir_sr"], targets["nir_hr"], outputs.get("disp_l"), outputs.get("disp_r"), scale
        )
    else:
        cssc = tf.zeros_like(vis_mse)
    return {"total": vis_mse + lambda_cssc * cssc, "vis_mse": vis_mse, "cssc": cssc}


def cspsr_loss(outputs, targets, scale, lambda_cssc=0.1):
    """Eq. (3) averaged over the batch: a dict of scalars `total`, `vis_mse`, `cssc`."""
    per_example = cspsr_loss_per_example(outputs, targets, scale, lambda_cssc)
    return {name: tf.reduce_mean(value) for name, value in per_example.items()}
