"""Feature unification: map features with any number of channels to a fixed width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anyup.layers._func import functorch_active
from anyup.layers.norms import acc_dtype

BAND_ELEMENTS = 1 << 21  # responses of one chunk of the exact path (8 MiB in float32): stays in cache
MIN_CHUNK = 64  # positions: shorter chunks change the bits of PyTorch's softmax/mean kernels


class FeatureUnification(nn.Module):
    """Encoder-agnostic first layer: any ``C >= 1`` channels in, ``K`` channels out.

    Every input channel is convolved with each of the ``K`` learned ``k x k`` filters (``basis``,
    zero padding, border positions divided by the number of in-image taps so they are means). That
    gives ``C * K`` responses with flat index ``c * K + k``.

    Note on indexing: the reference implementation (and so the published weights) *reinterprets*
    this flat axis as a ``(K, C)`` grid in row-major order, i.e. flat index ``a * C + b``, takes the
    softmax over ``a`` and the mean over ``b``. For ``C > 1`` this differs from the paper's formula
    (softmax over filters of one channel, mean over channels); we reproduce the reference exactly.

    The computation runs in bands of rows (or, under a tight memory cap, chunks of ``b``), so memory
    is ``O(K * C * w)`` per band, never ``O(K * C * h * w)``.

    Input ``(B, C, h, w)`` float (any dtype; softmax in float32); output ``(B, K, h, w)`` in the
    input dtype, non-negative, summing to 1 over channels at every position.
    """

    def __init__(self, out_channels: int = 128, kernel_size: int = 5) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.basis = nn.Parameter(torch.randn(out_channels, 1, kernel_size, kernel_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, K, h, w), all ``C * K`` responses at once."""
        return self.unify(features)

    def unify(self, features: torch.Tensor, max_chunk_elements: int = 1 << 62) -> torch.Tensor:
        """As :meth:`forward`, with at most ``max_chunk_elements`` responses alive at once.

        The responses are computed in chunks of positions (at most :data:`BAND_ELEMENTS`
        responses, so they stay in cache; at least :data:`MIN_CHUNK` positions, the tail merged
        into the last chunk): each chunk's ``k x k`` patches are unfolded from the rows it spans and
        multiplied by the basis as one batched GEMM, then the softmax and the mean run on it. Every
        position gets the reference's arithmetic and, on PyTorch's CPU kernels, its exact bits
        (tested). Only when :data:`MIN_CHUNK` positions of responses exceed ``max_chunk_elements``
        are the grid's columns processed in chunks instead (same maths, another summation order)."""
        b, c, h, w = features.shape
        k = self.out_channels
        per_position = b * c * k
        if per_position * min(h * w, MIN_CHUNK) > max_chunk_elements:
            return self._unify_columns(features, max_chunk_elements)
        ks, p = self.kernel_size, self.kernel_size // 2
        acc = acc_dtype(features)
        taps = self._taps(h, w, acc, features.device).view(1, 1, h * w)  # (1, 1, h*w)
        x = F.pad(features, (p, p, p, p)).reshape(b * c, 1, h + 2 * p, w + 2 * p)  # zeros outside
        basis = self.basis.to(features.dtype).view(k, ks * ks)  # (K, ks*ks)
        n = h * w
        step = max(MIN_CHUNK, min(max_chunk_elements, BAND_ELEMENTS) // per_position // MIN_CHUNK * MIN_CHUNK)
        starts = list(range(0, n, step))
        if len(starts) > 1 and n - starts[-1] < MIN_CHUNK:
            starts.pop()  # a short tail joins the previous chunk
        # one preallocated map, each chunk's mean written into it; under torch.func (which cannot write
        # its tensors into one made outside it) the chunks are concatenated instead
        out = None if functorch_active() else torch.empty(b, k, n, dtype=acc, device=features.device)
        pieces = []
        for i, p0 in enumerate(starts):
            p1 = starts[i + 1] if i + 1 < len(starts) else n
            r0, r1 = p0 // w, (p1 - 1) // w + 1  # feature rows the chunk spans
            patches = F.unfold(x[:, :, r0 : r1 + 2 * p], ks)[:, :, p0 - r0 * w : p1 - r0 * w]  # (B*C, ks*ks, m)
            resp = torch.bmm(basis.expand(b * c, k, ks * ks), patches).to(acc)  # (B*C, K, m), flat c*K + k
            resp.div_(taps[..., p0:p1])
            grid = resp.view(b, k, c, -1).softmax(dim=1)  # (K, C) grid, softmax over a
            if out is None:
                pieces.append(grid.mean(dim=2))  # (B, K, m)
            else:
                out[:, :, p0:p1] = grid.mean(dim=2)  # (B, K, m)
        if out is None:
            out = torch.cat(pieces, dim=2)  # (B, K, h*w)
        return out.view(b, k, h, w).to(features.dtype)  # (B, K, h, w), float32 as the reference

    def _taps(self, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Number of in-image taps of every position: (1, 1, h, w)."""
        ks, p = self.kernel_size, self.kernel_size // 2
        ones = torch.ones(1, 1, h, w, dtype=dtype, device=device)
        return F.conv2d(F.pad(ones, (p, p, p, p)), torch.ones(1, 1, ks, ks, dtype=dtype, device=device))

    def _unify_columns(self, features: torch.Tensor, max_chunk_elements: int) -> torch.Tensor:
        """The grid's columns in chunks of at most ``max_chunk_elements`` responses (float64 sum)."""
        b, c, h, w = features.shape
        k, p = self.out_channels, self.kernel_size // 2
        acc = acc_dtype(features)
        taps = self._taps(h, w, acc, features.device)  # (1, 1, h, w)
        x = F.pad(features, (p, p, p, p))  # (B, C, h+2p, w+2p), zeros outside
        basis = self.basis.to(features.dtype)
        # Column b of the (K, C) grid holds flat indices a*C + b for a in [0, K).
        chunk = max(1, min(c, max_chunk_elements // max(1, b * k * h * w)))
        total = torch.zeros(b, k, h, w, dtype=torch.float64, device=features.device)  # float64: chunking-independent
        a_idx = torch.arange(k, device=features.device).view(k, 1)  # (K, 1)
        for b0 in range(0, c, chunk):
            cols = torch.arange(b0, min(c, b0 + chunk), device=features.device).view(1, -1)  # (1, nb)
            flat = (a_idx * c + cols).reshape(-1)  # (K*nb,) row-major over (a, b)
            chan, filt = flat // k, flat % k  # conv channel and filter of each flat index
            inp = x.index_select(1, chan)  # (B, K*nb, h+2p, w+2p)
            resp = F.conv2d(inp, basis.index_select(0, filt), groups=flat.numel())  # (B, K*nb, h, w)
            resp = resp.to(acc) / taps
            resp = resp.view(b, k, -1, h, w).softmax(dim=1)  # (B, K, nb, h, w), softmax over a
            total += resp.sum(dim=2, dtype=torch.float64)
        return (total / c).to(features.dtype)  # (B, K, h, w)
