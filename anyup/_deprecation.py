"""Renamed public names: the old spelling works for one release, with a ``DeprecationWarning``.

A module lists its renames and gets a module-level ``__getattr__`` (PEP 562), so the old name is not
in ``__all__``, not in ``dir()`` completions, and warns only when it is used::

    __getattr__ = deprecated_aliases(__name__, {"Upsampler": ("BaselineUpsampler", BaselineUpsampler)})
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["deprecated_aliases", "warn_renamed"]


def warn_renamed(old: str, new: str, stacklevel: int = 3, log: logging.Logger | None = None) -> None:
    """Warn (``DeprecationWarning`` + a line logged to ``log``, default ``anyup``) that ``old`` is now ``new``."""
    msg = f"{old} is deprecated and will be removed in the next release; use {new}"
    warnings.warn(msg, DeprecationWarning, stacklevel=stacklevel)
    (log or logging.getLogger("anyup")).warning(msg)


def deprecated_aliases(module: str, renames: dict[str, tuple[str, Any]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving each old name in ``renames`` (``old -> (new name, object)``)."""

    def __getattr__(name: str) -> Any:
        if name in renames:
            new, obj = renames[name]
            warn_renamed(f"{module}.{name}", f"{module}.{new}" if "." not in new else new)
            return obj
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
