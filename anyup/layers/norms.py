"""Normalisation layers that keep their statistics in float32 or better.

AnyUp's encoders use ``GroupNorm`` over full-resolution maps and RMSNorm before the attention
projections. In bfloat16/float16 the mean and variance of millions of values lose their digits,
so both compute in float32 (float64 stays float64) and return the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype for norms and softmax: float64 stays float64, everything else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class GroupNorm32(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and keys) whose statistics are float32 for half inputs.

    Input (B, C, ...) any float dtype; output in the input dtype.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = acc_dtype(x)
        w = self.weight.to(acc) if self.weight is not None else None
        b = self.bias.to(acc) if self.bias is not None else None
        return F.group_norm(x.to(acc), self.num_groups, w, b, self.eps).to(x.dtype)


class _RMSNorm(nn.Module):
    """``nn.RMSNorm``'s parameters (``weight``, ``eps``) and maths over the last dim, for torch < 2.4."""

    def __init__(self, normalized_shape: int, eps: float | None = None) -> None:
        super().__init__()
        self.normalized_shape, self.eps = (normalized_shape,), eps
        self.weight = nn.Parameter(torch.ones(normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, dim=-1)


# nn.RMSNorm since torch 2.4; the fallback has its state-dict keys and attributes (typed as nn.RMSNorm)
RMSNorm: type[nn.RMSNorm] = getattr(nn, "RMSNorm", None) or _RMSNorm  # type: ignore[assignment]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float | None, dim: int = 1) -> torch.Tensor:
    """RMSNorm over ``dim`` computed in float32 (float64 stays); returns ``x.dtype``."""
    xf = x.to(acc_dtype(x))
    eps_v = torch.finfo(x.dtype).eps if eps is None else eps
    shape = [1] * x.ndim
    shape[dim] = -1
    out = xf * torch.rsqrt(xf.pow(2).mean(dim=dim, keepdim=True) + eps_v) * weight.to(xf.dtype).view(shape)
    return out.to(x.dtype)
