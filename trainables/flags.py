"""Command-line flags from typed configs: the one mechanism behind every command line.

A dataclass is its own command line: each field is a flag named after it (``n_examples`` →
``--n-examples``), typed by its annotation, defaulting to its default, and documented by the
comment or docstring beside it. ``parse`` turns flags into a config (tyro does the parsing,
``--help`` included), ``to_argv`` turns a config back into the flags that rebuild it, so a field
added to TrialConfig, SweepSpec or PoolConfig is a flag at once, in both directions.

Conventions every command line shares: booleans are ``--name`` / ``--no-name``; sequences take
several values (``--attacks aa-standard pgd-100-ce``); optional values take ``None``; dict fields
take JSON (``--model-params '{"hidden": 64}'``); a nested dataclass marked
``tyro.conf.OmitArgPrefixes`` contributes its fields without a prefix.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _json_dicts():
    """tyro's registry with one extra rule: ``dict[...]`` fields read and write JSON."""
    from tyro.constructors import (
        ConstructorRegistry,
        PrimitiveConstructorSpec,
        PrimitiveTypeInfo,
    )

    registry = ConstructorRegistry()

    def read(args: list[str]) -> dict:
        value = json.loads(args[0])
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {args[0]}")
        return value

    @registry.primitive_rule
    def _dict_as_json(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
        if info.type_origin is not dict:
            return None
        return PrimitiveConstructorSpec(
            nargs=1, metavar="JSON", instance_from_str=read,
            is_instance=lambda value: isinstance(value, dict),
            str_from_instance=lambda value: [json.dumps(value)])

    return registry


def parse(cls: type[T], argv: Sequence[str] | None = None, *, default: T | None = None,
          prog: str | None = None, description: str | None = None) -> T:
    """``cls`` built from ``argv``'s flags over ``default`` (else the fields' defaults); bad
    flags print the usage and exit with status 2, ``--help`` prints the flags and exits 0."""
    import tyro

    with _json_dicts():
        return tyro.cli(cls, args=list(argv or []), default=default, prog=prog,
                        description=description)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _words(value: Any) -> list[str]:
    if value is None:
        return ["None"]
    if isinstance(value, dict):
        return [json.dumps(value)]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if isinstance(value, Path):
        return [str(value)]
    return [repr(value) if isinstance(value, float) else str(value)]


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def to_argv(config: Any, *, against: Any = None) -> list[str]:
    """The flags that rebuild ``config`` with :func:`parse`: one per field that differs from
    ``against`` (another instance; default: the fields' defaults). Nested dataclasses
    contribute their own fields' flags."""
    argv: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        reference = (getattr(against, f.name) if against is not None else _field_default(f))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            argv += to_argv(value, against=reference if dataclasses.is_dataclass(reference)
                            else None)
            continue
        if value == reference:
            continue
        if isinstance(value, bool):
            argv.append(flag(f.name) if value else flag("no_" + f.name))
        else:
            argv += [flag(f.name), *_words(value)]
    return argv
