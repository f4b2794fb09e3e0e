"""Pure TensorFlow / NumPy functions on images: resizing, warping, cross-spectral similarity,
quality metrics. They import nothing else of cspsr_tf."""
