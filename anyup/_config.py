"""Config dataclasses from user input: the registries' :func:`build_config`, and the one override parser
(:func:`parse_value` + :func:`coerce`) behind every ``--set KEY=VALUE`` of the package."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
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


# ------------------------------------------------------------------------------------------------
# The one override parser: ``KEY=VALUE`` text -> a value of the field's annotated type.
# Used by ``anyup train --set`` (train/config.py), protocol overrides (eval/protocols.py) and
# ``anyup eval --method-set`` (eval/cli.py).

_NONE_WORDS = ("none", "null", "~")


def parse_value(raw: str) -> Any:
    """Text of a command-line value -> Python: YAML flow syntax when PyYAML is installed
    (``1e-4``, ``[a, b]``, ``{name: x}``, ``true``, ``null``), else bool/None/int/float/str."""
    text = raw.strip()
    if not text:
        return None
    try:
        import yaml
    except ImportError:  # pragma: no cover - the train and eval extras install PyYAML
        yaml = None
    if yaml is not None:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
    else:
        low = text.lower()
        value = True if low == "true" else False if low == "false" else None if low in _NONE_WORDS else text
    if isinstance(value, str):
        for cast in (int, float):  # YAML 1.1 reads "1e-4" as a string
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def split_assignment(text: str, example: str = "KEY=VALUE") -> tuple[str, str]:
    """``"a.b=1"`` -> ``("a.b", "1")``; a clear error when there is no ``=`` or no key."""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"override must look like {example}, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ValueError(f"override {text!r} has an empty key (expected {example})")
    return key.strip(), raw


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), optional  # noqa: UP007 (built at runtime)
    return tp, False


def coerce(value: Any, tp: Any, where: str, from_str: dict[type, Callable[[str], Any]] | None = None) -> Any:
    """Convert a parsed value to the annotated type ``tp``; ``ValueError`` naming ``where`` otherwise.

    Nested dataclasses come from mappings (``from_str`` maps a dataclass to a builder from a plain
    string, e.g. an encoder name); lists and tuples from sequences or comma-separated text; a single
    item where a list is expected becomes a one-item list; ``none``/``null`` is ``None`` for optional
    fields; an int is accepted where a float is expected; 0/1 where a bool is.
    """
    tp, optional = _strip_optional(tp)
    if isinstance(value, str) and value.strip().lower() in _NONE_WORDS and optional:
        value = None
    if value is None:
        if optional or tp is Any:
            return None
        raise ValueError(f"{where} must not be null")
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, str) and from_str and tp in from_str:
            value = from_str[tp](value)
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where, from_str)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise ValueError(f"{where} must be one of {list(typing.get_args(tp))}, got {value!r}")
    if origin in (list, tuple) and isinstance(value, str) and "," in value:
        value = [parse_value(v) for v in value.split(",") if v.strip()]
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, dict)) or not isinstance(value, Sequence):
            value = [value]  # a single item where a list is expected
        return [coerce(v, item_tp, f"{where}[{i}]", from_str) for i, v in enumerate(value)]
    if origin is tuple:
        item_tps = typing.get_args(tp)
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and len(item_tps) == 2
            and item_tps[1] is Ellipsis
        ):
            value = [value]
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ValueError(f"{where} must be a list of values, got {value!r}")
        if len(item_tps) == 2 and item_tps[1] is Ellipsis:
            item_tps = (item_tps[0],) * len(value)
        if len(value) != len(item_tps):
            raise ValueError(f"{where} must be a list of {len(item_tps)} values, got {value!r}")
        return tuple(coerce(v, t, f"{where}[{i}]", from_str) for i, (v, t) in enumerate(zip(value, item_tps)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Union:  # e.g. int | str
        for t in typing.get_args(tp):
            if isinstance(value, t) and not (t is int and isinstance(value, bool)):
                return value
        raise ValueError(f"{where} must be one of {typing.get_args(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where} must be a number, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{where} must be a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError(f"{where}: cannot read {value!r} as {getattr(tp, '__name__', tp)}")


def from_dict(
    cls: type, data: dict[str, Any], where: str = "", from_str: dict[type, Callable[[str], Any]] | None = None
) -> Any:
    """``cls(**data)`` with every value coerced to its field's type; unknown keys refused."""
    return cls(**typed_fields(cls, data, where, from_str))


def typed_fields(
    cls: type, data: dict[str, Any], where: str = "", from_str: dict[type, Callable[[str], Any]] | None = None
) -> dict[str, Any]:
    """``data`` with every value coerced to the type of ``cls``'s field of that name; unknown keys refused."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; allowed: {names}")
    return {k: coerce(v, hints[k], f"{where}.{k}" if where else k, from_str) for k, v in data.items()}
