"""Shared helper for the registries: turn user input into a component's config dataclass."""

from __future__ import annotations

import dataclasses
from typing import Any


def build_config(cls: type, config: Any, what: str) -> Any:
    """``None`` -> defaults, a ``cls`` instance -> itself, a dict -> ``cls(**dict)`` with unknown fields refused.

    ``what`` names the component in errors, e.g. ``"method 'jbu'"``.
    """
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if isinstance(config, dict):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown} for {what}; allowed: {sorted(fields)}")
        return cls(**config)
    name = what.split(" ", 1)[-1]
    raise TypeError(f"config for {name} must be None, a dict or {cls.__name__}, got {type(config).__name__}")
