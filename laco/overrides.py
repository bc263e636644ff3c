"""``--set key.path=value``: one override applied to a run config's plain data, before its types are checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml


def apply_override(data: dict[str, Any], override: str, default_stages: Callable[[], list[Any]]) -> None:
    """``model.compression.layers=1/2`` or ``stages.0.max_steps=10``: values are parsed as YAML scalars.

    Types are checked afterwards, against the dataclass fields (:func:`from_dict`).
    """
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like key.path=value, e.g. stages.0.max_steps=10.")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as error:
        raise ValueError(f"override {override!r}: cannot read the value {raw!r} ({error}).") from None
    parts = key.strip().split(".")
    node: Any = data
    try:
        for index, part in enumerate(parts[:-1]):
            following_is_index = parts[index + 1].isdigit()
            if isinstance(node, list):
                node = node[_list_index(node, part)]
                continue
            if not isinstance(node, dict):
                raise ValueError(f"{'.'.join(parts[:index])} is a value, not a section")
            if part not in node:
                if part == "stages":
                    node[part] = default_stages()
                else:
                    node[part] = [] if following_is_index else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ValueError(f"{'.'.join(parts[:-1])} is a value, not a section")
    except ValueError as error:
        raise ValueError(f"override {override!r}: {error}.") from None


def _list_index(items: list[Any], part: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ValueError(f"{part!r} is not an index of a list of {len(items)} (0..{len(items) - 1})")
    return int(part)
