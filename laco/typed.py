"""Typed reading of plain YAML data into config dataclasses, and back: unknown keys refused with the accepted ones,
values converted to each field's annotated type with the key named in every error, placements through their own
``to_dict``/``from_dict``. Shared by run configs (:mod:`laco.config`), the study's grid and the resume check."""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from .placement import Placement

T = TypeVar("T")


def from_dict(
    cls: type[T], data: dict[str, Any] | None, where: str = "", renamed: Mapping[str, str] | None = None
) -> T:
    """Build dataclass ``cls`` from a plain dict, recursively, rejecting unknown keys; ``renamed`` maps keys that
    older configs used to what replaced them, for the message."""
    renamed = renamed or {}
    data = dict(data or {})
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    replaced = [f"{key} is now {renamed[key]}" for key in unknown if key in renamed]
    if unknown:
        hint = f" ({'; '.join(replaced)})" if replaced else ""
        raise ValueError(f"unknown key(s) {unknown} in {where or cls.__name__}{hint}; accepted: {sorted(names)}.")
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, f"{where}.{name}" if where else name, renamed)
    return cls(**values)


def to_plain(value: Any) -> Any:
    """A config dataclass as plain YAML data (placements through their own ``to_dict``)."""
    if isinstance(value, Placement):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    return value


def _convert(hint: Any, value: Any, where: str, renamed: Mapping[str, str]) -> Any:
    if hint is Placement:
        if isinstance(value, Placement):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping of placement fields (layers, method, ...), got {value!r}.")
        try:
            return Placement.from_dict(value)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where, renamed)
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [option for option in get_args(hint) if option is not type(None)]
        if value is None:
            return None
        if len(options) == 1:
            return _convert(options[0], value, where, renamed)
        return value
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r}.")
        return [_convert(item, v, f"{where}.{i}", renamed) for i, v in enumerate(value)]
    if origin is dict:
        _, item = get_args(hint)
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}.")
        return {str(key): _convert(item, v, f"{where}.{key}", renamed) for key, v in value.items()}
    if hint in _SCALARS:
        return _SCALARS[hint](value, where)
    return value


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{where} must be true or false, got {value!r}.")


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{where} must be a whole number, got {value!r}.")


def _to_float(value: Any, where: str) -> float:
    # YAML 1.1 (what PyYAML reads) takes 1e-3 without a decimal point for a string: accept any number spelled out.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{where} must be a number such as 2e-4, got {value!r}.") from None
    else:
        raise ValueError(f"{where} must be a number such as 2e-4, got {value!r}.")
    if not math.isfinite(number):
        raise ValueError(f"{where} must be a finite number, got {value!r}.")
    return number


def _to_str(value: Any, where: str) -> str:
    # YAML reads a bare 2024 as a number; as a name or a path it means the text.
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where} must be text, got {value!r}.")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


__all__ = ["from_dict", "to_plain"]
