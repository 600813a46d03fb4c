"""Feature upsampling methods behind one interface, built by name.

>>> import torch, anyup.baselines as B
>>> up = B.create("bilinear")
>>> up(torch.zeros(1, 3, 64, 48), torch.randn(1, 8, 4, 3), (64, 48)).shape
torch.Size([1, 8, 64, 48])

Every method is an :class:`~anyup.baselines.base.Upsampler` (an ``nn.Module``) called as
``up(image, features, output_size)`` with ``image`` ``(B, 3, H, W)`` ImageNet-normalised,
``features`` ``(B, C, h, w)`` and ``output_size`` ``(H', W')``; it returns ``(B, C, H', W')`` in
the features' dtype. Each method has a dataclass config; ``create(name, config)`` accepts that
dataclass, a dict of field overrides, or ``None`` for the defaults.

Methods that need something this machine may lack (published weights, ``torch.hub`` code from
GitHub, an encoder's pretrained weights) raise :class:`MethodUnavailable` from :func:`create`
with a one-line reason; :func:`available` returns ``(ok, reason)`` without raising.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anyup._config import build_config
from anyup.baselines.base import MethodUnavailable, OutputSize, Upsampler, check_inputs, parse_output_size

__all__ = [
    "MethodSpec",
    "MethodUnavailable",
    "OutputSize",
    "Upsampler",
    "available",
    "check_inputs",
    "create",
    "get_spec",
    "list_methods",
    "parse_output_size",
    "register",
]


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry."""

    name: str
    description: str  # one line, shown by ``anyup eval`` listings and the README table
    config_cls: type  # dataclass; ``config_cls()`` must give usable defaults
    build: Callable[[Any], Upsampler]  # config instance -> Upsampler
    convex: bool = False  # every output vector is a convex combination of input vectors
    guided: bool = True  # uses the image (False: image only checked for batch size)
    offline: bool = True  # False: needs downloads (weights / hub code) unless files are supplied


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (names are unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    if not dataclasses.is_dataclass(spec.config_cls):
        raise TypeError(f"config_cls of {spec.name!r} must be a dataclass, got {spec.config_cls!r}")
    _REGISTRY[spec.name] = spec
    return spec


def list_methods() -> list[str]:
    """Names accepted by :func:`create`, in registry order (simple -> learned -> peers)."""
    _populate()
    return list(_REGISTRY)


def get_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name`` (ValueError listing valid names if unknown)."""
    _populate()
    if name not in _REGISTRY:
        raise ValueError(f"unknown upsampling method {name!r}; choose one of {list(_REGISTRY)}")
    return _REGISTRY[name]


def make_config(name: str, config: Any = None) -> Any:
    """Turn ``None`` / a dict of overrides / a config instance into ``name``'s config dataclass."""
    return build_config(get_spec(name).config_cls, config, f"method {name!r}")


def create(name: str, config: Any = None) -> Upsampler:
    """Build method ``name`` (see :func:`list_methods`) with ``config`` (dataclass, dict or None).

    Raises ``ValueError`` for an unknown name or config field and :class:`MethodUnavailable`
    (a ``RuntimeError``) with a one-line reason when the method cannot run on this machine.
    """
    spec = get_spec(name)
    up = spec.build(make_config(name, config))
    up.name = name
    return up


def available(name: str, config: Any = None) -> tuple[bool, str]:
    """``(True, "")`` if :func:`create` succeeds for ``name``, else ``(False, one-line reason)``.

    May build the method (cheap for every offline method; peers fail fast without network).
    A config that cannot work (e.g. ``anyup_checkpoint`` without ``checkpoint``, a missing file)
    also gives ``False`` with the error message; an unknown ``name`` raises ``ValueError``.
    """
    get_spec(name)
    try:
        create(name, config)
    except (MethodUnavailable, ValueError, FileNotFoundError) as err:
        return False, str(err)
    return True, ""


_POPULATED = False


def _populate() -> None:
    """Import the modules that register the built-in methods (once)."""
    global _POPULATED
    if _POPULATED:
        return
    _POPULATED = True
    from anyup.baselines import registry  # noqa: F401  (registers on import)
