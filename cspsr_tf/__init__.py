"""CSPSR in TensorFlow / Keras 3: NIR-guided super-resolution of visible images.

Importing the package is cheap; import the sub-modules you need
(`cspsr_tf.model`, `cspsr_tf.losses`, `cspsr_tf.metrics`, `cspsr_tf.data.pipeline`).
"""

__version__ = "0.1.0"
