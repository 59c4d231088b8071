"""MLflow tracking (the only MLflow import of the service), leaderboard queries and reports."""

import os

# Artifacts are fetched in workers and scripts: log lines, not terminal progress bars.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
