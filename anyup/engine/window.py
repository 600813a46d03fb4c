"""The locality rule: which low-resolution cells an output pixel may attend to, and how (one helper).

Two window edges (``AnyUpConfig.window_edge``):

* ``"hard"`` (the published weights): every cell the window touches is admitted with its full
  softmax share (a boolean mask). Where the window's edge crosses a cell border the weight of a
  whole cell appears at once: a step at the same place in every cell, seen as faint blocks that
  are locked to the low-res grid in flat regions.
* ``"soft"``: the same cells, but each cell's logit gets ``+ log(coverage)``, the fraction of the
  cell inside the window (rows times columns), so a cell's weight fades in as the window moves
  over it. The mask is then a float additive bias, ``-inf`` outside the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anyup._checks import ARCH_CHOICES

WINDOW_EDGES = ARCH_CHOICES["window_edge"]  # ("hard", "soft"): one list for the config check and the engine
MIN_COVERAGE = 1e-6  # soft edge: the smallest coverage a touched cell gets (log floor, about -13.8)


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


def window_coverage(out_len: int, low_len: int, ratio: float, device: torch.device | str | None = None) -> torch.Tensor:
    """Fraction of each low-res cell inside each output index's window: (out_len, low_len) float64 in [0, 1].

    The window of output index ``i`` spans ``clamp((i + 0.5) / out_len +- ratio, 0, 1) * low_len``
    in cell units; the hard window admits exactly the cells this interval touches (coverage > 0).
    """
    pos = (torch.arange(out_len, dtype=torch.float64, device=device) + 0.5) / out_len
    lo = ((pos - ratio).clamp(0, 1) * low_len)[:, None]
    hi = ((pos + ratio).clamp(0, 1) * low_len)[:, None]
    k = torch.arange(low_len, dtype=torch.float64, device=device)[None, :]
    return (torch.minimum(hi, k + 1) - torch.maximum(lo, k)).clamp(0, 1)


def window_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The window as an additive logit bias in ``dtype``: 0 inside and ``-inf`` outside for a bool
    mask (hard edge), a float bias (the soft edge's ``log(coverage)``) as it is."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.full((), float("-inf"), dtype=dtype, device=mask.device))


def _inside(start: torch.Tensor, stop: torch.Tensor, low_len: int) -> torch.Tensor:
    """(out_len, low_len) bool: low-res index ``k`` lies in ``[start, stop)`` of the output index."""
    k = torch.arange(low_len, device=start.device)[None, :]
    return (k >= start[:, None]) & (k < stop[:, None])


def _log_coverage(start: torch.Tensor, stop: torch.Tensor, cov: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(out_len, low_len) ``dtype``: ``log(coverage)`` inside ``[start, stop)``, ``-inf`` outside.

    The support is the hard window's (its float32 bounds), so both edges admit the same cells.
    """
    log_cov = cov.clamp_min(MIN_COVERAGE).log().to(dtype)
    return log_cov.masked_fill(~_inside(start, stop, cov.shape[1]), float("-inf"))


def check_edge(edge: str) -> str:
    """``window_edge``: one of :data:`WINDOW_EDGES`."""
    if edge not in WINDOW_EDGES:
        raise ValueError(f"window_edge must be one of {', '.join(map(repr, WINDOW_EDGES))}; got {edge!r}")
    return edge


@dataclass(frozen=True)
class Window:
    """Per-row and per-column windows of an ``out_hw`` output over an ``low_hw`` feature grid."""

    out_hw: tuple[int, int]
    low_hw: tuple[int, int]
    row_start: torch.Tensor  # (H',) int64
    row_stop: torch.Tensor  # (H',)
    col_start: torch.Tensor  # (W',)
    col_stop: torch.Tensor  # (W',)
    row_bias: torch.Tensor  # (H', h) the logit bias of every row over the grid rows: -inf outside the window,
    col_bias: torch.Tensor  # (W', w) inside 0 (hard edge) or log(coverage) (soft edge); the tile's bias is their sum
    soft: bool = False

    @classmethod
    def build(
        cls,
        out_hw: tuple[int, int],
        low_hw: tuple[int, int],
        ratio: float,
        device=None,
        edge: str = "hard",
        bias_dtype: torch.dtype = torch.float32,
    ) -> Window:
        """The windows of one decode; ``bias_dtype`` is the soft edge's bias dtype (the logits')."""
        r0, r1 = window_bounds(out_hw[0], low_hw[0], ratio, device)
        c0, c1 = window_bounds(out_hw[1], low_hw[1], ratio, device)
        out, low = (int(out_hw[0]), int(out_hw[1])), (int(low_hw[0]), int(low_hw[1]))
        if check_edge(edge) == "soft":
            row_bias = _log_coverage(r0, r1, window_coverage(out[0], low[0], ratio, device), bias_dtype)
            col_bias = _log_coverage(c0, c1, window_coverage(out[1], low[1], ratio, device), bias_dtype)
        else:
            row_bias = window_bias(_inside(r0, r1, low[0]), bias_dtype)
            col_bias = window_bias(_inside(c0, c1, low[1]), bias_dtype)
        return cls(out, low, r0, r1, c0, c1, row_bias, col_bias, edge == "soft")

    def reach(self, i0: int, i1: int, j0: int, j1: int) -> tuple[int, int, int, int]:
        """The rectangle of cells ``[ra, rb) x [ca, cb)`` that output rows ``[i0, i1)`` and columns ``[j0, j1)`` can see."""
        return int(self.row_start[i0]), int(self.row_stop[i1 - 1]), int(self.col_start[j0]), int(self.col_stop[j1 - 1])

    def mask(self, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
        """The tile's queries over its reach, ((i1-i0)*(j1-j0), nr*nc).

        Hard edge: bool (True = may attend). Soft edge: additive logit bias (``bias_dtype``) (``log(coverage)``,
        ``-inf`` = may not attend). The attention backends take either.
        """
        if self.soft:
            return self.bias(i0, i1, j0, j1)
        ra, rb, ca, cb = self.reach(i0, i1, j0, j1)
        dev = self.row_start.device
        rows, cols = torch.arange(ra, rb, device=dev), torch.arange(ca, cb, device=dev)
        row_ok = (rows >= self.row_start[i0:i1, None]) & (rows < self.row_stop[i0:i1, None])  # (th, nr)
        col_ok = (cols >= self.col_start[j0:j1, None]) & (cols < self.col_stop[j0:j1, None])  # (tw, nc)
        return (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape((i1 - i0) * (j1 - j0), -1)

    def bias(self, i0: int, i1: int, j0: int, j1: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tile's additive logit bias over its reach, ((i1-i0)*(j1-j0), nr*nc) in ``bias_dtype``, either edge.

        ``-inf`` where the query may not attend; otherwise 0 (hard edge) or ``log(coverage)`` (soft).
        One broadcast sum of the row and column tables: the decode's per-tile mask costs one pass
        over the tile's size instead of building a boolean mask and converting it. ``out``: a
        contiguous buffer of that shape and dtype to write it into (the decode's reused scratch).
        """
        ra, rb, ca, cb = self.reach(i0, i1, j0, j1)
        th, tw = i1 - i0, j1 - j0
        rows = self.row_bias[i0:i1, ra:rb, None]  # (th, nr, 1)
        cols = self.col_bias[j0:j1, None, ca:cb]  # (tw, 1, nc)
        four = None if out is None else out.view(th, tw, rb - ra, cb - ca)
        return torch.add(rows[:, None], cols[None], out=four).view(th * tw, -1)  # (th*tw, nr*nc)

    def pixel_mask(self, y: int, x: int) -> torch.Tensor:
        """The mask (or bias) of output pixel ``(y, x)`` over the whole grid: (1, h*w)."""
        ra, rb, ca, cb = self.reach(y, y + 1, x, x + 1)
        part = self.mask(y, y + 1, x, x + 1).view(rb - ra, cb - ca)
        fill = float("-inf") if self.soft else False
        full = torch.full(self.low_hw, fill, dtype=part.dtype, device=part.device)
        full[ra:rb, ca:cb] = part
        return full.view(1, -1)

    def dense_mask(self) -> torch.Tensor:
        """The reference's dense mask (H'*W', h*w): the whole output's reach is the whole grid.

        Memory O(H'W'hw): for tests and the dense reference only."""
        return self.mask(0, self.out_hw[0], 0, self.out_hw[1])

    def mean_cells(self) -> float:
        """Average number of cells inside one output pixel's window (the useful attention work)."""
        rows = (self.row_stop - self.row_start).double().mean().item()
        cols = (self.col_stop - self.col_start).double().mean().item()
        return rows * cols
