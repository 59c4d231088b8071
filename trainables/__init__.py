"""What runs inside one trial: config, data, models, defenses, the training engine."""
