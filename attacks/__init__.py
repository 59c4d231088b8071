"""Every perturbation, for training and for evaluation."""
