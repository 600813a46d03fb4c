"""Normalisation layers that keep their statistics in float32 or better.

AnyUp's encoders use ``GroupNorm`` over full-resolution maps and RMSNorm before the attention
projections. In bfloat16/float16 the mean and variance of millions of values lose their digits,
so both compute in float32 (float64 stays float64) and return the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anyup.layers._func import functorch_active


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


def rms_norm_linear(
    x: torch.Tensor, norm_weight: torch.Tensor, eps: float | None, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear(rms_norm(x, norm_weight, eps, dim=-1), weight, bias)``, the norm folded into the GEMM.

    ``x`` (..., D) any float dtype and strides (a channels-first map's transposed view is read as
    it is); returns (..., D_out) in ``x.dtype``. In float32/float64 the norm's per-channel weight
    is folded into the GEMM's weight and each row's ``1/rms`` scales the GEMM's output, so the
    full-size input is read once for its norms and once by the GEMM, instead of three element-wise
    passes writing normalised copies first (the query projection of a 2048-wide band: 88 -> 56 ms).
    Same maths; the rounding differs from the unfolded order by about one ulp of the result. Half
    dtypes keep the unfolded order (normalised in float32, then the GEMM): folding would round the
    weights and the unscaled GEMM to 8 bits first (1.4x the error in bfloat16).
    """
    acc = acc_dtype(x)
    w, b = weight.to(x.dtype), None if bias is None else bias.to(x.dtype)
    if x.dtype != acc:
        return F.linear(rms_norm(x, norm_weight, eps, dim=-1), w, b)
    eps_v = torch.finfo(x.dtype).eps if eps is None else eps
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (..., 1), one pass over x
    inv = torch.rsqrt(norm.square() / x.shape[-1] + eps_v)  # (..., 1) 1/rms
    y = F.linear(x, w * norm_weight.to(acc))  # (..., D_out): the norm's weight on the inputs
    if b is None:
        return y * inv
    if (torch.is_grad_enabled() and (y.requires_grad or b.requires_grad)) or functorch_active():
        return torch.addcmul(b, y, inv)
    return torch.addcmul(b, y, inv, out=y)  # in place: no second full-size tensor
