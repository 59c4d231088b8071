"""MLflow tracking (the only MLflow import of the service), leaderboard queries and reports."""
