"""The AnyUp model: image-guided, encoder-agnostic feature upsampling.

Reads top to bottom like the method (see ``docs`` in the README):

1. ``image_encoder`` + RoPE turn the full-resolution image into a per-pixel encoding ``e'``.
2. ``query_encoder(e')`` pooled to the output size gives the queries.
3. ``key_encoder(e')`` pooled to the feature size, concatenated with ``key_features_encoder``
   of the L2-normalised features and fused by ``aggregation``, gives the keys.
4. Windowed attention (``cross_decode``) mixes the *raw* low-resolution features, so every output
   vector is a convex combination of input vectors.

Memory: nothing of size ``(H'*W', h*w)`` is ever built. Queries are processed in tiles against the
rectangle of keys their windows reach; when the full-resolution encoders would not fit under the
working-memory cap they are streamed over row bands with GroupNorm statistics gathered in extra
passes. Tiles and the cap change memory and speed, never the result.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anyup._checks import check_image_and_features, check_ratio, check_size
from anyup.layers import (
    EncoderStack,
    EncoderStackSpec,
    FeatureUnification,
    PointwiseConv2d,
    ReflectConv2d,
    RoPE2d,
    StreamedGroupNorm,
    WindowCrossAttention,
    adaptive_avg_pool_2d,
    dense_window_attention,
    group_norm,
    pixel_coordinates,
    pool_ranges,
    window_bounds,
)
from anyup.layers.norms import NormFn, _StopPass, acc_dtype

logger = logging.getLogger(__name__)


@dataclass
class AnyUpConfig:
    """Architecture and run-time settings. The defaults are those of the published weights."""

    dim: int = 128  # working width D of all encoders, keys and queries
    num_heads: int = 4  # attention heads (their weights are averaged)
    num_groups: int = 8  # GroupNorm groups in every ResBlock
    num_blocks: int = 2  # ResBlocks after each encoder's first layer
    lfu_kernel_size: int = 5  # spatial size of the feature-unification filters
    window_ratio: float = 0.1  # half-width r of the attention window, as a fraction of the image side
    # Run-time only (not part of the weights):
    max_memory: int | None = None  # working-memory cap in bytes; None = automatic (see default_max_memory)
    tile_size: int | None = None  # side of a query tile in output pixels; None = about one window, under the cap
    # Channels-last full-resolution encoders: ~2x faster 1x1 convolutions on CPU, but float32
    # rounding then differs from the reference's by up to ~2e-4 (both are that far from float64).
    channels_last: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# The fields that define the architecture (stored with exported weights); the rest are run-time settings.
ARCH_FIELDS = ("dim", "num_heads", "num_groups", "num_blocks", "lfu_kernel_size", "window_ratio")


class Tile(NamedTuple):
    """One rectangle of the output: rows ``[y0, y1)``, columns ``[x0, x1)``, ``data`` (B, C, y1-y0, x1-x0)."""

    y0: int
    y1: int
    x0: int
    x1: int
    data: torch.Tensor


@dataclass
class _Plan:
    streamed: bool  # encoders over row bands (True) or on the whole image at once
    band_rows: int  # full-resolution rows per band when streamed
    tile: int  # side of a query tile in output pixels
    fu_elements: int = 1 << 24  # feature unification: max elements of its (B, C*K, h, w) responses at once
    cache_encoding: bool = False  # streamed: keep the full-resolution image encoding once its norms are known
    extras: dict = field(default_factory=dict)


def default_max_memory(device: torch.device) -> int:
    """Automatic working-memory cap: a quarter of free memory, between 256 MiB and 8 GiB."""
    free = None
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
    else:
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        free = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    if free is None:
        free = 4 << 30
    return int(min(max(free // 4, 256 << 20), 8 << 30))


class CrossDecode(nn.Module):
    """``conv2d`` (3x3, zero padding) on the queries, then windowed cross-attention."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.cross_attn = WindowCrossAttention(dim, num_heads)


class AnyUp(nn.Module):
    """Upsample any encoder's features ``(B, C, h, w)`` to ``(B, C, H', W')``, guided by the image.

    Args:
        config: architecture and run-time settings; ``AnyUpConfig()`` matches the published weights.

    Example:
        >>> model = AnyUp()
        >>> image = torch.randn(1, 3, 56, 84)        # ImageNet-normalised
        >>> feats = torch.randn(1, 384, 4, 6)        # any encoder, any C
        >>> model(image, feats).shape
        torch.Size([1, 384, 56, 84])
    """

    def __init__(self, config: AnyUpConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or AnyUpConfig()
        d = cfg.dim
        spec = EncoderStackSpec(dim=d, num_blocks=cfg.num_blocks, num_groups=cfg.num_groups)
        self.image_encoder = EncoderStack(PointwiseConv2d(3, d), spec)
        self.key_encoder = EncoderStack(PointwiseConv2d(d, d), spec)
        self.query_encoder = EncoderStack(PointwiseConv2d(d, d), spec)
        self.key_features_encoder = EncoderStack(FeatureUnification(d, cfg.lfu_kernel_size), spec)
        self.aggregation = EncoderStack(ReflectConv2d(2 * d, d, 3), spec)
        self.cross_decode = CrossDecode(d, cfg.num_heads)
        self.rope = RoPE2d(d)
        check_ratio(cfg.window_ratio)

    # ----------------------------------------------------------------------------------------
    # Public API
    @property
    def window_ratio(self) -> float:
        return self.config.window_ratio

    @window_ratio.setter
    def window_ratio(self, value: float) -> None:
        self.config.window_ratio = check_ratio(value)

    def forward(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        output_size: Sequence[int] | int | None = None,
        *,
        out: torch.Tensor | None = None,
        max_memory: int | None = None,
        tile_size: int | None = None,
    ) -> torch.Tensor:
        """Upsample ``features`` guided by ``image``.

        Args:
            image: (B, 3, H, W) float, ImageNet-normalised RGB.
            features: (B, C, h, w) float (float32, bfloat16 or float16), any C >= 1.
            output_size: (H', W') or an int; default (H, W). May be smaller or larger than the image.
            out: optional preallocated (B, C, H', W') tensor to write into (any float dtype and
                device, e.g. ``torch.from_numpy`` of a memory-mapped array); returned.
            max_memory: working-memory cap in bytes for this call (default: ``config.max_memory``,
                else automatic). Changes memory and speed, never the result.
            tile_size: side of a query tile in output pixels (default: from the cap).

        Returns:
            (B, C, H', W') in the dtype of ``features`` (or ``out``'s), every vector a convex
            combination of input feature vectors.
        """
        check_image_and_features(image, features)
        b, c = features.shape[:2]
        size = check_size(output_size, "output_size", tuple(image.shape[-2:]))
        if out is None:
            out = torch.empty(b, c, *size, dtype=features.dtype, device=features.device)
        elif tuple(out.shape) != (b, c, *size):
            raise ValueError(f"out must have shape {(b, c, *size)}, got {tuple(out.shape)}")
        for t in self._tiles(image, features, size, max_memory, tile_size):
            out[:, :, t.y0 : t.y1, t.x0 : t.x1] = t.data
        return out

    def iter_tiles(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        output_size: Sequence[int] | int | None = None,
        *,
        max_memory: int | None = None,
        tile_size: int | None = None,
    ) -> Iterator[Tile]:
        """Yield the output as non-overlapping :class:`Tile` rectangles covering (H', W') row-major.

        Lets a caller stream a huge output (e.g. 4096x4096x384) to disk without holding it twice.
        Arguments as in :meth:`forward`.
        """
        check_image_and_features(image, features)
        out_hw = check_size(output_size, "output_size", tuple(image.shape[-2:]))
        yield from self._tiles(image, features, out_hw, max_memory, tile_size)

    def _tiles(self, image, features, out_hw, max_memory, tile_size) -> Iterator[Tile]:
        plan = self._plan(image, features, out_hw, max_memory, tile_size)
        image = image.to(features.dtype)
        keys = self._keys(image, features, plan)  # (B, D, h, w)
        yield from self._decode(image, features, keys, out_hw, plan)

    @torch.no_grad()
    def attention_weights(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        output_size: Sequence[int] | int | None = None,
        pixels: Sequence[tuple[int, int]] = ((0, 0),),
    ) -> torch.Tensor:
        """Where output pixels look: heads-averaged attention over the low-res grid.

        Args:
            pixels: (y, x) output-pixel coordinates, each inside ``output_size``.

        Returns:
            (B, P, h, w) float32, non-negative, each map summing to 1 (zero outside the window).
        """
        check_image_and_features(image, features)
        hq, wq = check_size(output_size, "output_size", tuple(image.shape[-2:]))
        for y, x in pixels:
            if not (0 <= y < hq and 0 <= x < wq):
                raise ValueError(f"pixel {(y, x)} lies outside the output size {(hq, wq)}")
        plan = self._plan(image, features, (hq, wq), None, None)
        image = image.to(features.dtype)
        b, _, h, w = features.shape
        kh = self.cross_decode.cross_attn.project_keys(self._keys(image, features, plan))  # (B, nh, h*w, hd)
        maps = []
        r0, r1 = window_bounds(hq, h, self.window_ratio, image.device)
        c0, c1 = window_bounds(wq, w, self.window_ratio, image.device)
        for y, x in pixels:
            q = self._queries_rows(image, (hq, wq), y, y + 1, plan)  # (B, D, 1, W')
            qh = self.cross_decode.cross_attn.project_queries(q[..., x : x + 1])  # (B, nh, 1, hd)
            rows, cols = torch.arange(h, device=image.device), torch.arange(w, device=image.device)
            mask = ((rows >= r0[y]) & (rows < r1[y]))[:, None] & ((cols >= c0[x]) & (cols < c1[x]))[None, :]
            wts = self.cross_decode.cross_attn.attend(qh, kh, mask.reshape(1, -1))  # (B, 1, h*w)
            maps.append(wts.view(b, h, w))
        return torch.stack(maps, dim=1)

    def forward_dense(
        self, image: torch.Tensor, features: torch.Tensor, output_size: Sequence[int] | int | None = None
    ) -> torch.Tensor:
        """The reference's computation: whole-image encoders and a dense ``(H'*W', h*w)`` mask.

        Same result as :meth:`forward` but memory ``O(H'*W'*h*w)``: kept only as the baseline
        for tests and ``benchmarks/``. Do not use it for real work.
        """
        check_image_and_features(image, features)
        size = check_size(output_size, "output_size", tuple(image.shape[-2:]))
        plan = _Plan(streamed=False, band_rows=image.shape[-2], tile=max(size))
        image = image.to(features.dtype)
        keys = self._keys(image, features, plan)  # (B, D, h, w)
        q = self._queries_rows(image, size, 0, size[0], plan)  # (B, D, H', W')
        return dense_window_attention(self.cross_decode.cross_attn, q, keys, features, self.window_ratio)

    def save_pretrained(self, folder: str, push_to_hub: str | None = None):
        """Write ``config.json`` + ``model.safetensors`` (see :mod:`anyup.hf`)."""
        from anyup.hf import save_pretrained

        return save_pretrained(self, folder, push_to_hub=push_to_hub)

    @classmethod
    def from_pretrained(cls, repo_or_folder: str, device: str = "cpu", **hub_kwargs) -> "AnyUp":
        """Load a folder written by :meth:`save_pretrained` or a Hugging Face Hub repository id."""
        from anyup.hf import from_pretrained

        return from_pretrained(repo_or_folder, device=device, **hub_kwargs)

    # ----------------------------------------------------------------------------------------
    # Planning
    def _plan(self, image, features, out_hw, max_memory, tile_size) -> _Plan:
        b, c, h, w = features.shape
        hi, wi = image.shape[-2:]
        hq, wq = out_hw
        d, nh = self.config.dim, self.config.num_heads
        cap = max_memory if max_memory is not None else self.config.max_memory
        cap = int(cap) if cap is not None else default_max_memory(image.device)
        if cap <= 0:
            raise ValueError(f"max_memory must be a positive number of bytes, got {cap}")
        px_bytes = b * d * 4 * 6  # live float32 activations per full-resolution pixel (empirical bound)
        whole = hi * wi * px_bytes + hq * wq * b * d * 4 * 3
        streamed = whole > cap
        band_rows = max(1, min(hi, (cap // 2) // max(1, wi * px_bytes)))
        tile = tile_size if tile_size is not None else self.config.tile_size
        if tile is None:
            # Speed: a tile about one window wide keeps the reachable key rectangle close to the
            # window itself (cost ~ (2r + t/H')^2 h w per query) while tiles stay few. Memory: shrink
            # further until the tile's attention (+ its query band when streamed) fits the budget.
            budget = cap // 2 if streamed else cap
            r = self.window_ratio
            tile = max(16, math.ceil(r * max(hq, wq)))
            while tile > 1:
                th, tw = min(tile, hq), min(tile, wq)
                nk = (math.ceil((2 * r + th / hq) * h) + 2) * (math.ceil((2 * r + tw / wq) * w) + 2)
                nk = min(nk, h * w)
                need = b * th * tw * (nh * nk * 4 * 3 + nk + c * 4 * 2 + d * 4 * 3)
                if streamed:
                    need += math.ceil(th * hi / hq + 3) * wi * px_bytes
                if need <= budget:
                    break
                tile = max(1, tile // 2)
        elif tile < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile}")
        logger.debug("plan: streamed=%s band_rows=%d tile=%d cap=%d", streamed, band_rows, tile, cap)
        # Feature unification holds its responses and their softmax (2 float32 copies).
        fu_elements = max(1 << 20, cap // (4 * 2 * 2))
        # Streamed: the bands and tiles use half the cap; if the RoPE'd image encoding (B, D, H, W)
        # fits in the other half, compute it once instead of once per later pass.
        cache_encoding = streamed and b * d * hi * wi * features.element_size() <= cap // 2
        return _Plan(streamed=streamed, band_rows=band_rows, tile=int(tile), fu_elements=fu_elements,
                     cache_encoding=cache_encoding)

    # ----------------------------------------------------------------------------------------
    # Full-resolution per-pixel pipeline
    def _encode(self, image_rows: torch.Tensor, y0: int, height: int, norm: NormFn) -> torch.Tensor:
        """Image rows ``[y0, y0+n)`` of an image of ``height`` rows -> RoPE'd encoding (B, D, n, W)."""
        if self.config.channels_last:  # faster 1x1 convs (GEMMs); rounding differs from the reference
            image_rows = image_rows.contiguous(memory_format=torch.channels_last)
        e = self.image_encoder(image_rows, norm)  # (B, D, n, W)
        ys = pixel_coordinates(height, e.device)[y0 : y0 + e.shape[-2]]
        xs = pixel_coordinates(e.shape[-1], e.device)
        return self.rope(e, ys, xs)

    def _encode_rows(self, image: torch.Tensor, y0: int, y1: int, norm: NormFn, plan: _Plan) -> torch.Tensor:
        """RoPE'd encoding of image rows ``[y0, y1)`` (B, D, y1-y0, W), from the cache when there is one."""
        cached = plan.extras.get("encoding_full")
        if cached is not None:
            return cached[:, :, y0:y1].contiguous()
        return self._encode(image[:, :, y0:y1], y0, image.shape[-2], norm)

    def _cache_encoding(self, image: torch.Tensor, norm: StreamedGroupNorm, plan: _Plan) -> None:
        """Fill ``plan.extras["encoding_full"]`` band by band (the image encoder's norms must be known)."""
        hi = image.shape[-2]
        full = None
        for y0 in range(0, hi, plan.band_rows):
            e = self._encode(image[:, :, y0 : y0 + plan.band_rows], y0, hi, norm)  # (B, D, n, W)
            if full is None:
                full = e.new_empty(e.shape[0], e.shape[1], hi, e.shape[-1])  # (B, D, H, W)
            full[:, :, y0 : y0 + e.shape[-2]] = e
        plan.extras["encoding_full"] = full

    def _collect_stats(self, image: torch.Tensor, plan: _Plan) -> StreamedGroupNorm:
        """GroupNorm statistics of the image encoder and both branches, over row bands.

        Each pass recomputes every band up to the first GroupNorm still unknown in each branch
        (key and query branches collect in the same pass): 8 passes for the default architecture.
        """
        norm = plan.extras.get("norm")
        if norm is not None:
            return norm
        norm = plan.extras["norm"] = StreamedGroupNorm()
        hi = image.shape[-2]
        stacks = (self.image_encoder, self.key_encoder, self.query_encoder)
        n_norms = sum(isinstance(m, nn.GroupNorm) for s in stacks for m in s.modules())
        n_image = sum(isinstance(m, nn.GroupNorm) for m in self.image_encoder.modules())
        while norm.num_known < n_norms:
            if plan.cache_encoding and norm.num_known >= n_image and "encoding_full" not in plan.extras:
                self._cache_encoding(image, norm, plan)
            for y0 in range(0, hi, plan.band_rows):
                try:
                    e = self._encode_rows(image, y0, y0 + plan.band_rows, norm, plan)
                except _StopPass:
                    continue
                for branch in (self.key_encoder, self.query_encoder):
                    try:
                        branch(e, norm)
                    except _StopPass:
                        pass
            norm.finish_pass()
        return norm

    def _keys(self, image: torch.Tensor, features: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """Keys at the feature resolution: (B, D, h, w)."""
        b, c, h, w = features.shape
        hi, wi = image.shape[-2:]
        if not plan.streamed:
            e = plan.extras["encoding"] = self._encode(image, 0, hi, group_norm)  # (B, D, H, W), reused by queries
            kimg = self.key_encoder(e, group_norm)  # (B, D, H, W)
            kimg = adaptive_avg_pool_2d(kimg, (hi, wi), (h, w))  # (B, D, h, w)
        else:
            norm = self._collect_stats(image, plan)
            starts, ends = pool_ranges(hi, h)
            rows_per_cell = max(1, math.ceil(hi / h))
            cells = max(1, plan.band_rows // (rows_per_cell + 1))
            parts = []
            for l0 in range(0, h, cells):
                l1 = min(h, l0 + cells)
                s, e = starts[l0], ends[l1 - 1]
                k = self.key_encoder(self._encode_rows(image, s, e, norm, plan), norm)  # (B, D, n, W)
                parts.append(adaptive_avg_pool_2d(k, (hi, wi), (h, w), (l0, l1), s))  # (B, D, l1-l0, w)
            kimg = torch.cat(parts, dim=2)
        feats_n = F.normalize(features.to(acc_dtype(features)), dim=1).to(features.dtype)  # L2 over channels
        unified = self.key_features_encoder[0](feats_n, max_chunk_elements=plan.fu_elements)  # (B, D, h, w)
        kfeat = self.key_features_encoder.forward_blocks(unified, group_norm)  # (B, D, h, w)
        return self.aggregation(torch.cat([kimg.to(kfeat.dtype), kfeat], dim=1), group_norm)  # (B, D, h, w)

    def _queries_rows(self, image: torch.Tensor, out_hw: tuple[int, int], i0: int, i1: int, plan: _Plan):
        """Decoded queries (after ``cross_decode.conv2d``) for output rows ``[i0, i1)``: (B, D, i1-i0, W')."""
        hi, wi = image.shape[-2:]
        hq, wq = out_hw
        a, z = max(0, i0 - 1), min(hq, i1 + 1)  # one halo row each side for the 3x3 conv
        if not plan.streamed:
            q = plan.extras.get("q_full")
            if q is None:
                e = plan.extras.pop("encoding", None)
                if e is None:
                    e = self._encode(image, 0, hi, group_norm)
                q = self.query_encoder(e, group_norm)  # (B, D, H, W)
                del e
                q = adaptive_avg_pool_2d(q, (hi, wi), (hq, wq))  # (B, D, H', W')
                plan.extras["q_full"] = q
            q = q[:, :, a:z]
        else:
            norm = self._collect_stats(image, plan)
            starts, ends = pool_ranges(hi, hq)
            s, e = starts[a], ends[z - 1]
            q = self.query_encoder(self._encode_rows(image, s, e, norm, plan), norm)  # (B, D, n, W)
            q = adaptive_avg_pool_2d(q, (hi, wi), (hq, wq), (a, z), s)  # (B, D, z-a, W')
        q = F.pad(q, (1, 1, 1 if i0 == 0 else 0, 1 if i1 == hq else 0))  # zero padding at the borders only
        return F.conv2d(q, self.cross_decode.conv2d.weight.to(q.dtype))  # (B, D, i1-i0, W')

    # ----------------------------------------------------------------------------------------
    # Windowed attention, tile by tile
    def _decode(self, image, features, keys, out_hw, plan: _Plan) -> Iterator[Tile]:
        b, c, h, w = features.shape
        hq, wq = out_hw
        attn = self.cross_decode.cross_attn
        kh = attn.project_keys(keys)  # (B, nh, h*w, hd)
        nh, hd = kh.shape[1], kh.shape[-1]
        kh = kh.view(b, nh, h, w, hd)
        values = features.permute(0, 2, 3, 1)  # (B, h, w, C)
        r0, r1 = window_bounds(hq, h, self.window_ratio, features.device)
        c0, c1 = window_bounds(wq, w, self.window_ratio, features.device)
        rows, cols = torch.arange(h, device=features.device), torch.arange(w, device=features.device)
        t = plan.tile
        for i0 in range(0, hq, t):
            i1 = min(hq, i0 + t)
            q = self._queries_rows(image, out_hw, i0, i1, plan)  # (B, D, th, W')
            qh_band = attn.project_queries(q).view(b, nh, i1 - i0, wq, hd)  # (B, nh, th, W', hd)
            ra, rb = int(r0[i0]), int(r1[i1 - 1])
            row_ok = (rows[ra:rb] >= r0[i0:i1, None]) & (rows[ra:rb] < r1[i0:i1, None])  # (th, nr)
            for j0 in range(0, wq, t):
                j1 = min(wq, j0 + t)
                ca, cb = int(c0[j0]), int(c1[j1 - 1])
                col_ok = (cols[ca:cb] >= c0[j0:j1, None]) & (cols[ca:cb] < c1[j0:j1, None])  # (tw, nc)
                mask = (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape((i1 - i0) * (j1 - j0), -1)
                qh = qh_band[:, :, :, j0:j1].reshape(b, nh, -1, hd)  # (B, nh, th*tw, hd)
                k_sub = kh[:, :, ra:rb, ca:cb].reshape(b, nh, -1, hd)  # (B, nh, nr*nc, hd)
                v_sub = values[:, ra:rb, ca:cb].reshape(b, -1, c)  # (B, nr*nc, C)
                o = attn.attend(qh, k_sub, mask, v_sub)  # (B, th*tw, C)
                yield Tile(i0, i1, j0, j1, o.transpose(1, 2).reshape(b, c, i1 - i0, j1 - j0))
        plan.extras.clear()
