"""The `rgb_nir_stereo` dataset; importing this package registers it with TFDS."""

from .rgb_nir_stereo_dataset_builder import Builder

__all__ = ["Builder"]
