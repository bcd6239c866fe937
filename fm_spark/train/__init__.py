"""Training loop, evaluation, checkpoints, TorchDistributor launch."""
