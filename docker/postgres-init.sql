-- The Optuna studies live beside MLflow in the same PostgreSQL, in a database of their own (both
-- keep an alembic_version table, so they cannot share one). Runs once, on an empty data volume.
CREATE DATABASE optuna;
