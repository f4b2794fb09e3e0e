"""Serving formats: SavedModel (TensorFlow Serving) and LiteRT."""
