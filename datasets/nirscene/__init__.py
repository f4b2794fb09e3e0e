"""The `nirscene` dataset; importing this package registers it with TFDS."""

from .nirscene_dataset_builder import Builder

__all__ = ["Builder"]
