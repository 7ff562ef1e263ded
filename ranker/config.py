"""Strict construction of the config dataclasses from plain dicts (YAML, checkpoints)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def strict_from_dict(cls: type[T], d: dict[str, Any], section: str) -> T:
    """`cls(**d)`, refusing unknown keys with the list of valid ones.

    Raises:
        ValueError: `d` has a key that is not a field of `cls`.
    """
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {section} config key(s) {unknown}; valid keys: {sorted(names)}")
    return cls(**d)
