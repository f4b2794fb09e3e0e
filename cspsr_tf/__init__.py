"""CSPSR in TensorFlow / Keras 3: NIR-guided super-resolution of visible images.

Importing the package is cheap; import the sub-modules you need
(`cspsr_tf.model`, `cspsr_tf.losses`, `cspsr_tf.metrics`, `cspsr_tf.data.pipeline`).
`cspsr_tf.from_preset(name)` returns a trained model shipped with the package
(`cspsr_tf.presets`).
"""

__version__ = "0.1.0"


def from_preset(name, geometry=None):
    """The trained Keras model of a shipped preset (`cspsr_tf.presets.PRESETS`)."""
    from cspsr_tf.presets import from_preset as load

    return load(name, geometry)
