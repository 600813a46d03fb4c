"""Whether a :mod:`torch.func` transform is tracing the current call."""

from __future__ import annotations

import torch


def functorch_active() -> bool:
    """True inside a :mod:`torch.func` transform (``grad``, ``vmap``, ``jacrev``, ...).

    Such transforms do not support writes of their tensors into tensors created outside them,
    ``out=`` arguments under ``vmap``, or checkpointing; code that uses those for memory takes the
    plain form instead.
    """
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active is not None and active())


def vmap_active() -> bool:
    """True inside a :func:`torch.func.vmap` (at any depth): there a tensor's values cannot decide
    Python control flow, so value checks (NaN, range) cannot run. Other transforms allow them."""
    if not functorch_active():
        return False
    try:
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    except ImportError:  # a PyTorch without them: assume the worst
        return True
    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())
