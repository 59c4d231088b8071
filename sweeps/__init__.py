"""One runnable script per study, all built on ``sweeps.runner``."""
