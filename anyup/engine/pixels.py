"""The full-resolution per-pixel encoders, run in cache-sized chunks of pixels.

AnyUp runs three encoders at full image resolution (image -> RoPE'd encoding ``e`` -> key and
query branches): fourteen 128x128 1x1 convolutions per pixel with GroupNorm and SiLU in between.
Run on whole maps, every element-wise op streams a 100 MB tensor through memory; here each op
runs on a chunk of ``P`` pixels (a (B, D, P) block that stays in cache) and the 1x1 convs are
plain GEMMs, so the element-wise work is almost free next to the GEMMs.

GroupNorm needs statistics over *all* pixels before any pixel can be normalised. The engine
gathers them in passes (:class:`GroupNormStats`): one pass per GroupNorm computes the chunks up
to that norm's input and reduces them (per-chunk mean/variance in the compute dtype, combined
across chunks in float64 with Chan's formula). Once known, a norm is one ``addcmul`` with
per-(batch, channel) scale and shift.

Layout everywhere: channels-first pixel blocks ``(B, C, P)`` cut from ``(B, C, H*W)`` views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from anyup.engine.kernels import EAGER, ChunkKernels
from anyup.layers import EncoderStack, PointwiseConv2d, RoPE2d, pixel_coordinates


@dataclass
class FrozenNorm:
    """A GroupNorm with known statistics: ``y = x * scale + shift``, each (B, C, 1).

    ``scale = weight / sqrt(var + eps)`` and ``shift = bias - mean * scale`` are formed in float64
    and rounded once; :mod:`anyup.engine.kernels` applies them with the SiLU that follows (PyTorch's
    own GroupNorm kernels apply the same two per-channel terms).
    """

    scale: torch.Tensor
    shift: torch.Tensor


class PassMoments:
    """One pass's per-chunk moments, written in place as the chunks finish (any thread, any order).

    ``mean`` and ``root_m2`` are (K, B, C) float64 for the pass's K chunks, ``pixels`` their sizes.
    Preallocated so that no small tensor lives from its chunk to the end of the pass: kept among
    the chunks' large temporaries, such tensors fragmented the heap (hundreds of MiB of RSS)."""

    def __init__(self, chunks: Sequence[tuple[int, int]], batch: int, channels: int, device: torch.device) -> None:
        self.index = {p0: k for k, (p0, _) in enumerate(chunks)}
        self.pixels = [p1 - p0 for p0, p1 in chunks]
        self.mean = torch.zeros(len(chunks), batch, channels, dtype=torch.float64, device=device)
        self.root_m2 = torch.zeros_like(self.mean)

    def put(self, p0: int, part: ChunkMoments) -> None:
        """Store the moments of the chunk starting at pixel ``p0``."""
        k = self.index[p0]
        self.mean[k].copy_(part.mean)
        self.root_m2[k].copy_(part.root_m2)


class ChunkMoments(NamedTuple):
    """One chunk's per-channel moments: mean and root of M2, each (B, C) in the compute dtype
    (its pixel count is the chunk's size, which :class:`PassMoments` knows)."""

    mean: torch.Tensor
    root_m2: torch.Tensor


def chunk_moments(x: torch.Tensor, scratch: torch.Tensor, kernels: ChunkKernels = EAGER) -> ChunkMoments:
    """Per-channel moments of chunk x (B, C, P); ``scratch`` (B, C, >= P) may receive the centred chunk.

    Safe to run on several chunks at once (worker threads); merge a pass's results, in chunk order,
    with :meth:`GroupNormStats.merge`, so the statistics do not depend on which thread ran which chunk."""
    mean_c, root_m2_c = kernels.moments(x, scratch)  # (B, C) each
    return ChunkMoments(mean_c, root_m2_c)


@dataclass
class _Moments:
    """Running count, mean and M2 per (B, G) in float64 (Chan's parallel algorithm)."""

    count: int = 0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def add(self, part: PassMoments, groups: int) -> None:
        """Merge a pass's per-chunk, per-channel moments into the groups' running ones.

        All chunks at once in float64: per channel, the pixel-weighted mean and the sum of the
        chunks' M2 plus their spread around it; then channels into groups; then Chan's formula
        with what came before. A function of the chunks' moments alone, not of the order threads
        finished in."""
        means = part.mean  # (K, B, C) float64
        m2s = part.root_m2.square()  # (K, B, C)
        k, b, _ = means.shape
        pixels = sum(part.pixels)
        counts = torch.tensor(part.pixels, dtype=torch.float64, device=means.device).view(k, 1, 1)
        mean_c = (means * counts).sum(dim=0) / pixels  # (B, C) over all K chunks
        m2_c = m2s.sum(dim=0) + (counts * (means - mean_c).square()).sum(dim=0)  # (B, C)
        mean_c, m2_c = mean_c.view(b, groups, -1), m2_c.view(b, groups, -1)  # (B, G, C/G)
        mean = mean_c.mean(dim=-1)  # (B, G)
        m2 = m2_c.sum(dim=-1) + pixels * (mean_c - mean.unsqueeze(-1)).square().sum(dim=-1)
        n = pixels * mean_c.shape[-1]
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total


@dataclass
class GroupNormStats:
    """Statistics of one encoder stack's GroupNorms: ``frozen[i]`` is None until known.

    GroupNorm ``2j`` normalises the input of ResBlock ``j``, ``2j + 1`` its inner activation.
    """

    norms: list[nn.GroupNorm]
    kernels: ChunkKernels = EAGER
    frozen: list[FrozenNorm | None] = field(default_factory=list)
    _pending: dict[int, _Moments] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frozen = [None] * len(self.norms)

    @property
    def first_unknown(self) -> int | None:
        return next((i for i, f in enumerate(self.frozen) if f is None), None)

    def moments(self, x: torch.Tensor, scratch: torch.Tensor) -> ChunkMoments:
        """A chunk's moments (:func:`chunk_moments`) with this stack's kernels; thread-safe."""
        return chunk_moments(x, scratch, self.kernels)

    def merge(self, index: int, part: PassMoments) -> None:
        """Add a pass's chunk moments to GroupNorm ``index``'s."""
        self._pending.setdefault(index, _Moments()).add(part, self.norms[index].num_groups)

    def freeze(self, dtype: torch.dtype) -> None:
        """Turn the accumulated moments into scale/shift (after a full pass over all pixels)."""
        for index, mom in self._pending.items():
            gn = self.norms[index]
            assert mom.mean is not None and mom.m2 is not None
            b, g = mom.mean.shape
            c = gn.num_channels
            rstd = torch.rsqrt(mom.m2 / mom.count + gn.eps)  # (B, G) float64
            weight = gn.weight.double() if gn.weight is not None else torch.ones(c, dtype=torch.float64)
            bias = gn.bias.double() if gn.bias is not None else torch.zeros(c, dtype=torch.float64)
            scale = rstd.repeat_interleave(c // g, dim=1) * weight.to(rstd.device)  # (B, C)
            mean = mom.mean.repeat_interleave(c // g, dim=1)  # (B, C)
            shift = bias.to(rstd.device) - mean * scale  # (B, C) float64
            self.frozen[index] = FrozenNorm(*(t.to(dtype).unsqueeze(-1).contiguous() for t in (scale, shift)))
        self._pending.clear()


def _mm(w: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = w @ x`` per batch item: w (Cout, Cin), x (B, Cin, P), out (B, Cout, P)."""
    for i in range(x.shape[0]):
        torch.mm(w, x[i], out=out[i])
    return out


class StackProgram:
    """One :class:`EncoderStack` as chunk operations (weights cast to the compute dtype once)."""

    def __init__(self, stack: EncoderStack, dtype: torch.dtype, kernels: ChunkKernels = EAGER) -> None:
        first = stack[0]
        assert isinstance(first, PointwiseConv2d), "full-resolution encoders start with a 1x1 conv"
        self.first = first.matrix.detach().to(dtype)  # (D, Din)
        self.blocks = [
            (conv1.matrix.detach().to(dtype), conv2.matrix.detach().to(dtype))
            for _, conv1, _, conv2 in (b.parts for b in stack.blocks)
        ]
        self.kernels = kernels
        self.stats = GroupNormStats([n for b in stack.blocks for n in (b.parts[0], b.parts[2])], kernels)

    @property
    def num_norms(self) -> int:
        return len(self.stats.norms)

    def first_into(self, x_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """First layer (1x1 conv): (B, Din, P) -> ``out`` (B, D, P)."""
        return _mm(self.first, x_in, out)

    def half1(self, j: int, x: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ResBlock ``j``, first half: ``y = W1 @ silu(gn1(x))`` (``a`` is scratch)."""
        gn1 = self.stats.frozen[2 * j]
        assert gn1 is not None, "GroupNorm statistics must be known before use"
        self.kernels.norm_silu(x, gn1.scale, gn1.shift, a)
        return _mm(self.blocks[j][0], a, y)

    def half2(self, j: int, y: torch.Tensor, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """ResBlock ``j``, second half, in place on the residual stream: ``x += W2 @ silu(gn2(y))``."""
        gn2 = self.stats.frozen[2 * j + 1]
        assert gn2 is not None, "GroupNorm statistics must be known before use"
        self.kernels.norm_silu(y, gn2.scale, gn2.shift, a)
        w2 = self.blocks[j][1]
        for i in range(x.shape[0]):
            x[i].addmm_(w2, a[i])
        return x

    def run(
        self, x_in: torch.Tensor, out: torch.Tensor, a: torch.Tensor, y: torch.Tensor, stop: int | None = None
    ) -> torch.Tensor:
        """Chunk ``x_in`` (B, Din, P) through the whole stack; ``out`` (B, D, P) holds the result.

        With ``stop = i`` it returns early with GroupNorm ``i``'s input (to gather its statistics).
        ``a`` and ``y`` are (B, D, P) scratch buffers.
        """
        x = self.first_into(x_in, out)
        for j in range(len(self.blocks)):
            if stop == 2 * j:
                return x
            self.half1(j, x, a, y)
            if stop == 2 * j + 1:
                return y
            self.half2(j, y, a, x)
        return x


class RopeTable:
    """Per-pixel rotary angles of an image of (H, W) pixels, computed chunk by chunk.

    Angles in float32 (float64 for float64 compute), exactly as :class:`~anyup.layers.RoPE2d`.
    """

    def __init__(self, rope: RoPE2d, height: int, width: int, device: torch.device, dtype: torch.dtype) -> None:
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        f = rope.freqs.detach().to(acc)
        self.f0, self.f1 = f[0].view(-1, 1), f[1].view(-1, 1)  # (D, 1)
        self.ys = pixel_coordinates(height, device).to(acc)
        self.xs = pixel_coordinates(width, device).to(acc)
        self.width = width

    def scratch(self, dim: int, pixels: int) -> list[torch.Tensor]:
        """Buffers for :meth:`apply` on chunks of up to ``pixels`` pixels: three (D, P) in the angles' dtype."""
        return [torch.empty(dim, pixels, dtype=self.ys.dtype, device=self.ys.device) for _ in range(3)]

    def apply(self, x: torch.Tensor, p0: int, out: torch.Tensor, scratch: list[torch.Tensor]) -> torch.Tensor:
        """RoPE of chunk x (B, D, P) whose first pixel has flat index ``p0``, written to ``out``.

        The angles and their cosines and sines go to ``scratch`` (:meth:`scratch`): no allocation of
        chunk size per call (long passes of such allocations fragmented the heap by hundreds of MiB)."""
        n = x.shape[-1]
        idx = torch.arange(p0, p0 + n, device=x.device)
        angle, cos, sin = (t[:, :n] for t in scratch)  # (D, P) each
        torch.mul(self.ys[idx // self.width].view(1, -1), self.f0, out=angle)
        torch.mul(self.xs[idx % self.width].view(1, -1), self.f1, out=sin)
        angle.add_(sin)
        torch.cos(angle, out=cos)
        torch.sin(angle, out=sin)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        half = x.shape[1] // 2
        torch.mul(x, cos, out=out)
        out[:, :half].addcmul_(x[:, half:], sin[:half], value=-1.0)
        out[:, half:].addcmul_(x[:, :half], sin[half:])
        return out
