"""Learned 2D rotary position encoding over image pixels."""

from __future__ import annotations

import math

import torch
from torch import nn

from anyup.layers.norms import acc_dtype


def pixel_coordinates(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``linspace(0, 1, n)`` in float32 (endpoints included), the reference's pixel coordinates."""
    return torch.linspace(0.0, 1.0, n, dtype=torch.float32, device=device)


class RoPE2d(nn.Module):
    """Rotary position encoding with learned frequencies ``freqs`` of shape ``(2, dim)``.

    For a pixel at ``(y, x)`` (each in ``[0, 1]``), ``angle = y * freqs[0] + x * freqs[1]``
    (``dim`` angles) and ``e' = e * cos(angle) + rot(e) * sin(angle)``, where ``rot`` maps the
    channel halves ``[a, b]`` to ``[-b, a]``. Angles are computed in float32 whatever the input
    dtype, so positions do not collapse in bfloat16/float16.
    """

    def __init__(self, dim: int = 128, max_freq: float = 100.0) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"RoPE2d dim must be a multiple of 4, got {dim}")
        self.dim = dim
        q = dim // 4
        base = 2 * math.pi * max_freq ** torch.linspace(0.0, -1.0, q)  # (dim/4,)
        freqs = torch.zeros(2, dim)
        freqs[0, : 2 * q] = base.repeat(2)  # y-frequencies in the first half
        freqs[1, 2 * q :] = base.repeat(2)  # x-frequencies in the second half
        self.freqs = nn.Parameter(freqs)

    def forward(self, x: torch.Tensor, y_coords: torch.Tensor, x_coords: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` (B, dim, h, w) whose rows sit at ``y_coords`` (h,) and columns at ``x_coords`` (w,)."""
        acc = acc_dtype(x)
        f = self.freqs.to(acc)
        angle = y_coords.to(acc).view(1, -1, 1) * f[0].view(-1, 1, 1) + x_coords.to(acc).view(1, 1, -1) * f[1].view(
            -1, 1, 1
        )  # (dim, h, w)
        cos, sin = angle.cos(), angle.sin()
        a, b = x.to(acc).chunk(2, dim=1)  # (B, dim/2, h, w) each
        rotated = torch.cat([-b, a], dim=1)  # (B, dim, h, w)
        return (x.to(acc) * cos + rotated * sin).to(x.dtype)
