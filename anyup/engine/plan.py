"""The execution plan: how the engine runs one call, chosen from a documented memory model.

Working memory (bytes beyond the model, the inputs and the output) is the sum of the buffers the
engine allocates. With ``es`` the compute element size (4 for float32), ``B`` the batch, ``D``
the model width (128), ``C`` the feature channels, ``nh`` heads, ``map(H, W) = B*D*H*W*es``:

* **chunk scratch**: 9 buffers of ``B*D*P*es`` plus rotary angles ``5*D*P*4`` (``P`` pixels a chunk),
  once per worker thread (``Plan.workers``, :mod:`anyup.engine.workers`);
* **low resolution** (keys, feature unification, the decode's channels-last values): ``10*B*D*h*w*es + 3*B*C*h*w*es`` plus the
  unification's response chunks ``3 * fu_elements * es``;
* **attention tile** of ``s x s`` queries against the ``Nk`` cells they reach:
  ``B*nh*s*s*Nk*4 * 2`` (logits, softmax) ``+ B*s*s*Nk*4`` (weights) ``+ B*s*s*(2*C + 2*D)*es``
  ``+ B*Nk*C*es`` (gathered values). On the CPU ``s`` is the largest side (up to the band's ``t``)
  whose logits ``B*nh*s*s*Nk*4`` fit in ``CPU_LOGITS_BYTES``: the masked softmax then runs in
  cache (at 2048² from 128² a 51-pixel tile's 33 MiB of logits ran 1.9x slower per query than a
  17-pixel tile's 3 MiB: ``benchmarks/attention_tiles.py``);
* **query band** of ``t`` output rows (the decode tile's side): ``B*D*(t+2)*W'*es * 3`` (pooled, padded, convolved) ``+
  B*D*t*W'*es * 6`` (RMS norm and projection temporaries), and in the streamed modes the encoder output for the image rows
  that band covers, ``B*D*rows*W*es``;
* **key band** (streamed modes) of ``k`` low-res rows: the key branch for the image rows they
  cover in the compute dtype, twice, plus its float64 copy for exact pooling,
  ``B*D*k*(H/h + 1)*W*(2*es + 8)``;
* **mode**, by the full-resolution maps (``map(H, W)``) it keeps, fastest first (GEMM work in
  passes of one 128x128 1x1 conv over all pixels, with the model's 2+2+2 ResBlocks):
  ``whole`` keeps three (image encoding, branch stream, inner activation) plus the pooled queries
  ``map(H', W')`` when the output size differs from the image: 14 passes, each layer once;
  ``resident`` keeps two (the encoding, turned into the query map in place, and the key map),
  computing each ResBlock's inner activation twice instead of storing it: 20 passes;
  ``cached`` keeps one (the encoding, then the query map in place) and recomputes the key
  branch band by band from it, one pass per GroupNorm: 28 passes; ``streamed`` recomputes the
  encoding from the image in every pass (about 48 passes) except for the leading pixels whose
  encoding fits in 90 % of the cap's remaining slack (``Plan.cache_pixels``, whole chunks).
* **output slots**: when :meth:`anyup.AnyUp.forward` allocates the output itself (same size as
  the image, compute dtype), its (B, C, H, W) memory holds ``C // D`` of those maps until the
  decode overwrites it (``Geometry.out_slots``); only the maps beyond the slots count as working
  memory (at 2048² from 128 channels the encoding fits in the output: ``cached`` instead of
  ``streamed`` under a 2 GiB cap).

The plan takes the fastest mode whose total fits the cap, then the largest tile (up to about one
window) and band that fit. Under autograd the engine checkpoints per ResBlock and per tile; its
model is ``18*map(H, W) + (3 + 2*C/D)*map(H', W')`` plus three tiles (measured in
``benchmarks/memory_cap.py``). A cap below the smallest plan is refused at once, naming it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

from anyup._checks import meminfo_bytes, parse_memory  # noqa: F401  (parse_memory re-exported: the one size parser)
from anyup.layers.feature_unification import BAND_ELEMENTS, MIN_CHUNK

Mode = Literal["whole", "resident", "cached", "streamed", "autograd"]

# full-resolution maps each mode keeps (see the module docstring)
MODE_MAPS: dict[str, int] = {"whole": 3, "resident": 2, "cached": 1, "streamed": 0, "autograd": 0}

CACHE_SHARE = 0.9  # share of a streamed plan's slack under the cap spent on a partial encoding cache
# pixels per chunk: a (1, 128, 2048) float32 block is 1 MiB and stays in L2 (GEMMs ~15 % faster than at 8192)
CHUNK_PIXELS = 2048
# CPU: the logits of one attention tile stay within this (about two cores' L2); larger tiles ran the
# masked softmax out of cache (see the module docstring). CUDA tiles are not limited.
CPU_LOGITS_BYTES = 4 << 20
# CPU: one decode band of query rows (B*D*t*W'*es, a dozen temporaries of it) stays within this: at
# 2048² from 128² the decode took 42.2 s with 51-row bands (51 MiB) and 52.8 s with 205-row ones.
CPU_BAND_BYTES = 64 << 20


def default_max_memory(device: torch.device) -> int:
    """Automatic cap: a quarter of the device's *total* memory, between 256 MiB and 8 GiB.

    Total (not free) memory, so the plan, and with it every output bit, is the same on every run
    on the same machine.
    """
    if device.type == "cuda" and torch.cuda.is_available():
        total: int | None = torch.cuda.get_device_properties(device).total_memory
    else:
        total = meminfo_bytes("MemTotal")
    if total is None:
        total = 16 << 30
    return int(min(max(total // 4, 256 << 20), 8 << 30))


@dataclass(frozen=True)
class Geometry:
    """Sizes of one call."""

    batch: int
    channels: int  # C of the features
    image_hw: tuple[int, int]
    low_hw: tuple[int, int]
    out_hw: tuple[int, int]
    dim: int
    heads: int
    ratio: float
    elem: int  # bytes per element of the compute dtype
    mask_elem: int = 1  # bytes per window-mask element (bool; float32 bias for the soft edge)
    logits_budget: int | None = None  # bytes of one attention tile's logits (CPU); None = no limit
    out_slots: int = 0  # full-resolution maps the output tensor can hold before the decode (no autograd)

    def map_bytes(self, hw: tuple[int, int]) -> int:
        return self.batch * self.dim * hw[0] * hw[1] * self.elem

    def attention_side(self, t: int) -> int:
        """Side of the attention tiles inside a decode tile of side ``t``: ``t``, or the largest
        smaller side whose logits fit ``logits_budget`` (at least 8)."""
        if self.logits_budget is None:
            return t
        s = t
        while s > 8:
            sh, sw = min(s, self.out_hw[0]), min(s, self.out_hw[1])
            if self.batch * self.heads * sh * sw * self.reach(sh, sw) * 4 <= self.logits_budget:
                break
            s -= 1
        return s

    def reach(self, t_rows: int, t_cols: int) -> int:
        """Cells a tile of ``t_rows x t_cols`` queries can see (upper bound)."""
        (h, w), (hq, wq), r = self.low_hw, self.out_hw, self.ratio
        nr = min(h, math.ceil((2 * r + t_rows / hq) * h) + 2)
        nc = min(w, math.ceil((2 * r + t_cols / wq) * w) + 2)
        return nr * nc


@dataclass(frozen=True)
class Plan:
    """How one call runs. ``estimate`` is the memory model's working memory in bytes."""

    mode: Mode
    chunk: int  # pixels per chunk of the per-pixel encoders
    key_rows: int  # low-res cell rows per key band (streamed modes)
    tile: int  # side of a decode tile in output pixels (query bands are this many rows)
    fu_elements: int  # feature unification: responses alive at once
    estimate: int
    cap: int
    cache_pixels: int = 0  # leading image pixels whose encoding is kept (cached: all; streamed: what fits)
    attn_tile: int = 0  # side of the attention tiles inside a decode tile (0: the decode tile's)
    out_slots: int = 0  # of the mode's full-resolution maps, those kept in the output tensor
    key_prefix: int = 0  # cached: leading pixels whose key-branch activation is kept while the keys are made
    workers: int = 1  # threads running the per-pixel encoders' chunks (anyup.engine.workers)

    @property
    def attention_side(self) -> int:
        return min(self.attn_tile or self.tile, self.tile)


def _tile_bytes(g: Geometry, t: int, sub: int | None = None) -> int:
    """One decode tile of side ``t``: its attention tiles of side ``sub`` (default ``t``) and its query band."""
    s = t if sub is None else sub
    th = min(t, g.out_hw[0])
    sh, sw = min(s, g.out_hw[0]), min(s, g.out_hw[1])
    nq, nk = sh * sw, g.reach(sh, sw)
    b, c, d, es = g.batch, g.channels, g.dim, g.elem
    attn = (
        b * g.heads * nq * nk * 4 * 2
        + b * nq * nk * 4
        + nq * nk * g.mask_elem
        + b * nq * (2 * c + 2 * d) * es
        + b * nk * c * es
    )
    band = b * d * (th + 2) * g.out_hw[1] * es * 3 + b * d * th * g.out_hw[1] * es * 6
    return attn + band


def _query_rows(g: Geometry, t: int) -> int:
    """Image rows the encoders must produce for a band of ``t`` output rows (with the conv halo)."""
    return min(g.image_hw[0], math.ceil((t + 2) * g.image_hw[0] / g.out_hw[0]) + 2)


def _fixed_bytes(g: Geometry, chunk: int, fu: int, workers: int = 1) -> int:
    b, d, c, es = g.batch, g.dim, g.channels, g.elem
    h, w = g.low_hw
    scratch = (9 * b * d * chunk * es + 5 * d * chunk * 4) * workers
    low = 10 * b * d * h * w * es + 3 * b * c * h * w * es + 3 * fu * es  # features: cast, normalised, channels-last
    return scratch + low


def _fu_elements(g: Geometry, budget: int) -> int:
    """Feature-unification responses alive at once.

    The exact path (the reference's arithmetic and bits at every position) runs in chunks of
    positions of up to ``BAND_ELEMENTS`` responses and needs at least ``MIN_CHUNK`` positions (a
    chunk may hold up to twice that). The published weights' sharp attention amplifies float32
    rounding differences in this branch about 1000x, so the chunked path over the grid's columns
    (other summation order) is only for caps where those positions cannot fit.
    """
    full = g.batch * g.channels * g.dim * g.low_hw[0] * g.low_hw[1]
    least = g.batch * g.channels * g.dim * min(MIN_CHUNK, g.low_hw[0] * g.low_hw[1])
    want = min(full, max(2 * least, BAND_ELEMENTS))
    return int(max(min(want, budget // (3 * g.elem)), g.batch * g.dim * g.low_hw[0] * g.low_hw[1]))


def _estimate(
    g: Geometry,
    mode: Mode,
    chunk: int,
    key_rows: int,
    tile: int,
    fu: int,
    sub: int | None = None,
    key_prefix: int = 0,
    workers: int = 1,
) -> int:
    fixed = _fixed_bytes(g, chunk, fu, workers)
    tile_b = _tile_bytes(g, tile, sub)
    if mode == "autograd":
        # kept: 7 stage outputs (checkpoint inputs) + ~11 while one ResBlock is recomputed with its
        # gradients; at the output size: pooled/padded/convolved queries, the output and its gradient.
        out_maps = 3 + 2 * g.channels / g.dim
        return int(18 * g.map_bytes(g.image_hw) + out_maps * g.map_bytes(g.out_hw)) + fixed + 3 * tile_b
    full = g.map_bytes(g.image_hw)
    held = max(0, MODE_MAPS[mode] - g.out_slots) * full  # the mode's maps beyond the output's slots
    if mode in ("whole", "resident"):
        pooled = g.map_bytes(g.out_hw) if mode == "whole" and g.out_hw != g.image_hw else 0
        return held + pooled + fixed + tile_b
    rows_per_cell = math.ceil(g.image_hw[0] / g.low_hw[0]) + 1
    key_band = (
        g.batch * g.dim * key_rows * rows_per_cell * g.image_hw[1] * (g.elem * 2 + 8)
    )  # band, its float64 copy, pooling
    if mode == "cached":  # queries are read from the kept map: no query band; the key prefix until the decode
        return held + fixed + max(key_band + key_prefix * g.batch * g.dim * g.elem, tile_b)
    q_band = g.batch * g.dim * _query_rows(g, min(tile, g.out_hw[0])) * g.image_hw[1] * g.elem
    return fixed + max(key_band, tile_b + q_band)


def _with_partial_cache(plan: Plan, g: Geometry) -> Plan:
    """A streamed plan keeps the encoding of as many leading pixels (whole chunks) as the cap's slack holds."""
    pixels = g.image_hw[0] * g.image_hw[1]
    per_pixel = g.batch * g.dim * g.elem
    slack = int(CACHE_SHARE * (plan.cap - plan.estimate))
    keep = min(pixels, max(0, slack // per_pixel) // plan.chunk * plan.chunk)
    if keep < plan.chunk:
        return plan
    return dataclasses.replace(plan, cache_pixels=keep, estimate=plan.estimate + keep * per_pixel)


def _with_key_prefix(plan: Plan, g: Geometry) -> Plan:
    """A cached plan pools its keys in bands of one cell row and keeps the key-branch activation of as
    many leading pixels (whole chunks) as 90 % of the slack holds: each of them skips the recomputation
    of the branch up to every GroupNorm (about 8 of the mode's 28 passes). Not for less than a quarter
    of the pixels: at 448² under 128 MiB a 3 % prefix saved nothing and, once freed, left the heap
    fragmented (peak 1.26x the cap, ``benchmarks/memory_cap.py --directions forward-out``)."""
    pixels = g.image_hw[0] * g.image_hw[1]
    rows = min(_key_row_choices(g))

    def est(key_prefix: int = 0) -> int:
        return _estimate(
            g, "cached", plan.chunk, rows, plan.tile, plan.fu_elements, plan.attn_tile, key_prefix, plan.workers
        )

    base = est()
    if base > plan.cap:
        return plan
    limit = base + int(CACHE_SHARE * (plan.cap - base))
    lo, hi = 0, pixels // plan.chunk  # the most chunks whose prefix keeps the estimate within ``limit``
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if est(mid * plan.chunk) <= limit else (lo, mid - 1)
    keep = min(pixels, lo * plan.chunk)
    if keep < max(plan.chunk, pixels // 4):  # a small prefix saves little; freeing it fragments the heap
        return plan
    return dataclasses.replace(plan, key_rows=rows, key_prefix=keep, estimate=est(keep))


def make_plan(g: Geometry, cap: int, tile_size: int | None, autograd: bool, workers: int = 1) -> Plan:
    """The fastest plan whose estimate fits ``cap``; a ValueError naming the minimum if none does.

    The plan for one worker thread (:func:`_plan_for_workers`) decides the mode, chunk, tile and
    feature-unification path; extra workers (up to ``workers``, halving) only come on top where
    the cap also holds their chunk scratch without changing any of those. So the worker count never
    changes which arithmetic runs, and the smallest cap a call needs is the one-worker minimum.
    """
    base = _plan_for_workers(g, cap, tile_size, autograd, 1)
    if autograd:  # the checkpointed modules run in the calling thread
        return base
    for n in sorted({workers >> s for s in range(workers.bit_length())} - {1}, reverse=True):  # e.g. 5, 2
        try:
            plan = _plan_for_workers(g, cap, tile_size, autograd, n)
        except ValueError:
            continue
        same = ("mode", "chunk", "tile", "attn_tile", "fu_elements")
        if all(getattr(plan, k) == getattr(base, k) for k in same):
            return plan
    return base


def _plan_for_workers(g: Geometry, cap: int, tile_size: int | None, autograd: bool, workers: int) -> Plan:
    """The fastest plan with ``workers`` threads' chunk scratch; a ValueError naming the minimum if none.

    Preference: mode (whole, resident, cached, streamed), then the largest chunk, then the largest
    tile up to about one window, then the largest key band. Without ``tile_size`` the attention runs in sub-tiles whose
    logits fit ``g.logits_budget`` (:meth:`Geometry.attention_side`), and (on the CPU) the decode
    bands of query rows stay within ``CPU_BAND_BYTES``. A streamed plan keeps the encoding of as many leading pixels as
    its slack allows, and may take a smaller decode tile (down to a quarter of the default) to keep more.
    """
    pixels = g.image_hw[0] * g.image_hw[1]
    chunks = sorted({min(c, pixels) for c in (CHUNK_PIXELS, 2048, 512, 64)}, reverse=True)
    fu = _fu_elements(g, cap // 2)
    small_fu = g.batch * g.dim * g.low_hw[0] * g.low_hw[1]
    default_tile = max(16, math.ceil(g.ratio * max(g.out_hw)))
    tiles = (
        [tile_size]
        if tile_size is not None
        else sorted({default_tile, *[max(1, default_tile >> s) for s in range(1, 12)]}, reverse=True)
    )
    if tile_size is None and g.logits_budget is not None:  # CPU: bands that stay out of DRAM's way
        row = g.batch * g.dim * g.out_hw[1] * g.elem
        tiles = [t for t in tiles if t * row <= CPU_BAND_BYTES] or tiles[-1:]
    modes: tuple[Mode, ...] = ("autograd",) if autograd else ("whole", "resident", "cached", "streamed")
    smallest: int | None = None
    for mode in modes:
        if mode == "streamed":
            best = _best_streamed(
                g,
                cap,
                [t for t in tiles if t >= min(tiles[0], max(8, default_tile // 4))],
                chunks,
                fu,
                tile_size is None,
                workers,
            )
            if best is not None:
                return best
        rows = [g.low_hw[0]] if mode in ("whole", "resident", "autograd") else _key_row_choices(g)
        for chunk in chunks:  # a small chunk slows every GEMM; a smaller tile costs less
            for t in tiles:
                for key_rows in rows:
                    for f in (fu, small_fu):
                        sub = t if tile_size is not None else g.attention_side(t)
                        est = _estimate(g, mode, chunk, key_rows, t, f, sub, workers=workers)
                        if est <= cap:
                            cached = pixels if mode == "cached" else 0
                            slots = min(MODE_MAPS[mode], g.out_slots)
                            plan = Plan(
                                mode, chunk, key_rows, int(t), f, est, cap, cached, int(sub), slots, workers=workers
                            )
                            if mode == "cached":
                                return _with_key_prefix(plan, g)
                            return _with_partial_cache(plan, g) if mode == "streamed" else plan
                        smallest = est if smallest is None else min(smallest, est)
    assert smallest is not None
    what = "with gradients " if autograd else ""
    raise ValueError(
        f"max_memory={cap:,} bytes ({cap / 2**20:.1f} MiB) is below the minimum this call needs {what}"
        f"({smallest:,} bytes = {smallest / 2**20:.1f} MiB for image {g.image_hw}, features {g.low_hw}x{g.channels}, "
        f"output {g.out_hw}, batch {g.batch}); raise max_memory or reduce the sizes"
    )


def _best_streamed(
    g: Geometry, cap: int, tiles: list[int], chunks: list[int], fu: int, split: bool = True, workers: int = 1
) -> Plan | None:
    """Among streamed plans with tiles of at least a quarter of the default: the largest chunk, then the
    largest partial encoding cache (recomputing the encoding costs more than a smaller tile),
    then the largest tile and key band."""
    best: tuple[tuple[int, int, int, int], Plan] | None = None
    for t in tiles:
        for chunk in chunks:
            for key_rows in _key_row_choices(g):
                sub = g.attention_side(t) if split else t
                est = _estimate(g, "streamed", chunk, key_rows, t, fu, sub, workers=workers)
                if est > cap:
                    continue
                plan = _with_partial_cache(
                    Plan("streamed", chunk, key_rows, int(t), fu, est, cap, attn_tile=int(sub), workers=workers), g
                )
                key = (chunk, plan.cache_pixels, t, key_rows)
                if best is None or key > best[0]:
                    best = (key, plan)
    return None if best is None else best[1]


def _key_row_choices(g: Geometry) -> list[int]:
    h = g.low_hw[0]
    return sorted({h, *[max(1, h >> s) for s in range(1, 12)]}, reverse=True)
