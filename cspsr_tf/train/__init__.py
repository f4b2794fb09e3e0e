"""Training: losses, the run configuration, the model directory, the stages (CVM
pre-training, SR) and the loop."""
