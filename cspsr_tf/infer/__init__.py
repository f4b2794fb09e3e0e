"""Running a model on frames of any size: tiling and the PNG writer."""
