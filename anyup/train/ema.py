"""An exponential moving average (EMA) of the trained weights, for ``optim.ema_decay > 0``.

After every optimiser step each floating-point tensor of the model's state dict is pulled towards
its new value, ``avg += (1 - d) * (value - avg)``, with the warm-up ``d = min(decay, (1 + n) /
(10 + n))`` after ``n`` earlier updates (so the first steps do not keep the initialisation for
thousands of steps). The averages are float32 copies kept beside the model; the trainer validates
and exports them (``model.safetensors``) and also exports the optimiser's own last weights
(``model_raw.safetensors``). Their state, the update count included, is in every checkpoint, so a
resumed run averages exactly as a straight one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """EMA of ``model.state_dict()``'s floating-point tensors (others are copied as they are).

    Args:
        model: the module whose weights are averaged; its current weights start the average.
        decay: the EMA decay in ``[0, 1)``; 0 keeps the last weights (no averaging).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.tensors: dict[str, torch.Tensor] = {
            k: v.detach().float().clone() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()
        }

    def decay_at(self, updates: int) -> float:
        """The decay of the update that follows ``updates`` earlier ones (with the warm-up)."""
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Pull the averages towards ``model``'s current weights (call after each optimiser step)."""
        d = self.decay_at(self.updates)
        for k, v in model.state_dict().items():
            avg = self.tensors[k]
            if v.is_floating_point():
                avg.lerp_(v.detach().float(), 1.0 - d)
            else:
                avg.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors (``weights_only``-loadable)."""
        return {"decay": self.decay, "updates": self.updates, "tensors": dict(self.tensors)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the tensor names must be the model's."""
        tensors = state.get("tensors")
        if not isinstance(tensors, dict) or set(tensors) != set(self.tensors):
            have = sorted(tensors) if isinstance(tensors, dict) else type(tensors).__name__
            raise ValueError(f"EMA state does not match the model: tensors {have} vs {sorted(self.tensors)}")
        for k, v in tensors.items():
            if v.shape != self.tensors[k].shape:
                raise ValueError(
                    f"EMA tensor {k!r} has shape {tuple(v.shape)}, the model's is {tuple(self.tensors[k].shape)}"
                )
            self.tensors[k].copy_(v)
        self.updates = int(state["updates"])

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``model`` holds the averaged weights; its own come back after it."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(self.tensors[k])
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(saved[k])
