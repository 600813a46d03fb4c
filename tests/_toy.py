"""Tiny stand-in encoders for the tests (no weights to download, importable by spawned workers).

Both follow the encoder contract: RGB ``(B, 3, H, W)`` in [0, 1] -> a one-element list holding the
``(B, C, H/s, W/s)`` map, with ``.info.stride``, ``.info.multiple`` and ``.info.channels``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ToyInfo:
    name: str
    stride: int
    channels: int
    multiple: int


class PoolEncoder(nn.Module):
    """Features = the image average-pooled over ``stride x stride`` cells, lifted to ``channels``.

    Every cell's vector depends only on its own pixels, so the features of a grid-aligned crop
    are exactly the matching window of the full image's features (used to test crop alignment).
    """

    def __init__(self, stride: int = 4, channels: int = 3) -> None:
        super().__init__()
        self.info = ToyInfo("toy_pool", stride, channels, stride)
        g = torch.Generator().manual_seed(1)
        self.register_buffer("lift", torch.eye(3) if channels == 3 else torch.randn(channels, 3, generator=g))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # (B, 3, H, W) -> [(B, C, H/s, W/s)]
        pooled = F.avg_pool2d(x, self.info.stride)  # (B, 3, h, w)
        return [torch.einsum("ck,bkhw->bchw", self.lift.to(pooled.dtype), pooled)]


class ConvEncoder(nn.Module):
    """A random-init strided CNN (two convs): a small but non-trivial frozen encoder."""

    def __init__(self, stride: int = 4, channels: int = 8, seed: int = 0) -> None:
        super().__init__()
        if stride < 2 or stride % 2:
            raise ValueError(f"ConvEncoder stride must be an even number >= 2, got {stride}")
        self.info = ToyInfo("toy_conv", stride, channels, stride)
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, channels, stride // 2, stride=stride // 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim > 1 else 0.1))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # (B, 3, H, W) -> [(B, C, H/s, W/s)]
        h = F.gelu(self.conv1(x - 0.5))  # (B, 16, H, W)
        h = F.avg_pool2d(h, 2)  # (B, 16, H/2, W/2)
        return [self.conv2(h)]  # [(B, C, H/s, W/s)]
