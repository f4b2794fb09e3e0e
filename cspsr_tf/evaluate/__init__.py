"""Evaluation on TFDS splits: SR metrics against bicubic, disparity errors, figures."""
