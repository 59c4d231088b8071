"""``robust-sweeps verify ROW``: re-check a leaderboard row without running an attack.

The row's kept adversarial points (``evaluation/adversarial.safetensors``) are checked against
its checkpoint (downloaded from the source run) on the same test points (their checksum must
match the row's): every point finite, in [0, 1], inside the ε-ball and misclassified, and the
worst-case accuracy recomputed from them equal to the row's. Exit status 0 when verified, 1 when
not, 2 for bad input (no such row, no kept points).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from trainables.flags import parse


@dataclass(frozen=True)
class VerifyFlags:
    """Re-check a leaderboard row's kept adversarial points against its checkpoint."""

    row: Annotated[str, tyro.conf.Positional]  # leaderboard run id, or a unique prefix of one
    # MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite under $ROBUST_SWEEPS_HOME)
    tracking_uri: str | None = None
    experiment: str = "leaderboard"  # the leaderboard experiment
    device: str = "cpu"
    json: bool = False  # print the findings as one JSON line instead of sentences


def find_row(client, experiment: str, row: str):
    """The leaderboard run whose id is ``row`` or starts with it (exactly one)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no experiment {experiment!r} in this store")
    from dashboards.runs import search_all

    runs = [run for run in search_all(client, [found.experiment_id], "")
            if run.info.run_id.startswith(row)]
    if len(runs) != 1:
        raise LookupError(f"{len(runs)} leaderboard rows match {row!r}; give more of the id")
    return runs[0]


def verify_row(tracking_uri: str, experiment: str, row: str, device: str = "cpu"):
    """The :class:`~attacks.verify.Verification` of one leaderboard row."""
    from mlflow.tracking import MlflowClient

    from attacks.targets import load_points, points_checksum
    from attacks.verify import POINTS_FILE, load_points_file, verify_points
    from dashboards import artifacts
    from trainables.checkpoints import load_checkpoint

    client = MlflowClient(tracking_uri)
    run = find_row(client, experiment, row)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run.info.run_id, f"evaluation/{POINTS_FILE}",
                                             folder)
        except Exception as error:
            raise LookupError(f"row {run.info.run_id} keeps no adversarial points "
                              f"({type(error).__name__})") from None
        broken, _ = load_points_file(path)
        checkpoint = load_checkpoint(artifacts.download_checkpoint(
            tracking_uri, tags["source_run"], Path(folder) / "checkpoint"), device=device)
    n = int(params["n_examples"])
    x, y = load_points(checkpoint.config.dataset, n, device)
    if tags.get("data_checksum") and points_checksum(x, y) != tags["data_checksum"]:
        raise LookupError("the test points differ from the ones the row was evaluated on")
    reported = round(metrics["worst_case_accuracy"] * n)
    return verify_points(checkpoint.model, x, y, broken, epsilon=float(params["epsilon"]),
                         norm=params["norm"], reported_robust=reported)


def main(argv: list[str] | None = None) -> int:
    args = parse(VerifyFlags, sys.argv[1:] if argv is None else argv)
    from dashboards.runs import resolve_tracking_uri
    from sweeps.environment import home

    uri = resolve_tracking_uri(args.tracking_uri, home())
    try:
        found = verify_row(uri, args.experiment, args.row, args.device)
    except LookupError as error:
        print(f"robust-sweeps verify: {error}", file=sys.stderr)
        return 2
    print(json.dumps(found.to_dict()) if args.json else "\n".join(found.lines()))
    return 0 if found.ok else 1


if __name__ == "__main__":
    sys.exit(main())
