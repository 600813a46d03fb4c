"""One generic name -> entry registry, used by weights, encoders, baselines and datasets.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Spec:
...     name: str
...     size: int
>>> sizes: Registry[Spec] = Registry("size")
>>> sizes.register(Spec("small", 1)).size
1
>>> sizes.names(), "small" in sizes, sizes.get("small").size
(['small'], True, 1)
>>> sizes.get("smal")
Traceback (most recent call last):
...
anyup._registry.UnknownName: unknown size 'smal'; choose one of ['small']

Entries are keyed by their ``name`` attribute; names are unique. A registry may be populated lazily:
``populate`` (e.g. "import the module holding the registrations") runs once, before the first lookup,
so importing a package stays cheap and a registration module is imported only when needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, Protocol, TypeVar

from anyup._config import build_config

__all__ = ["ConfigRegistry", "Configured", "Named", "Registry", "UnknownName"]


class Named(Protocol):
    """What a registry entry needs: a ``name``."""

    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class UnknownName(ValueError, KeyError):
    """A name that is not registered; the message names it and lists the registered ones.

    Both a ``ValueError`` (what the package raised before) and a ``KeyError`` (what a mapping raises).
    """

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> entry, in registration order.

    Args:
        kind: what the entries are, for messages ("encoder", "dataset", ...).
        populate: called once before the first lookup (lazy registration); ``None``: nothing to do.
        hint: appended to the unknown-name message (e.g. " (or pass a file path)").
        sort: list names sorted (``True``) or in registration order (``False``).
    """

    def __init__(
        self, kind: str, populate: Callable[[], object] | None = None, hint: str = "", sort: bool = False
    ) -> None:
        self.kind = kind
        self.hint = hint
        self.sort = sort
        self._populate = populate
        self._entries: dict[str, T] = {}

    def _ready(self) -> dict[str, T]:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate()
        return self._entries

    def register(self, entry: T, check: Callable[[T], None] | None = None) -> T:
        """Add ``entry`` under ``entry.name`` (ValueError if taken); ``check`` validates it first. Returns it."""
        if entry.name in self._ready():
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        if check is not None:
            check(entry)
        self._entries[entry.name] = entry
        return entry

    def get(self, name: object) -> T:
        """The entry registered as ``name``; :class:`UnknownName` naming it and the registered names otherwise."""
        entries = self._ready()
        if not isinstance(name, str) or name not in entries:
            raise UnknownName(f"unknown {self.kind} {name!r}; choose one of {self.names()}{self.hint}")
        return entries[name]

    def names(self) -> list[str]:
        """Registered names (sorted, or in registration order)."""
        names = list(self._ready())
        return sorted(names) if self.sort else names

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._ready()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._ready())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def unregister(self, name: str) -> T:
        """Remove and return the entry ``name`` (:class:`UnknownName` if it is not registered)."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    @contextmanager
    def temporary(self, *entries: T) -> Iterator[None]:
        """Register ``entries`` for the duration of a ``with`` block (tests, experiments)."""
        for entry in entries:
            self.register(entry)
        try:
            yield
        finally:
            for entry in entries:
                self._entries.pop(entry.name, None)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


class Configured(Named, Protocol):
    """An entry built from a config dataclass (baselines, datasets)."""

    @property
    def config_cls(self) -> type: ...


C = TypeVar("C", bound=Configured)


class ConfigRegistry(Registry[C]):
    """A :class:`Registry` whose entries carry a ``config_cls`` dataclass with usable defaults.

    Args:
        label: how a config error names an entry (``"method 'jbu'"``); default ``kind``.
    """

    def __init__(
        self, kind: str, populate: Callable[[], object] | None = None, hint: str = "", label: str | None = None
    ) -> None:
        super().__init__(kind, populate=populate, hint=hint)
        self.label = label or kind

    def register(self, entry: C, check: Callable[[C], None] | None = None) -> C:
        """Add ``entry`` (its ``config_cls`` must be a dataclass); see :meth:`Registry.register`."""
        if not dataclasses.is_dataclass(entry.config_cls):
            raise TypeError(f"config_cls of {entry.name!r} must be a dataclass, got {entry.config_cls!r}")
        return super().register(entry, check)

    def config(self, name: str, config: Any = None) -> Any:
        """``None`` / a dict of field overrides / a config instance -> ``name``'s config dataclass."""
        return build_config(self.get(name).config_cls, config, f"{self.label} {name!r}")
