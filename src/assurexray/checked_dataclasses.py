"""Frozen dataclasses from plain mappings (params.yaml, checkpoint meta), type-checked.

Every key is checked against the dataclass: an unknown key or a value of the wrong type raises
``ParamsError`` naming the dotted key, so a typo in params.yaml or a foreign checkpoint stops
with one line instead of a default silently taking its place.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal

from assurexray.errors import AssureXRayError


class ParamsError(AssureXRayError, ValueError):
    """params.yaml does not match the schema; the message names the offending key."""


def from_dict(cls, raw, prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, checking every key and value type."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix or 'params'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ParamsError(
                f"unknown key '{prefix}{key}' (allowed here: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            values[f.name] = _coerce(hints[f.name], raw[f.name], f"{prefix}{f.name}")
    return cls(**values)


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:
            try:
                return _coerce(option, value, key)
            except ParamsError as exc:
                errors.append(exc)
        if len(inner) == 1:
            raise errors[0]
        names = " or ".join(getattr(a, "__name__", str(a)) for a in inner)
        raise ParamsError(f"'{key}' must be {names}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"'{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"'{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"'{key}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ParamsError(f"'{key}' must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value
