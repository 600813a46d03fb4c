"""Windowed cross-attention from high-resolution queries to low-resolution keys.

Each output pixel attends only to the low-resolution cells inside a window around it (the
"locality rule" of AnyUp). The reference builds a dense ``(H'*W', h*w)`` mask and attention
matrix; :class:`WindowCrossAttention` produces the *same* result tile by tile, each query tile
against only the rectangle of keys its windows can reach, so memory is bounded by the tile size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anyup.layers.norms import acc_dtype, rms_norm


def window_bounds(out_len: int, low_len: int, ratio: float, device: torch.device | str | None = None):
    """Window of every output index along one axis, as in the reference (float32 arithmetic).

    Output index ``i`` of ``out_len`` has centre ``p = (i + 0.5) / out_len``; its window spans
    low-res indices ``[floor(clamp(p - r, 0, 1) * low_len), ceil(clamp(p + r, 0, 1) * low_len))``.
    Returns ``(start, stop)``, two int64 tensors of shape ``(out_len,)``, both non-decreasing.
    """
    pos = (torch.arange(out_len, dtype=torch.float32, device=device) + 0.5) / out_len
    lo = (pos - ratio).clamp(0.0, 1.0)
    hi = (pos + ratio).clamp(0.0, 1.0)
    return (lo * low_len).floor().long(), (hi * low_len).ceil().long()


def dense_window_mask(out_hw: tuple[int, int], low_hw: tuple[int, int], ratio: float, device=None) -> torch.Tensor:
    """The reference's dense boolean mask ``(H'*W', h*w)``, True where a query may attend.

    Only for tests and the benchmark's dense baseline: its size is what runs out of memory.
    """
    r0, r1 = window_bounds(out_hw[0], low_hw[0], ratio, device)
    c0, c1 = window_bounds(out_hw[1], low_hw[1], ratio, device)
    rows = torch.arange(low_hw[0], device=device)
    cols = torch.arange(low_hw[1], device=device)
    row_ok = (rows >= r0[:, None]) & (rows < r1[:, None])  # (H', h)
    col_ok = (cols >= c0[:, None]) & (cols < c1[:, None])  # (W', w)
    return (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(out_hw[0] * out_hw[1], -1)


class WindowCrossAttention(nn.Module):
    """RMS-normalised multi-head attention whose weights (heads averaged) mix raw values.

    Parameter layout matches the reference: ``norm_q.weight``, ``norm_k.weight`` (RMSNorm over
    channels) and ``attention.in_proj_weight/bias`` (query, key, value projections stacked;
    the value and output projections are kept for key compatibility but never used).
    """

    def __init__(self, dim: int = 128, num_heads: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads = dim, num_heads
        self.norm_q = nn.RMSNorm(dim)
        self.norm_k = nn.RMSNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def _project(self, x: torch.Tensor, which: int, norm: nn.RMSNorm) -> torch.Tensor:
        """(B, D, ...) -> (B, heads, N, D/heads), RMS-normalised then projected."""
        b, d = x.shape[:2]
        x = rms_norm(x.reshape(b, d, -1).transpose(1, 2), norm.weight, norm.eps, dim=-1)  # (B, N, D)
        w = self.attention.in_proj_weight[which * d : (which + 1) * d].to(x.dtype)
        bias = self.attention.in_proj_bias[which * d : (which + 1) * d].to(x.dtype)
        y = F.linear(x, w, bias)  # (B, N, D)
        return y.view(b, -1, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, nh, N, hd)

    def project_queries(self, q: torch.Tensor) -> torch.Tensor:
        return self._project(q, 0, self.norm_q)

    def project_keys(self, k: torch.Tensor) -> torch.Tensor:
        return self._project(k, 1, self.norm_k)

    @staticmethod
    def attend(
        qh: torch.Tensor, kh: torch.Tensor, mask: torch.Tensor | None, values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Heads-averaged softmax attention.

        qh (B, nh, Nq, hd), kh (B, nh, Nk, hd), mask (Nq, Nk) bool (True = may attend) or None,
        values (B, Nk, C). Returns (B, Nq, C), or the weights (B, Nq, Nk) when ``values`` is None.
        Logits and softmax are float32.
        """
        scale = 1.0 / math.sqrt(qh.shape[-1])
        logits = torch.matmul(qh, kh.transpose(-1, -2)).to(acc_dtype(qh)) * scale  # (B, nh, Nq, Nk)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        weights = logits.softmax(dim=-1).mean(dim=1)  # (B, Nq, Nk)
        if values is None:
            return weights
        return torch.matmul(weights.to(values.dtype), values)  # (B, Nq, C)


def dense_window_attention(
    attn: WindowCrossAttention, q: torch.Tensor, k: torch.Tensor, values: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Reference semantics with a dense mask: q (B,D,H',W'), k (B,D,h,w), values (B,C,h,w) -> (B,C,H',W').

    Memory is ``O(H'*W'*h*w)``: only for tests and benchmarks.
    """
    b, c, h, w = values.shape
    hq, wq = q.shape[-2:]
    mask = dense_window_mask((hq, wq), (h, w), ratio, q.device)
    out = attn.attend(attn.project_queries(q), attn.project_keys(k), mask, values.flatten(2).transpose(1, 2))
    return out.transpose(1, 2).reshape(b, c, hq, wq)
