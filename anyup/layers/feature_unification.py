"""Feature unification: map features with any number of channels to a fixed width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anyup.layers.norms import acc_dtype


class FeatureUnification(nn.Module):
    """Encoder-agnostic first layer: any ``C >= 1`` channels in, ``K`` channels out.

    Every input channel is convolved with each of the ``K`` learned ``k x k`` filters (``basis``,
    zero padding, border positions divided by the number of in-image taps so they are means). That
    gives ``C * K`` responses with flat index ``c * K + k``.

    Note on indexing: the reference implementation (and so the published weights) *reinterprets*
    this flat axis as a ``(K, C)`` grid in row-major order, i.e. flat index ``a * C + b``, takes the
    softmax over ``a`` and the mean over ``b``. For ``C > 1`` this differs from the paper's formula
    (softmax over filters of one channel, mean over channels); we reproduce the reference exactly.

    The computation is streamed over chunks of ``b`` so memory is ``O(K * chunk * h * w)``, never
    ``O(K * C * h * w)``.

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

        When all of them fit, one conv computes every response and the ``(K, C)`` grid is a plain
        view of it; otherwise the grid's columns are processed in chunks (same result)."""
        b, c, h, w = features.shape
        k, ks = self.out_channels, self.kernel_size
        p = ks // 2
        acc = acc_dtype(features)
        ones = torch.ones(1, 1, h, w, dtype=acc, device=features.device)
        taps = F.conv2d(
            F.pad(ones, (p, p, p, p)), torch.ones(1, 1, ks, ks, dtype=acc, device=features.device)
        )  # (1,1,h,w)
        x = F.pad(features, (p, p, p, p))  # (B, C, h+2p, w+2p), zeros outside
        basis = self.basis.to(features.dtype)
        if b * c * k * h * w <= max_chunk_elements:
            resp = F.conv2d(x.reshape(b * c, 1, h + 2 * p, w + 2 * p), basis)  # (B*C, K, h, w), flat c*K + k
            resp = resp.to(acc).div_(taps).view(b, k, c, h, w).softmax(dim=1)  # (K, C) grid, softmax over a
            return resp.mean(dim=2).to(features.dtype)  # (B, K, h, w), float32 as the reference
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
