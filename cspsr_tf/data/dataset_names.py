"""The dataset builders of datasets/, by name; free of TensorFlow (the command lines check a
--dataset before it loads). `sources` loads them."""

DATASETS = ("nirvis_synthetic", "nirvis_folder", "rgb_nir_stereo", "nirscene", "ranus")
# Builders that read files the user downloaded by hand.
MANUAL_DATASETS = ("nirvis_folder", "rgb_nir_stereo", "nirscene", "ranus")
