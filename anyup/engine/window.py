"""The locality rule: which low-resolution cells an output pixel may attend to (one helper)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


@dataclass(frozen=True)
class Window:
    """Per-row and per-column windows of an ``out_hw`` output over an ``low_hw`` feature grid."""

    out_hw: tuple[int, int]
    low_hw: tuple[int, int]
    row_start: torch.Tensor  # (H',) int64
    row_stop: torch.Tensor  # (H',)
    col_start: torch.Tensor  # (W',)
    col_stop: torch.Tensor  # (W',)

    @classmethod
    def build(cls, out_hw: tuple[int, int], low_hw: tuple[int, int], ratio: float, device=None) -> Window:
        r0, r1 = window_bounds(out_hw[0], low_hw[0], ratio, device)
        c0, c1 = window_bounds(out_hw[1], low_hw[1], ratio, device)
        return cls((int(out_hw[0]), int(out_hw[1])), (int(low_hw[0]), int(low_hw[1])), r0, r1, c0, c1)

    def reach(self, i0: int, i1: int, j0: int, j1: int) -> tuple[int, int, int, int]:
        """The rectangle of cells ``[ra, rb) x [ca, cb)`` that output rows ``[i0, i1)`` and columns ``[j0, j1)`` can see."""
        return int(self.row_start[i0]), int(self.row_stop[i1 - 1]), int(self.col_start[j0]), int(self.col_stop[j1 - 1])

    def mask(self, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
        """Boolean mask ((i1-i0)*(j1-j0), nr*nc) of the tile's queries over its reach (True = may attend)."""
        ra, rb, ca, cb = self.reach(i0, i1, j0, j1)
        dev = self.row_start.device
        rows, cols = torch.arange(ra, rb, device=dev), torch.arange(ca, cb, device=dev)
        row_ok = (rows >= self.row_start[i0:i1, None]) & (rows < self.row_stop[i0:i1, None])  # (th, nr)
        col_ok = (cols >= self.col_start[j0:j1, None]) & (cols < self.col_stop[j0:j1, None])  # (tw, nc)
        return (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape((i1 - i0) * (j1 - j0), -1)

    def dense_mask(self) -> torch.Tensor:
        """The reference's dense mask (H'*W', h*w): the whole output's reach is the whole grid.

        Memory O(H'W'hw): for tests and the dense reference only."""
        return self.mask(0, self.out_hw[0], 0, self.out_hw[1])

    def mean_cells(self) -> float:
        """Average number of cells inside one output pixel's window (the useful attention work)."""
        rows = (self.row_stop - self.row_start).double().mean().item()
        cols = (self.col_stop - self.col_start).double().mean().item()
        return rows * cols
