"""The `nirvis_folder` dataset; importing this package registers it with TFDS."""

from .nirvis_folder_dataset_builder import Builder

__all__ = ["Builder"]
