"""Adaptive average pooling that can be evaluated on a band of rows.

PyTorch's ``adaptive_avg_pool2d`` maps output index ``i`` of ``O`` to the input range
``[floor(i*L/O), ceil((i+1)*L/O))``. :func:`adaptive_avg_pool_1d` uses the same ranges along one
axis, expressed as a small ``(O, L)`` averaging matrix, so an output band can be produced from
the matching input band alone, for down- and up-sampling alike.
"""

from __future__ import annotations

import torch

from anyup.layers.norms import acc_dtype


def pool_ranges(length: int, out: int) -> tuple[list[int], list[int]]:
    """Start (inclusive) and end (exclusive) input index of every adaptive-pooling output cell."""
    starts = [(i * length) // out for i in range(out)]
    ends = [-((-(i + 1) * length) // out) for i in range(out)]
    return starts, ends


def pooling_matrix(
    length: int, out: int, out_start: int, out_stop: int, offset: int, span: int, dtype, device
) -> torch.Tensor:
    """Rows ``[out_start, out_stop)`` of the ``(out, length)`` averaging matrix, columns ``[offset, offset+span)``."""
    starts, ends = pool_ranges(length, out)
    st = torch.tensor(starts[out_start:out_stop], device=device).view(-1, 1) - offset
    en = torch.tensor(ends[out_start:out_stop], device=device).view(-1, 1) - offset
    if out_stop > out_start and (int(st.min()) < 0 or int(en.max()) > span):
        raise ValueError("adaptive_avg_pool_1d: the slice does not cover the requested output cells")
    idx = torch.arange(span, device=device).view(1, -1)
    inside = (idx >= st) & (idx < en)  # (n_out, span)
    return inside.to(dtype) / (en - st).to(dtype)


def adaptive_avg_pool_2d(
    x: torch.Tensor,
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    rows: tuple[int, int] | None = None,
    row_offset: int = 0,
) -> torch.Tensor:
    """``adaptive_avg_pool2d`` of a band of rows of a larger map.

    ``x`` (B, C, n, W) holds rows ``[row_offset, row_offset + n)`` of a map of size ``in_hw``;
    returns output rows ``rows = (start, stop)`` (default all) of the pooled ``out_hw`` map,
    (B, C, stop - start, W'). The band must contain every input row those outputs cover.
    Two small matmuls in the input's layout (no copy): over the rows then the columns of each
    channel for channels-first input, over a (B, n, W, C) view for channels-last input (the output
    keeps the layout). Accumulates in float32 (float64 stays).
    """
    (hi, wi), (ho, wo) = in_hw, out_hw
    r0, r1 = rows if rows is not None else (0, ho)
    b, c, n, w = x.shape
    acc = acc_dtype(x)
    if x.dim() == 4 and c > 1 and x.is_contiguous(memory_format=torch.channels_last):
        return _pool_channels_last(x, in_hw, out_hw, (r0, r1), row_offset)
    y = x.to(acc)
    if hi == ho:
        y = y[:, :, r0 - row_offset : r1 - row_offset]
    else:
        ph = pooling_matrix(hi, ho, r0, r1, row_offset, n, acc, x.device)  # (r1-r0, n)
        y = torch.matmul(ph, y)  # (B, C, r, W)
    if wi != wo:
        pw = pooling_matrix(wi, wo, 0, wo, 0, wi, acc, x.device)  # (W', W)
        y = torch.matmul(y, pw.t())  # (B, C, r, W')
    return y.to(x.dtype)


def _pool_channels_last(
    x: torch.Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int], rows: tuple[int, int], row_offset: int
) -> torch.Tensor:
    """:func:`adaptive_avg_pool_2d` on a channels-last (B, C, n, W) input; channels-last output."""
    (hi, wi), (ho, wo) = in_hw, out_hw
    r0, r1 = rows
    b, c, n, w = x.shape
    acc = acc_dtype(x)
    xl = x.permute(0, 2, 3, 1)  # (B, n, W, C); free for channels-last input
    if hi == ho:
        xl = xl[:, r0 - row_offset : r1 - row_offset]
    else:
        ph = pooling_matrix(hi, ho, r0, r1, row_offset, n, acc, x.device)  # (r1-r0, n)
        xl = torch.matmul(ph, xl.to(acc).reshape(b, n, w * c)).view(b, r1 - r0, w, c)  # (B, r, W, C)
    if wi != wo:
        pw = pooling_matrix(wi, wo, 0, wo, 0, wi, acc, x.device)  # (W', W)
        xl = torch.matmul(pw, xl.to(acc).reshape(b * (r1 - r0), w, c)).view(b, r1 - r0, wo, c)  # (B, r, W', C)
    return xl.to(x.dtype).permute(0, 3, 1, 2)  # (B, C, r, W'), channels-last strides
