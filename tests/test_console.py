"""``robust-sweeps``: every subcommand answers ``--help`` without loading the jobs, and the
result readers (leaderboard, compare) work on a real sqlite MLflow store."""

import json
import subprocess
import sys

import pytest
from boards import write_board

from sweeps.console import COMMANDS, main
from tests.integration.cluster import ROOT

READERS = ("report", "evaluate", "verify", "leaderboard", "compare")


def imported_modules(*args: str) -> set[str]:
    """Modules a fresh interpreter imports to run ``robust-sweeps ARGS``."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "sweeps.console", *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
            if line.startswith("import time:")}


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's --help
        return exit.code


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_help_answers(command, capsys):
    assert exit_code([command, "--help"] if command else ["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage:" in out and (not command or f"robust-sweeps {command}" in out)


@pytest.mark.parametrize("command", READERS)
def test_reading_results_loads_neither_ray_tune_nor_torch(command):
    modules = imported_modules(command, "--help")
    assert not {m for m in modules if m == "ray.tune" or m.startswith("ray.tune.")}
    assert "torch" not in modules and "mlflow" not in modules


def test_help_of_the_jobs_loads_no_ray_tune():
    for command in ("train", "sweep", "pool"):
        assert "ray.tune" not in imported_modules(command, "--help"), command


def test_unknown_command_and_study_fail_with_the_known_ones(capsys):
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err
    assert main(["sweep", "nonsense"]) == 2
    assert "emr_wrn" in capsys.readouterr().err


def test_leaderboard_and_compare_read_a_real_store(tmp_path, monkeypatch, capsys):
    uri = write_board(tmp_path)
    monkeypatch.setenv("ROBUST_SWEEPS_HOME", str(tmp_path / "home"))
    main(["leaderboard", "--tracking-uri", uri])
    table = capsys.readouterr().out
    assert table.index("emr") < table.index("pgd_at") < table.index("trades")
    main(["leaderboard", "--tracking-uri", uri, "--sweep", "s2", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert {row["defense"] for row in rows} == {"trades", "broken"}
    main(["compare", "--tracking-uri", uri, "--sweeps", "s1", "s2"])
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert 0 <= result["p_value"] <= 1 and result["n"] > 0
    assert "exact McNemar p =" in captured.err
    with pytest.raises(SystemExit, match="no trusted leaderboard row"):
        main(["compare", "--tracking-uri", uri, "--sweeps", "s1", "missing"])
