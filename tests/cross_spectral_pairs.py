"""Cross-spectral stereo pairs with a known shift, built with numpy for the CVM tests.

The pairs are built here with numpy, after the usual model of a cross-spectral pair: the
same edges, with a material-dependent gain. A smooth random texture T is the scene; the VIS
image tints it (r = T, g = 0.8 T + 0.1, b = 0.6 T + 0.2), and the NIR image is
0.5 + g (T - 0.5) + 0.1 U with a slowly varying gain g from -1 to 1 (so its contrast is
reversed in some regions, as for vegetation or dyes) and an independent texture U (detail
seen in one spectrum only). The NIR camera sits to the right:
nir_right(x) = nir_left(x + k), so the true left disparity is k.
"""

import numpy as np
from scipy import ndimage


def smooth_texture(rng, shape, sigma):
    img = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (img - img.min()) / (img.max() - img.min())


def cross_spectral_scene(rng, height, width, max_shift, sigma=1.5):
    """(vis_left [1, H, W, 3], nir_right(k) -> [1, H, W, 1] with left disparity k)."""
    t = smooth_texture(rng, (height, width + max_shift), sigma)
    u = smooth_texture(rng, (height, width + max_shift), sigma)
    gain = 2.0 * smooth_texture(rng, (height, width + max_shift), 8.0) - 1.0
    vis = np.stack([t, 0.8 * t + 0.1, 0.6 * t + 0.2], axis=-1)[:, :width]
    nir = 0.5 + gain * (t - 0.5) + 0.1 * u

    def nir_right(shift):
        return nir[np.newaxis, :, shift : shift + width, np.newaxis].astype(np.float32)

    return vis[np.newaxis].astype(np.float32), nir_right


def cross_spectral_pair(rng, height, width, shift, sigma=1.5):
    """(vis_left [1, H, W, 3], nir_right [1, H, W, 1]) with left disparity `shift` (integer)."""
    vis, nir_right = cross_spectral_scene(rng, height, width, shift, sigma)
    return vis, nir_right(shift)
