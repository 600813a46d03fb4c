"""Per-pixel convolutional blocks of AnyUp's encoders.

Every block takes an optional ``norm`` provider (see :mod:`anyup.layers.norms`) so the model can
run it once on a whole map or stream it over tiles with frozen GroupNorm statistics.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anyup.layers.norms import NormFn, group_norm


_REFERENCE_KERNELS: contextvars.ContextVar[bool] = contextvars.ContextVar("anyup_reference_kernels", default=False)


@contextlib.contextmanager
def reference_kernels() -> Iterator[None]:
    """Run the per-pixel blocks with the reference implementation's kernels.

    Inside this context 1x1 convolutions are ``F.conv2d`` and every op allocates a fresh output,
    as in the authors' code. Outside it (the default) they are GEMMs on the ``(C, H*W)`` view and,
    when no gradient is needed, ResBlocks reuse their buffers. Both give the same result up to
    float rounding (the golden-parity tests pass either way); the benchmark uses this context for
    its dense baseline and reports the split.
    """
    token = _REFERENCE_KERNELS.set(True)
    try:
        yield
    finally:
        _REFERENCE_KERNELS.reset(token)


def _needs_grad(x: torch.Tensor, module: nn.Module) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


class PointwiseConv2d(nn.Conv2d):
    """Bias-free 1x1 convolution that runs in the input's dtype (weights cast on the fly).

    For NCHW-contiguous input it is one GEMM per image, ``W (Cout, Cin) @ x (Cin, H*W)``: the same
    arithmetic as ``F.conv2d`` and on CPU about twice as fast, since no layout conversion happens.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, H, W); ``out`` (no-grad only) receives the result."""
        weight = self.weight.to(x.dtype)
        if _REFERENCE_KERNELS.get() or not x.is_contiguous() or x.device.type != "cpu":
            return F.conv2d(x, weight)
        b, c, h, w = x.shape
        w2 = weight.view(self.out_channels, c)  # (Cout, Cin)
        if _needs_grad(x, self):
            return torch.matmul(w2, x.view(b, c, h * w)).view(b, self.out_channels, h, w)
        if out is None:
            out = x.new_empty(b, self.out_channels, h, w)
        for i in range(b):
            torch.mm(w2, x[i].view(c, h * w), out=out[i].view(self.out_channels, h * w))
        return out


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
        if _REFERENCE_KERNELS.get() or _needs_grad(x, self):
            h = conv1(F.silu(norm(gn1, x)))
            h = conv2(F.silu(norm(gn2, h)))
            return x + h
        # Inference: same ops, three full-size buffers instead of seven (allocating and faulting
        # in a fresh (B, D, H, W) buffer costs about a third of a 1x1 conv on CPU). x is not modified.
        a = F.silu(norm(gn1, x), inplace=True)  # buffer A
        h = F.silu(norm(gn2, conv1(a)), inplace=True)  # buffers B (conv output, freed) and C
        return conv2(h, out=a).add_(x)  # A <- conv2(C) + x


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
        return self.forward_blocks(self[0](x), norm)  # (B, D, H, W)

    def forward_blocks(self, x: torch.Tensor, norm: NormFn = group_norm) -> torch.Tensor:
        """The ResBlocks only, on the first layer's output ``x`` (B, D, H, W)."""
        for block in list(self)[1:]:
            x = block(x, norm)
        return x
