"""The `ranus` dataset; importing this package registers it with TFDS."""

from .ranus_dataset_builder import Builder

__all__ = ["Builder"]
