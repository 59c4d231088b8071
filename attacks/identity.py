"""Canonical attack identity: one attack, however it is spelled, is one leaderboard column.

An attack's identity is its registered name and the settings that change its result, less what
the row fixes for all its attacks (:data:`ROW_LEVEL`: the threat model ``epsilon`` and ``norm``,
the evaluation's seed, and the defense an adaptive attack targets), and less every setting at
its default. Defaults are not listed anywhere: a setting is at its default when leaving it out
of the call to :func:`attacks.suite.create_attack` gives the same recorded settings
(``Attack.settings``), so defaults come from each factory's own signature and derived settings
count as default when they equal their derivation (PGD's step size 2.5·ε/steps, an SPSA preset's
values). A few settings always name their attack (:data:`NAMING`: PGD's steps and loss).

The column is the name, then the shown settings, as plain characters (letters, digits, ``.``
and ``_``; every other run of characters becomes one ``_``):

* named settings read as the attack's table says: ``pgd-100-ce``, ``pgd:steps=100,loss=ce``,
  ``pgd:loss=ce,steps=100`` and ``pgd:steps=100`` are all ``pgd100_ce``; ``pgd-100-cw`` is
  ``pgd100_cw``; ``l2-pgd:steps=50`` is ``l2_pgd50_ce``; AutoAttack's version and SPSA's preset
  read as their value: ``aa-standard`` and ``autoattack`` are ``autoattack``,
  ``autoattack:version=rand`` is ``autoattack_rand``; ``spsa-light`` (``spsa:preset=lma-at``,
  the LMA-AT paper's setting) is ``spsa_lma_at``, while ``spsa-strong``, ``spsa:preset=strong``
  and ``spsa`` are ``spsa`` (the strong setting of Uesato et al. 2018 is SPSA's default);
* any other setting off its default follows, in name order, as ``_<key><value>`` for numbers
  (``square:queries=1000`` is ``square_queries1000``; ``square:queries=5000`` is ``square``),
  ``_<key>_<value>`` for text and lists (``pgd100_ce_random_start_none``), ``_<key>`` /
  ``_no_<key>`` for true / false;
* EOT and BPDA (Athalye et al. 2018, §4.1) come last: ``eot_samples`` = k > 1 appends
  ``_eot<k>``, ``bpda=true`` appends ``_bpda`` (``pgd100_ce_eot20_bpda``).

An attack the registry cannot rebuild from its record (an unknown name, settings no call
reproduces) is identified by its recorded settings that differ from the factory's defaults, or
all of them when even the defaults cannot be built.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attacks.schema import EvaluationRecord
from attacks.suite import ALIASES, ATTACKS, create_attack, parse_spec

# what a row fixes for every attack: its threat model, the evaluation's seed, and the defense the
# checkpoint was trained with (whose objective the adaptive attack ascends)
ROW_LEVEL = ("epsilon", "norm", "seed", "defense", "defense_params")
REFERENCE_EPSILON = 8 / 255  # builds an attack known only by its spec (ε changes no identity)
SUFFIXES = {"eot_samples": "_eot{}", "bpda": "_bpda"}  # appended last, in this order


@dataclass(frozen=True)
class Naming:
    """How an attack's column reads: settings shown even at their default (``always``),
    how a setting is written (``formats``, ``{}`` is its value) and recorded settings that
    name a configuration rather than change it (``labels``: SPSA's preset)."""

    always: tuple[str, ...] = ()
    formats: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] = ()


_PGD = Naming(always=("steps", "loss"), formats={"steps": "{}", "loss": "_{}"})
NAMING: dict[str, Naming] = {
    "pgd": _PGD,
    "l2-pgd": _PGD,
    "autoattack": Naming(formats={"version": "_{}"}),
    "spsa": Naming(formats={"preset": "_{}"}, labels=("preset",)),
}


@dataclass(frozen=True)
class Identity:
    """A registered attack name and its identifying settings, in column order."""

    name: str
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def column(self) -> str:
        naming = NAMING.get(self.name, Naming())
        text = self.name + "".join(_part(naming, key, value) for key, value in self.settings)
        return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")

    @property
    def spec(self) -> str:
        """The canonical spec string (``pgd:loss=ce,steps=100``), which builds the same attack
        when every setting is one a spec can hold (numbers, text, lists)."""
        items = sorted(self.settings)
        return self.name + (":" + ",".join(f"{k}={_spec_value(v)}" for k, v in items)
                            if items else "")


def identify(label: str, name: str | None = None,
             settings: Mapping[str, Any] | None = None) -> Identity:
    """The identity of the attack run as ``label`` (a spec string), registered as ``name`` with
    the recorded ``settings``; without them, of the attack ``label`` builds."""
    base, spec_params = _parse(label)
    if name is None or settings is None:
        if base is None:
            raise ValueError(f"{label!r} is not an attack spec")
        built = _build(base, {"epsilon": REFERENCE_EPSILON}, spec_params)
        if built is None:
            raise ValueError(f"{label!r} does not build an attack")
        name, settings = base, built
    row = {k: settings[k] for k in ROW_LEVEL if k in settings}
    row.setdefault("epsilon", REFERENCE_EPSILON)
    naming = NAMING.get(name, Naming())
    accepted = _accepted(name)
    params = {k: v for k, v in settings.items() if k not in ROW_LEVEL and accepted(k)}
    if base == name:
        params.update({k: v for k, v in spec_params.items() if k not in ROW_LEVEL})
    reference = _build(name, row, params)
    if reference is None or not _agrees(reference, settings):
        return Identity(name, _ordered(naming, _differing(name, row, settings)))
    shown = _minimal(name, row, params, reference, naming)
    shown.update({k: reference[k] for k in naming.always if k in reference})
    return Identity(name, _ordered(naming, shown))


def column_of(label: str, name: str | None = None,
              settings: Mapping[str, Any] | None = None) -> str:
    """The leaderboard column of an attack (see :func:`identify`)."""
    return identify(label, name, settings).column


def canonical_columns(record: EvaluationRecord) -> EvaluationRecord:
    """``record`` with every attack's column recomputed from its identity (for documents
    whose columns predate canonical identities)."""
    attacks = tuple(dataclasses.replace(a, column=column_of(a.label, a.name, a.settings))
                    for a in record.attacks)
    return dataclasses.replace(record, attacks=attacks)


# -- pieces -------------------------------------------------------------------------------------
def _parse(label: str) -> tuple[str | None, dict[str, Any]]:
    """``(registered name, settings)`` a spec string names; ``(None, {})`` for other labels."""
    try:
        base, params = parse_spec(label)
    except ValueError:
        return None, {}
    if base in ALIASES:
        base, alias_params = ALIASES[base]
        params = {**alias_params, **params}
    return (base, params) if base in ATTACKS.names() else (None, {})


def _accepted(name: str):
    """Whether the factory of ``name`` takes a setting (by its signature)."""
    try:
        parameters = inspect.signature(ATTACKS.get(name)).parameters
    except Exception:  # an unknown name: nothing is rebuilt
        return lambda key: False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return lambda key: True
    return lambda key: key in parameters


def _build(name: str, row: Mapping[str, Any], params: Mapping[str, Any]
           ) -> dict[str, Any] | None:
    """The recorded settings of ``name`` built with ``params`` (None if it cannot be built)."""
    try:
        return dict(create_attack(name, defaults=dict(row), **params).settings)
    except Exception:
        return None


def _agrees(built: Mapping[str, Any], recorded: Mapping[str, Any]) -> bool:
    """Every recorded setting the built attack also records has the same value."""
    return all(_same(built[key], value) for key, value in recorded.items() if key in built)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return _equal(a, b)
    return a == b


def _equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)


def _result(settings: Mapping[str, Any], naming: Naming) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in naming.labels}


def _minimal(name: str, row: Mapping[str, Any], params: Mapping[str, Any],
             reference: Mapping[str, Any], naming: Naming) -> dict[str, Any]:
    """The fewest ``params`` that still build ``reference``: settings are left out one at a
    time, the unnamed ones first (so a preset outlives the values it implies)."""
    kept = dict(params)
    target = _result(reference, naming)
    named = [k for k in naming.formats if k in kept]
    for key in [*sorted(k for k in kept if k not in naming.formats), *reversed(named)]:
        trial = {k: v for k, v in kept.items() if k != key}
        built = _build(name, row, trial)
        if built is not None and _equal(_result(built, naming), target):
            kept = trial
    return kept


def _differing(name: str, row: Mapping[str, Any], recorded: Mapping[str, Any]
               ) -> dict[str, Any]:
    """Recorded settings (less the row-level ones) that differ from the default attack's."""
    default = _build(name, row, {}) or {}
    return {k: v for k, v in recorded.items()
            if k not in ROW_LEVEL and not (k in default and _same(default[k], v))}


def _ordered(naming: Naming, shown: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Named settings (in the table's order), then the others by name, then EOT and BPDA."""
    named = [k for k in naming.formats if k in shown]
    last = [k for k in SUFFIXES if k in shown and k not in named]
    rest = sorted(k for k in shown if k not in named and k not in last)
    return tuple((k, _frozen(shown[k])) for k in (*named, *rest, *last))


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in sorted(value.items()))
    return value


def _text(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if _is_items(value):
        return "_".join(f"{k}{_text(v)}" for k, v in value)
    if isinstance(value, tuple):
        return "_".join(_text(v) for v in value)
    return str(value)


def _is_items(value: Any) -> bool:
    """A dict setting, frozen as ``((key, value), ...)``."""
    return isinstance(value, tuple) and bool(value) and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value)


def _part(naming: Naming, key: str, value: Any) -> str:
    template = naming.formats.get(key) or SUFFIXES.get(key)
    if template is not None:
        return template.format(_text(value))
    if isinstance(value, bool):
        return f"_{key}" if value else f"_no_{key}"
    if isinstance(value, int | float):
        return f"_{key}{_text(value)}"
    return f"_{key}_{_text(value)}"


def _spec_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "+".join(_spec_value(v) for v in value)
    return _text(value)
