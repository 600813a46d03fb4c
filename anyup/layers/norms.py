"""Normalisation helpers that stay exact in half precision and can be streamed.

AnyUp's encoders use ``GroupNorm`` over *full-resolution* maps. GroupNorm statistics span all
pixels, so producing a full-resolution map tile by tile needs the statistics first. The model
does this with :class:`StreamedGroupNorm`, a two-phase normaliser: it first accumulates per-group
sums over tiles (``collect``), then applies the frozen statistics to any tile (``apply``).
:func:`group_norm` is the one-shot version; both compute statistics in float32 or better, so
bfloat16/float16 inputs do not lose the mean/variance.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# A norm provider maps (GroupNorm module, input (B, C, ...)) -> normalised input.
NormFn = Callable[[nn.GroupNorm, torch.Tensor], torch.Tensor]


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype for norms and softmax: float64 stays float64, everything else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _affine(gn: nn.GroupNorm, x_hat: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x_hat.ndim - 2)
    if gn.affine:
        x_hat = x_hat * gn.weight.to(x_hat.dtype).view(shape) + gn.bias.to(x_hat.dtype).view(shape)
    return x_hat


def group_norm(gn: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``gn(x)`` with statistics computed in float32; returns ``x.dtype``. x: (B, C, ...)."""
    if x.dtype in (torch.float32, torch.float64):
        return F.group_norm(x, gn.num_groups, gn.weight.to(x.dtype), gn.bias.to(x.dtype), gn.eps)
    out = F.group_norm(x.float(), gn.num_groups, gn.weight.float(), gn.bias.float(), gn.eps)
    return out.to(x.dtype)


class _StopPass(Exception):
    """Raised by :class:`StreamedGroupNorm` once the statistics it is collecting have been fed."""


class StreamedGroupNorm:
    """GroupNorm statistics accumulated over tiles of one large map, then applied tile-wise.

    Usage: run the per-pixel pipeline over all tiles with this object as the norm provider. The
    first GroupNorm of a branch whose statistics are unknown accumulates the tile's sums and stops
    that branch (``_StopPass``); several branches may collect in the same pass. After the pass
    :meth:`finish_pass` freezes the sums. Repeat until nothing is collected. Every later call
    applies the frozen statistics, so tiles of any size give the one-shot GroupNorm's result (up to
    float rounding; sums are accumulated in float64).
    """

    def __init__(self) -> None:
        self._stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # id(gn) -> [gn, sum (B, G), sum of squares (B, G), count]
        self._pending: dict[int, list] = {}

    @property
    def collecting(self) -> bool:
        return bool(self._pending)

    @property
    def num_known(self) -> int:
        """How many GroupNorms have frozen statistics."""
        return len(self._stats)

    def __call__(self, gn: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        key = id(gn)
        if key in self._stats:
            mean, rstd = self._stats[key]  # (B, G) each, float64
            b, c = x.shape[:2]
            g = gn.num_groups
            xg = x.to(acc_dtype(x)).reshape(b, g, c // g, -1)  # (B, G, C/G, N)
            x_hat = (xg - mean.to(xg.dtype).view(b, g, 1, 1)) * rstd.to(xg.dtype).view(b, g, 1, 1)
            return _affine(gn, x_hat.reshape(x.shape)).to(x.dtype)
        b = x.shape[0]
        xg = x.double().reshape(b, gn.num_groups, -1)  # (B, G, C/G * N)
        entry = self._pending.setdefault(key, [gn, 0.0, 0.0, 0])
        entry[1] = entry[1] + xg.sum(-1)
        entry[2] = entry[2] + (xg * xg).sum(-1)
        entry[3] += xg.shape[-1]
        raise _StopPass

    def finish_pass(self) -> None:
        """Freeze the statistics collected in the pass that just ended."""
        for key, (gn, s, sq, count) in self._pending.items():
            mean = s / count
            var = (sq / count - mean * mean).clamp_min(0.0)
            self._stats[key] = (mean, torch.rsqrt(var + gn.eps))
        self._pending.clear()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float | None, dim: int = 1) -> torch.Tensor:
    """RMSNorm over ``dim`` computed in float32; returns ``x.dtype``."""
    xf = x.to(acc_dtype(x))
    eps_v = torch.finfo(x.dtype).eps if eps is None else eps
    shape = [1] * x.ndim
    shape[dim] = -1
    out = xf * torch.rsqrt(xf.pow(2).mean(dim=dim, keepdim=True) + eps_v) * weight.to(xf.dtype).view(shape)
    return out.to(x.dtype)
