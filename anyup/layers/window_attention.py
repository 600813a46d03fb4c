"""Cross-attention from high-resolution queries to low-resolution keys, as in the reference.

The attention weights (softmax over the keys allowed by the window, averaged over heads) mix
the *raw* values, so every output is a convex combination of input vectors. Which keys a query may
see (the window) and how the work is tiled is decided by :mod:`anyup.engine`; these modules only
hold the parameters and the per-tensor maths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anyup.layers.norms import RMSNorm, acc_dtype, rms_norm_linear


def apply_window(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Restrict ``logits`` (..., Nq, Nk) to the window, in place, and return them.

    ``mask`` (Nq, Nk) is bool (True = may attend; others get ``-inf``) or a float additive bias
    (the soft window edge: ``log(coverage)``, ``-inf`` outside).
    """
    if mask.dtype == torch.bool:
        return logits.masked_fill_(~mask, float("-inf"))
    return logits.add_(mask.to(logits.dtype))


class WindowCrossAttention(nn.Module):
    """RMS-normalised multi-head attention whose weights (heads averaged) mix raw values.

    Parameter layout matches the reference: ``norm_q.weight``, ``norm_k.weight`` (RMSNorm over
    channels) and ``attention.in_proj_weight/bias`` (query, key, value projections stacked;
    the value and output projections are kept for key compatibility but never used).
    """

    def __init__(self, dim: int = 128, num_heads: int = 4) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}), num_heads >= 1")
        self.dim, self.num_heads = dim, num_heads
        self.norm_q = RMSNorm(dim)
        self.norm_k = RMSNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def _project(self, x: torch.Tensor, which: int, norm: nn.RMSNorm) -> torch.Tensor:
        """(B, D, ...) -> (B, heads, N, D/heads), RMS-normalised then projected."""
        b, d = x.shape[:2]
        w = self.attention.in_proj_weight[which * d : (which + 1) * d]
        bias = self.attention.in_proj_bias[which * d : (which + 1) * d]
        y = rms_norm_linear(x.reshape(b, d, -1).transpose(1, 2), norm.weight, norm.eps, w, bias)  # (B, N, D)
        return y.view(b, -1, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, nh, N, hd)

    def project_queries(self, q: torch.Tensor) -> torch.Tensor:
        """(B, D, ...) queries -> (B, nh, N, hd)."""
        return self._project(q, 0, self.norm_q)

    def project_keys(self, k: torch.Tensor) -> torch.Tensor:
        """(B, D, ...) keys -> (B, nh, N, hd)."""
        return self._project(k, 1, self.norm_k)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Heads-averaged masked softmax attention on raw values (the reference's maths).

        queries (B, D, Nq...), keys (B, D, Nk...), values (B, Nk, C), mask (Nq, Nk) bool
        (True = may attend) or float bias (see :func:`apply_window`). Returns (B, Nq, C). Logits and
        softmax are float32 (float64 stays).
        """
        qh, kh = self.project_queries(queries), self.project_keys(keys)
        logits = torch.matmul(qh, kh.transpose(-1, -2)).to(acc_dtype(qh)) / math.sqrt(qh.shape[-1])  # (B, nh, Nq, Nk)
        weights = apply_window(logits, mask).softmax(dim=-1).mean(dim=1)  # (B, Nq, Nk)
        return torch.matmul(weights.to(values.dtype), values)  # (B, Nq, C)


class CrossDecode(nn.Module):
    """``conv2d`` (3x3, zero padding, bias-free) on the queries, then windowed cross-attention."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.cross_attn = WindowCrossAttention(dim, num_heads)

    def decode_queries(self, q: torch.Tensor, pad_top: bool = True, pad_bottom: bool = True) -> torch.Tensor:
        """The 3x3 conv on a band of query rows (B, D, n, W') -> (B, D, n - 2 + pads, W').

        A band cut from a larger map carries one halo row on each side that is not an image border;
        ``pad_top`` / ``pad_bottom`` say which sides are borders (zero padded, as the reference).
        """
        weight = self.conv2d.weight.to(q.dtype)
        if pad_top == pad_bottom:  # the conv pads itself (no padded copy of the band; same bits)
            return F.conv2d(q, weight, padding=(int(pad_top), 1))
        return F.conv2d(F.pad(q, (0, 0, int(pad_top), int(pad_bottom))), weight, padding=(0, 1))

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """queries (B, D, H', W'), keys (B, D, h, w), values (B, C, h, w), mask (H'*W', h*w) -> (B, C, H', W')."""
        b, c = values.shape[:2]
        hq, wq = queries.shape[-2:]
        out = self.cross_attn(self.decode_queries(queries), keys, values.flatten(2).transpose(1, 2), mask)
        return out.transpose(1, 2).reshape(b, c, hq, wq)
