"""Adaptive average pooling that can be evaluated on a band of rows.

PyTorch's ``adaptive_avg_pool2d`` maps output index ``i`` of ``O`` to the input range
``[floor(i*L/O), ceil((i+1)*L/O))``. The helpers below use the same ranges but only gather the
rows (or columns) each output needs, so an output band can be produced from the matching input
band alone, for down- and up-sampling alike.
"""

from __future__ import annotations

import torch

from anyup.layers.norms import acc_dtype


def pool_ranges(length: int, out: int) -> tuple[list[int], list[int]]:
    """Start (inclusive) and end (exclusive) input index of every adaptive-pooling output cell."""
    starts = [(i * length) // out for i in range(out)]
    ends = [-((-(i + 1) * length) // out) for i in range(out)]
    return starts, ends


def adaptive_avg_pool_1d(
    x: torch.Tensor, dim: int, length: int, out: int, out_start: int = 0, out_stop: int | None = None, offset: int = 0
) -> torch.Tensor:
    """Adaptive mean pooling along ``dim`` of a slice of a longer axis.

    ``x`` holds input indices ``[offset, offset + x.shape[dim])`` of an axis of ``length``; the
    result holds output cells ``[out_start, out_stop)`` of ``out`` cells. The slice must contain
    every input index those cells cover. Sums are accumulated in float32.
    """
    out_stop = out if out_stop is None else out_stop
    starts, ends = pool_ranges(length, out)
    starts, ends = starts[out_start:out_stop], ends[out_start:out_stop]
    if starts and (starts[0] < offset or ends[-1] > offset + x.shape[dim]):
        raise ValueError("adaptive_avg_pool_1d: the slice does not cover the requested output cells")
    if length == out:  # identity
        return x.narrow(dim, out_start - offset, out_stop - out_start)
    dev = x.device
    st = torch.tensor(starts, device=dev) - offset
    en = torch.tensor(ends, device=dev) - offset
    span = int((en - st).max().item())
    total = None
    for t in range(span):
        idx = torch.minimum(st + t, en - 1)
        w = (st + t < en).to(acc_dtype(x))
        shape = [1] * x.ndim
        shape[dim] = -1
        term = x.index_select(dim, idx).to(acc_dtype(x)) * w.view(shape)
        total = term if total is None else total + term
    count = (en - st).to(acc_dtype(x))
    shape = [1] * x.ndim
    shape[dim] = -1
    return (total / count.view(shape)).to(x.dtype)
