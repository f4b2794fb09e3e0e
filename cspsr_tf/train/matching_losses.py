"""The alignment signal of the CVM: a cross-spectral matching loss, label-free where it must be.

L_CSSC (Eq. 3) cannot align the NIR with the VIS image: both of its terms are warped by the
same disparities, so any left-right-consistent disparity minimises it. In the paper the
alignment comes from a separately trained cross-spectral stereo network (Zhi et al. 2018):
a photometric error between the VIS image (translated to pseudo-NIR) and the warped NIR,
material-aware smoothness and left-right consistency. This module is that objective, for
`train.py --cvm_steps` (pre-training) and the `--lambda_match` term of the joint stage.

Terms (each a [B] tensor; LR resolution; disparities in LR pixels):
- photometric: raw intensities differ between the spectra (vegetation is bright in NIR and
  dark in VIS, dyes vanish in NIR), while edges mostly stay where they are, with a
  material-dependent gain. So the luminance of the left VIS image and the right NIR image
  warped to the left by `disp_l` are compared by 1 - NCC^2 in local Gaussian windows
  (`layers.cross_spectral_similarity`: invariant to local gain, offset and contrast
  reversal), plus the symmetric right-view term with `disp_r`, at three pre-blur levels
  (sigma 0, 1, 2 px) that widen the basin of attraction to a few pixels. (A first version
  compared normalised gradient magnitudes by L1: on a pair with a contrast-reversing gain its
  minimum missed the true shift, see tests/test_matching_losses.py.)
  Pixels whose match falls outside the frame are left out; pixels that fail the left-right
  check (occluded in the other view) are down-weighted to 0.2 (never to 0, so the loss
  cannot be lowered by making everything inconsistent).
- smoothness: edge-aware first-order smoothness of both disparities (Monodepth, Zhi et al.).
- consistency: |disp_l - disp_r warped to the left| and the symmetric term.
- supervised: where a ground-truth disparity is known (registered pairs moved into a virtual
  right camera by `data.stereo_synthesis`, `nirvis_synthetic`), the L1 error of the
  disparity, at the finest scale and at every coarser head of the CVM (upsampled).
Examples flagged as registered (`stereo` = 0) contribute only their supervised term.
"""

import tensorflow as tf

from cspsr_tf.ops.cross_spectral_similarity import gaussian_blur, local_ncc_squared, luminance
from cspsr_tf.ops.warp import warp_by_disparity
from cspsr_tf.train.losses import masked_mean_per_example

STRUCTURE_SIGMAS = (0.0, 1.0, 2.0)
OCCLUDED_WEIGHT = 0.2
# Disparity disagreement (LR pixels) beyond which a pixel counts as occluded.
CONSISTENCY_THRESHOLD = 1.0


def edge_aware_smoothness_per_example(disparity, image):
    """Mean |grad d| / mean(d), down-weighted where the image has edges: [B]."""
    disparity = tf.cast(disparity, tf.float32)
    d = disparity / (tf.reduce_mean(disparity, axis=[1, 2, 3], keepdims=True) + 1e-3)
    lum = luminance(image)
    dx = tf.abs(d[:, :, 1:] - d[:, :, :-1]) * tf.exp(-10.0 * tf.abs(lum[:, :, 1:] - lum[:, :, :-1]))
    dy = tf.abs(d[:, 1:] - d[:, :-1]) * tf.exp(-10.0 * tf.abs(lum[:, 1:] - lum[:, :-1]))
    return _mean_or_zero(dx) + _mean_or_zero(dy)


def _mean_or_zero(values):
    """Per-example mean of [B, h, w, C]; 0 when empty (a frame 1 px high has no vertical
    differences: tf.reduce_mean would give NaN)."""
    count = tf.cast(tf.reduce_prod(tf.shape(values)[1:]), values.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(values, axis=[1, 2, 3]), count)


def photometric_per_example(vis, nir, disp_l, disp_r):
    """1 - local NCC^2 of VIS-left vs NIR-right warped by the disparities (both views): [B].

    Computed at each pre-blur level of `STRUCTURE_SIGMAS`; the blurred levels widen the
    basin of attraction to a few pixels.
    """
    lum_vis, lum_nir = luminance(vis), luminance(nir)
    nir_l, inside_l = warp_by_disparity(lum_nir, disp_l, "right_to_left")
    vis_r, inside_r = warp_by_disparity(lum_vis, disp_r, "left_to_right")
    weight_l = inside_l * _visibility_weight(disp_l, disp_r, "right_to_left")
    weight_r = inside_r * _visibility_weight(disp_r, disp_l, "left_to_right")
    cost_l, cost_r = [], []
    for sigma in STRUCTURE_SIGMAS:
        cost_l.append(1.0 - local_ncc_squared(gaussian_blur(lum_vis, sigma), gaussian_blur(nir_l, sigma)))
        cost_r.append(1.0 - local_ncc_squared(gaussian_blur(lum_nir, sigma), gaussian_blur(vis_r, sigma)))
    return masked_mean_per_example(tf.concat(cost_l, -1), weight_l) + masked_mean_per_example(
        tf.concat(cost_r, -1), weight_r
    )


def _visibility_weight(disp, other, direction):
    """1 where the left-right check passes, OCCLUDED_WEIGHT where it fails (no gradient)."""
    other_here, _ = warp_by_disparity(other, disp, direction)
    consistent = tf.cast(tf.abs(disp - other_here) < CONSISTENCY_THRESHOLD, tf.float32)
    return tf.stop_gradient(OCCLUDED_WEIGHT + (1.0 - OCCLUDED_WEIGHT) * consistent)


def consistency_per_example(disp_l, disp_r):
    """|disp_l - disp_r warped to the left| + the symmetric term, inside the frame: [B]."""
    disp_r_in_left, inside_l = warp_by_disparity(disp_r, disp_l, "right_to_left")
    disp_l_in_right, inside_r = warp_by_disparity(disp_l, disp_r, "left_to_right")
    return masked_mean_per_example(tf.abs(disp_l - disp_r_in_left), inside_l) + masked_mean_per_example(
        tf.abs(disp_r - disp_l_in_right), inside_r
    )


def supervised_per_example(disp_l, pyramid, gt, valid):
    """L1 disparity error where the ground truth is known, finest and coarser heads: [B]."""
    disp_l = tf.cast(disp_l, tf.float32)
    loss = masked_mean_per_example(tf.abs(disp_l - gt), valid)
    height, width = tf.shape(disp_l)[1], tf.shape(disp_l)[2]
    for level in pyramid[:-1]:
        coarse = tf.cast(level[..., :1], tf.float32)
        padded_size = tf.shape(pyramid[-1])[1:3]
        upsampled = tf.image.resize(coarse, padded_size, method="bilinear")[:, :height, :width]
        loss += masked_mean_per_example(tf.abs(upsampled - gt), valid)
    return loss


def cvm_matching_loss_per_example(
    cvm_outputs,
    vis,
    nir,
    *,
    stereo=None,
    disparity=None,
    disparity_valid=None,
    smoothness_weight=0.01,
    consistency_weight=0.01,
    supervised_weight=1.0,
):
    """The CVM's matching loss at the resolution of its input: a dict of [B] tensors.

    Args:
        cvm_outputs: dict with `disp_l`, `disp_r` [B, h, w, 1] (LR pixels) and optionally
            `pyramid` (the CVM's coarser heads, for the supervised term).
        vis: the left VIS [B, h, w, 3]; nir: the right NIR [B, h, w, 1] (same size).
        stereo: optional [B] flags (1 stereo, 0 registered); registered examples keep only
            the supervised term (their disparity is zero by construction).
        disparity, disparity_valid: optional ground-truth LEFT disparity [B, h, w, 1] in LR
            pixels and its mask (see `disparity_to_lr`).
        smoothness_weight, consistency_weight, supervised_weight: term weights.

    Returns:
        dict of [B] tensors: total, photometric, smoothness, consistency, supervised.
    """
    disp_l = tf.cast(cvm_outputs["disp_l"], tf.float32)
    disp_r = tf.cast(cvm_outputs["disp_r"], tf.float32)
    photometric = photometric_per_example(vis, nir, disp_l, disp_r)
    smoothness = edge_aware_smoothness_per_example(disp_l, vis) + edge_aware_smoothness_per_example(
        disp_r, nir
    )
    consistency = consistency_per_example(disp_l, disp_r)
    if stereo is not None:
        stereo = tf.reshape(tf.cast(stereo, tf.float32), [-1])
        photometric, smoothness, consistency = (
            stereo * photometric, stereo * smoothness, stereo * consistency
        )
    if disparity is not None and supervised_weight > 0:
        supervised = supervised_per_example(
            disp_l, cvm_outputs.get("pyramid") or [disp_l], disparity, disparity_valid
        )
    else:
        supervised = tf.zeros_like(photometric)
    total = (
        photometric
        + smoothness_weight * smoothness
        + consistency_weight * consistency
        + supervised_weight * supervised
    )
    return {
        "total": total,
        "photometric": photometric,
        "smoothness": smoothness,
        "consistency": consistency,
        "supervised": supervised,
    }
