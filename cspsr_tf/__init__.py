"""CSPSR in TensorFlow / Keras 3: NIR-guided super-resolution of visible images.

Importing the package is cheap; import the sub-modules you need
(`cspsr_tf.model.build`, `cspsr_tf.train.losses`, `cspsr_tf.ops.metrics`, `cspsr_tf.data.pipeline`).
`cspsr_tf.from_preset(name)` returns a trained model shipped with the package
(`cspsr_tf.presets`).
"""

__version__ = "0.1.0"


def from_preset(name, geometry=None):
    """The trained Keras model of a shipped preset (`cspsr_tf.presets.PRESETS`), float32.

    Args:
        name: a key of `PRESETS`.
        geometry: None (the preset's own: `stereo`), `stereo` or `aligned` (a registered
            camera pair: zero disparity, the CVM skipped).

    Returns:
        A Keras model taking {"vis_lr": [B, h, w, 3], "nir_lr": [B, h, w, 1]} in [0, 1] and
        returning a dict with `vis_sr` (and `nir_sr`, `disp_l`, ... for CSPSR).
    """
    import os

    from cspsr_tf.model.model_io import load_model
    from cspsr_tf.presets import weights_path

    path = weights_path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Preset {name!r} has no weights at {path} (a partial checkout?)")
    model, config = load_model(path)
    if geometry is not None:
        from cspsr_tf.model.build import with_geometry

        model, config = with_geometry(model, config, geometry)
    return model
