"""Feature upsampling methods behind one interface, built by name.

>>> import torch, anyup.baselines as B
>>> up = B.create("bilinear")
>>> up(torch.zeros(1, 3, 64, 48), torch.randn(1, 8, 4, 3), (64, 48)).shape
torch.Size([1, 8, 64, 48])

Every method is a :class:`~anyup.baselines.base.BaselineUpsampler` (an ``nn.Module``) called as
``up(image, features, output_size)`` with ``image`` ``(B, 3, H, W)`` ImageNet-normalised,
``features`` ``(B, C, h, w)`` and ``output_size`` ``(H', W')``; it returns ``(B, C, H', W')`` in
the features' dtype. Each method has a dataclass config; ``create(name, config)`` accepts that
dataclass, a dict of field overrides, or ``None`` for the defaults.

Methods that need something this machine may lack (published weights, ``torch.hub`` code from
GitHub, an encoder's pretrained weights) raise :class:`MethodUnavailable` from :func:`create`
with a one-line reason; :func:`available` returns ``(ok, reason)`` without raising.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anyup._deprecation import deprecated_aliases
from anyup._registry import ConfigRegistry
from anyup.baselines.base import BaselineUpsampler, MethodUnavailable, OutputSize, check_inputs, parse_output_size

__all__ = [
    "METHODS",
    "BaselineUpsampler",
    "MethodSpec",
    "MethodUnavailable",
    "OutputSize",
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
    build: Callable[[Any], BaselineUpsampler]  # config instance -> BaselineUpsampler
    convex: bool = False  # every output vector is a convex combination of input vectors
    guided: bool = True  # uses the image (False: image only checked for batch size)
    offline: bool = True  # False: needs downloads (weights / hub code) unless files are supplied


def _populate() -> None:
    from anyup.baselines import registrations  # noqa: F401  (registers the built-in methods on import)


# name -> MethodSpec, in registration order (simple -> learned -> peers); filled on first use
METHODS: ConfigRegistry[MethodSpec] = ConfigRegistry("upsampling method", populate=_populate, label="method")
register = METHODS.register  # add a MethodSpec (names are unique; config_cls must be a dataclass)
list_methods = METHODS.names  # names accepted by create()
get_spec = METHODS.get  # the MethodSpec of a name (ValueError listing the valid names if unknown)
make_config = METHODS.config  # None / dict of overrides / config instance -> the method's config dataclass


def create(name: str, config: Any = None) -> BaselineUpsampler:
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


# Renamed in 0.2.0 (it clashed with anyup.Upsampler); the old name warns for one release.
__getattr__ = deprecated_aliases(__name__, {"Upsampler": ("BaselineUpsampler", BaselineUpsampler)})
