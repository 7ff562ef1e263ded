"""Strict construction of config dataclasses from plain dicts (YAML, checkpoints, trial configs).

Every field is checked against its annotated type (resolved with `typing.get_type_hints`, so a
field of any type is checked, not only the ones a string comparison happens to know): unknown
keys are refused with the list of valid ones, and every problem is collected before one error
is raised. The dataclasses' own `__post_init__` checks values (ranges, choices) after that.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config dict with problems; `errors` lists every one of them."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:
        return (type(self), (self.errors,))


def _type_name(tp: Any) -> str:
    """A type as a YAML user reads it: `int`, `float | null`, `tuple[str, ...]`."""
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str, errors: list[str]) -> tuple[bool, Any]:
    """Whether `value` has type `tp` (and the value to keep); nested problems go to `errors`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            sub: list[str] = []
            ok, v = _coerce(arm, value, where, sub)
            if ok and not sub:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads `1e-3` without a dot as a string; take it as the number
            # the user wrote rather than refusing it.
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            return False, value
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item is None:
            return False, value
        out = []
        for i, v in enumerate(value):
            ok, c = _coerce(item, v, f"{where}[{i}]", errors)
            if not ok:
                errors.append(f"{where}[{i}]={v!r}: expected {_type_name(item)}")
                return True, tuple(out)
            out.append(c)
        return True, tuple(out)
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, Mapping):
            return False, value
        out_d = {}
        for k, v in value.items():
            ok_k, ck = _coerce(kt, k, where, errors)
            ok_v, cv = _coerce(vt, v, f"{where}.{k}", errors)
            if not ok_k:
                errors.append(f"{where}: key {k!r} is not a {_type_name(kt)}")
            elif not ok_v:
                errors.append(f"{where}.{k}={v!r}: expected {_type_name(vt)}")
            else:
                out_d[ck] = cv
        return True, out_d
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return True, value
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            return False, value
        built = build(tp, value, where, errors)
        return True, built
    if isinstance(tp, type):
        return isinstance(value, tp), value
    raise TypeError(f"{where}: no check for the field type {tp!r}")


def check_fields(
    cls: type, raw: Mapping[str, Any], section: str
) -> tuple[dict[str, Any], list[str]]:
    """The known keys of `raw` whose values have their field's type, and every problem.

    Args:
        cls: a dataclass.
        raw: its fields as plain values (ints are accepted for float fields).
        section: the dotted name used in messages, e.g. "train".

    Returns:
        (kept, errors): the values to construct `cls` with, and one message per problem.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kept: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        if key not in names:
            errors.append(f"{section}.{key}: unknown key; valid keys: {sorted(names)}")
            continue
        ok, v = _coerce(hints[key], value, f"{section}.{key}", errors)
        if not ok:
            errors.append(f"{section}.{key}={value!r}: expected {_type_name(hints[key])}")
            continue
        kept[key] = v
    return kept, errors


def build(cls: type[T], raw: Mapping[str, Any], section: str, errors: list[str]) -> T:
    """`cls` from `raw`, appending every problem (types, then the values' own checks) to
    `errors`; the default `cls()` stands in when the values are refused."""
    kept, errs = check_fields(cls, raw, section)
    errors.extend(errs)
    try:
        return cls(**kept)
    except (ValueError, TypeError) as e:
        errors.extend(e.errors if isinstance(e, ConfigError) else [f"{section}: {e}"])
        return cls()


def strict_from_dict(cls: type[T], d: Mapping[str, Any], section: str) -> T:
    """`cls(**d)` with every key and type checked.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or a value the dataclass refuses.
    """
    errors: list[str] = []
    out = build(cls, d, section, errors)
    if errors:
        raise ConfigError(errors)
    return out


def int_fields(cls: type) -> list[str]:
    """The names of the fields annotated `int`."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if hints[f.name] is int]
