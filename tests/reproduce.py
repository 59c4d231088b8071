"""Helpers for the tests of ``benchmarks/reproduce/``: import a script, run it at smoke size."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "benchmarks" / "reproduce"


def verdict_pattern(paper: str) -> re.Pattern[str]:
    """The last line every reproduction script prints."""
    return re.compile(rf"^{re.escape(paper)} claim: "
                      r"(holds|does not hold|holds in part \(\d+ of \d+\))$")


def load_script(name: str) -> ModuleType:
    """``benchmarks/reproduce/<name>.py`` as a module (its sibling ``common`` importable)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name while it executes
    spec.loader.exec_module(module)
    return module


def run_smoke(name: str, out: Path, timeout: int = 600
              ) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    """Run the script with ``--smoke --threads 1 --out out``; the process and its results.json.

    Fails with the script's stderr tail when it exits non-zero.
    """
    done = subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), "--smoke", "--threads",
                           "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((out / "results.json").read_text())
