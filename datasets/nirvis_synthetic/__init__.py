"""The `nirvis_synthetic` dataset; importing this package registers it with TFDS."""

from .nirvis_synthetic_dataset_builder import Builder

__all__ = ["Builder"]
