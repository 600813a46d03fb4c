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
