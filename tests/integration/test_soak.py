"""CI's short kill/resume soak: three SIGKILLs of one sweep's driver (at a random moment, the
moment a trial ends in Optuna, and while MLflow is reconciled), each followed by ``--resume``;
the full ten-kill soak is ``benchmarks/soak_resume.py``."""

import importlib.util
import sys

import pytest

from tests.integration.cluster import ROOT

pytestmark = pytest.mark.integration


def test_three_kills_and_resumes_lose_and_duplicate_nothing(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("soak_resume",
                                                  ROOT / "benchmarks" / "soak_resume.py")
    soak = sys.modules["soak_resume"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    code = soak.main(["--cycles", "3", "--samples", "4", "--epochs", "3", "--train-subset",
                      "3000", "--attack-steps", "5", "--home", str(tmp_path), "--seed", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "soak: 3 of 3 kill/resume cycles passed", out[-3:]
    assert code == 0
