"""Per-pixel convolutional blocks of AnyUp's encoders.

Every block takes an optional ``norm`` provider (see :mod:`anyup.layers.norms`) so the model can
run it once on a whole map or stream it over tiles with frozen GroupNorm statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anyup.layers.norms import NormFn, group_norm


class PointwiseConv2d(nn.Conv2d):
    """Bias-free 1x1 convolution that runs in the input's dtype (weights cast on the fly)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        return F.conv2d(x, self.weight.to(x.dtype))


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(silu(gn(conv(silu(gn(x))))))``.

    Layout ``(B, D, H, W)``; keys ``block.{0,3}`` (GroupNorm), ``block.{2,5}`` (bias-free convs).
    The block is per-pixel (apart from GroupNorm statistics).
    """

    def __init__(self, dim: int, num_groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(num_groups, dim),
            nn.SiLU(),
            PointwiseConv2d(dim, dim),
            nn.GroupNorm(num_groups, dim),
            nn.SiLU(),
            PointwiseConv2d(dim, dim),
        )

    def forward(self, x: torch.Tensor, norm: NormFn = group_norm) -> torch.Tensor:
        gn1, _, conv1, gn2, _, conv2 = self.block
        h = conv1(F.silu(norm(gn1, x)))
        h = conv2(F.silu(norm(gn2, h)))
        return x + h


class ReflectConv2d(nn.Conv2d):
    """Bias-free conv with reflect padding; falls back to replicate padding on a side of length 1.

    The reference uses reflect padding, which is undefined for a 1-pixel side (PyTorch raises);
    replicating the single row/column is the natural limit and lets 1x1 feature maps through.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=0, bias=False)
        self.pad = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        p = self.pad
        if p:
            h, w = x.shape[-2:]
            mode_h = "reflect" if h > p else "replicate"
            mode_w = "reflect" if w > p else "replicate"
            if mode_h == mode_w:
                x = F.pad(x, (p, p, p, p), mode=mode_h)
            else:
                x = F.pad(F.pad(x, (0, 0, p, p), mode=mode_h), (p, p, 0, 0), mode=mode_w)
        return F.conv2d(x, self.weight.to(x.dtype))


@dataclass
class EncoderStackSpec:
    """An "encoder" of AnyUp: a first layer followed by ``num_blocks`` ResBlocks of width ``dim``."""

    dim: int = 128
    num_blocks: int = 2
    num_groups: int = 8


class EncoderStack(nn.Sequential):
    """``Sequential(first_layer, ResBlock, ResBlock)`` with keys ``0``, ``1``, ``2``."""

    def __init__(self, first: nn.Module, spec: EncoderStackSpec) -> None:
        super().__init__(first, *[ResBlock(spec.dim, spec.num_groups) for _ in range(spec.num_blocks)])

    def forward(self, x: torch.Tensor, norm: NormFn = group_norm) -> torch.Tensor:  # type: ignore[override]
        x = self[0](x)  # (B, D, H, W)
        for block in list(self)[1:]:
            x = block(x, norm)
        return x
