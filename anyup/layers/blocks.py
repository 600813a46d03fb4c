"""Per-pixel convolutional blocks of AnyUp's encoders (plain ``forward(x)``, no execution tricks).

How these blocks are run at scale (in chunks of pixels, with GroupNorm statistics gathered in
passes) is the engine's business (:mod:`anyup.engine`); here they are the method as written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anyup.layers.norms import GroupNorm32


class PointwiseConv2d(nn.Conv2d):
    """Bias-free 1x1 convolution in the input's dtype (weights cast on the fly).

    (B, Cin, H, W) -> (B, Cout, H, W). Computed as one matrix product over the pixels (a 1x1
    convolution is one): on the CPU oneDNN's 1x1 convolution ran at about 60 GFLOP/s where the
    same GEMM ran at 90-110, forward and backward (448², 128 channels). The keys of ``nn.Conv2d``.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        weight = self.matrix.to(x.dtype)  # (Cout, Cin)
        if b == 1:  # a plain GEMM (torch.matmul would fold a (1, Cin, H*W) operand through a transposed copy)
            y = torch.mm(weight, x.reshape(c, h * w))  # (Cout, H*W)
        else:
            y = torch.bmm(weight.expand(b, -1, -1), x.reshape(b, c, h * w))  # (B, Cout, H*W)
        return y.view(b, self.out_channels, h, w)

    @property
    def matrix(self) -> torch.Tensor:
        """The weight as a (Cout, Cin) matrix (a view)."""
        return self.weight.view(self.out_channels, self.in_channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(silu(gn(conv(silu(gn(x))))))``.

    Layout ``(B, D, H, W)``; keys ``block.{0,3}`` (GroupNorm), ``block.{2,5}`` (bias-free 1x1 convs).
    Per-pixel apart from the GroupNorm statistics.
    """

    def __init__(self, dim: int, num_groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            GroupNorm32(num_groups, dim),
            nn.SiLU(),
            PointwiseConv2d(dim, dim),
            GroupNorm32(num_groups, dim),
            nn.SiLU(),
            PointwiseConv2d(dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)

    @property
    def parts(self) -> tuple[GroupNorm32, PointwiseConv2d, GroupNorm32, PointwiseConv2d]:
        """``(gn1, conv1, gn2, conv2)``, the four layers with parameters, in order."""
        gn1, _, conv1, gn2, _, conv2 = self.block
        assert isinstance(gn1, GroupNorm32) and isinstance(gn2, GroupNorm32)
        assert isinstance(conv1, PointwiseConv2d) and isinstance(conv2, PointwiseConv2d)
        return gn1, conv1, gn2, conv2


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

    @property
    def blocks(self) -> list[ResBlock]:
        """The ResBlocks after the first layer."""
        return [m for m in list(self)[1:] if isinstance(m, ResBlock)]
