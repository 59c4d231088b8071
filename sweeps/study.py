"""Studies as data: a sweep written as a YAML file, run by ``robust-sweeps sweep``.

A study file holds a ``name``, a ``description``, optionally a ``preset`` (``DEFENSE/PRESET``,
the defense's published settings as the base config), ``base`` (TrialConfig fields over the
preset), ``smoke_base`` (fields replaced under ``--smoke``) and any :class:`SweepSpec` field
(``num_samples``, ``sampler``, ``grace_period``, …). The files in ``sweeps/studies/`` are
registered by their file name; any other file is run by its path. Adding a study needs no Python.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sweeps.spec import SweepSpec

STUDY_DIR = Path(__file__).resolve().parent / "studies"
OWN_KEYS = ("description", "preset", "base", "smoke_base")


class StudyError(ValueError):
    """A study file that cannot be read, or names unknown fields."""


@dataclass(frozen=True)
class Study:
    spec: SweepSpec
    description: str = ""
    smoke_base: dict[str, Any] = field(default_factory=dict)


def study_names() -> list[str]:
    return sorted(path.stem for path in STUDY_DIR.glob("*.yaml"))


def study_path(study: str | Path) -> Path:
    """A registered study's file, or ``study`` itself when it is a path to a YAML file."""
    path = Path(study)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise StudyError(f"no study file {path}")
        return path
    if str(study) not in study_names():
        raise StudyError(f"unknown study {str(study)!r}; known: {', '.join(study_names())} "
                         "(or a path to a .yaml file)")
    return STUDY_DIR / f"{study}.yaml"


def load_study(study: str | Path, *, check: bool = True) -> Study:
    """The study named or stored at ``study``, its spec checked (fields, ranges, TrialConfig).

    ``check=False`` reads the file only (no preset, no TrialConfig check): what ``--help``
    needs to show the study's values at once."""
    path = study_path(study)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study is a mapping of fields")
    spec_fields = {f.name for f in dataclasses.fields(SweepSpec)} - {"base"}
    unknown = sorted(set(data) - spec_fields - set(OWN_KEYS))
    if unknown:
        raise StudyError(f"{path}: unknown field(s) {unknown}; allowed: "
                         f"{', '.join(sorted(spec_fields | set(OWN_KEYS)))}")
    base: dict[str, Any] = {}
    if data.get("preset") and check:
        from trainables.defenses import preset

        defense, _, preset_name = str(data["preset"]).partition("/")
        base = preset(defense, preset_name)
    base = {**base, **(data.get("base") or {})}
    try:
        spec = SweepSpec(base=base, **{k: v for k, v in data.items() if k in spec_fields})
        if check:
            spec.check()
    except (TypeError, ValueError) as error:
        raise StudyError(f"{path}: {error}") from error
    return Study(spec, str(data.get("description", "")).strip(), data.get("smoke_base") or {})
