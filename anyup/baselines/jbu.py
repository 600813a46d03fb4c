"""Joint bilateral upsampling (Kopf et al., SIGGRAPH 2007).

For an output pixel ``p`` at continuous low-res position ``u(p)`` (pixel centres aligned, as
``align_corners=False``) and its nearest low-res cell ``c(p)``, the output is

    out(p) = sum_q f(q) * G_s(|u(p) - q|; sigma_s) * G_r(|I(p) - I_lr(q)|; sigma_r) / (same without f)

over the low-res cells ``q`` with ``|q - c(p)| <= radius`` per axis (cells outside the map are
dropped; distances in low-res cells). ``I`` is the guidance at the output size and ``I_lr`` the
guidance downsampled (antialiased) to the feature grid. Each output vector is a convex
combination of input vectors.
Memory stays bounded: the output is produced in bands of low-res rows sized from ``max_memory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from anyup.baselines.base import BaselineUpsampler
from anyup.baselines.guidance import make_guide, resize


@dataclass
class JBUConfig:
    radius: int = 2  # window half-size in low-res cells: (2*radius+1)^2 neighbours
    sigma_spatial: float = 1.0  # Gaussian width over low-res cell distance
    sigma_range: float = 0.1  # Gaussian width over guidance distance; math.inf = spatial filter only
    guidance: str = "rgb"  # "rgb" ([0,1]), "lab" (Lab/100), "grey", "normalized" (ImageNet-normalised)
    max_memory: int = 256 * 2**20  # bytes of temporaries per band of low-res rows (output not counted)


@dataclass
class _Axis:
    """Index tables along one axis; output pixels are grouped by their nearest low-res cell."""

    P: int  # padded block length: most output pixels sharing one low-res cell
    table: torch.Tensor  # (n, P) output index of each block slot (padding slots clamped to a valid index)
    to_padded: torch.Tensor  # (N,) slot index (cell * P + slot) of every output index
    neighbours: torch.Tensor  # (n, K) clamped neighbour cell of every cell
    logw: torch.Tensor  # (n, K, P) spatial log-weight; -inf for neighbours outside the map
    start: torch.Tensor  # (n,) first output index of each cell's block
    count: torch.Tensor  # (n,) number of output pixels in each cell's block


def _axis(out_len: int, in_len: int, radius: int, sigma: float, device: torch.device, dtype: torch.dtype) -> _Axis:
    pos = (torch.arange(out_len, device=device, dtype=dtype) + 0.5) * (in_len / out_len) - 0.5  # (N,)
    cell = torch.floor(pos + 0.5).clamp(0, in_len - 1).long()  # nearest low-res cell, (N,)
    count = torch.bincount(cell, minlength=in_len)  # (n,)
    P = int(count.max())
    start = torch.cumsum(count, 0) - count  # (n,)
    slot = torch.arange(out_len, device=device) - start[cell]
    slots = torch.arange(P, device=device)
    table = (start.view(-1, 1) + slots.view(1, -1)).clamp(max=out_len - 1)  # (n, P)
    q = torch.arange(in_len, device=device).view(-1, 1) + torch.arange(-radius, radius + 1, device=device)  # (n, K)
    inside = (q >= 0) & (q < in_len)
    logw = -((pos[table].unsqueeze(1) - q.unsqueeze(2).to(dtype)) ** 2) / (2 * sigma**2)  # (n, K, P)
    logw = logw.masked_fill(~inside.unsqueeze(2), -math.inf)
    return _Axis(P, table, cell * P + slot, q.clamp(0, in_len - 1), logw, start, count)


def joint_bilateral_upsample(
    guide_hr: torch.Tensor,
    guide_lr: torch.Tensor,
    features: torch.Tensor,
    size: tuple[int, int],
    radius: int = 2,
    sigma_spatial: float = 1.0,
    sigma_range: float = 0.1,
    max_memory: int = 256 * 2**20,
) -> torch.Tensor:
    """Joint bilateral upsampling of ``features`` ``(B, C, h, w)`` to ``(B, C, H', W')``.

    Output pixels that share their nearest low-res cell also share their (2r+1)^2 neighbours,
    so each cell's block of output pixels is one small matrix product
    ``(C, K^2) @ (K^2, pixels)``; blocks are processed in bands of low-res rows.

    Args:
        guide_hr: guidance at the output size, ``(B, G, H', W')``.
        guide_lr: guidance on the feature grid, ``(B, G, h, w)``.
        features: low-res features, float32 or float64 (compute dtype).
        size: ``(H', W')``.
    """
    if radius < 0 or sigma_spatial <= 0 or not sigma_range > 0:
        raise ValueError(
            f"need radius >= 0, sigma_spatial > 0, sigma_range > 0; got {radius}, {sigma_spatial}, {sigma_range}"
        )
    B, C, h, w = features.shape
    H, W = size
    G = guide_hr.shape[1]
    dev, dt = features.device, features.dtype
    ay = _axis(H, h, radius, sigma_spatial, dev, dt)
    ax = _axis(W, w, radius, sigma_spatial, dev, dt)
    K = 2 * radius + 1
    inv_two_var = 0.0 if math.isinf(sigma_range) else 1.0 / (2 * sigma_range**2)

    # Guidance of every block slot and of every cell's neighbours, columns gathered once.
    g_cols = guide_hr[:, :, :, ax.table.flatten()]  # (B, G, H', w*Px)
    gl_cols = guide_lr[:, :, :, ax.neighbours.flatten()]  # (B, G, h, w*K)
    f_cols = features[:, :, :, ax.neighbours.flatten()]  # (B, C, h, w*K)
    out = features.new_empty(B, C, H, W)

    cells_per_row = w * K * K * ay.P * ax.P * (G + 3) + 2 * C * w * (K * K + ay.P * ax.P)
    band = max(1, min(h, max_memory // max(cells_per_row * B * features.element_size(), 1)))
    for c0 in range(0, h, band):
        c1 = min(h, c0 + band)
        n = c1 - c0
        rows = ay.table[c0:c1].flatten()  # (n*Py,)
        nb = ay.neighbours[c0:c1].flatten()  # (n*K,)
        g = g_cols[:, :, rows].view(B, G, n, ay.P, w, ax.P)  # (B, G, n, Py, w, Px)
        gq = gl_cols[:, :, nb].view(B, G, n, K, w, K)  # (B, G, n, Ky, w, Kx)
        logw = ay.logw[c0:c1].view(1, n, 1, K, 1, ay.P, 1) + ax.logw.view(1, 1, w, 1, K, 1, ax.P)
        if inv_two_var:
            # (B, G, n, w, Ky, Kx, Py, Px): every slot against every neighbour of its cell
            diff = g.permute(0, 1, 2, 4, 3, 5).unsqueeze(4).unsqueeze(4) - gq.permute(0, 1, 2, 4, 3, 5).unsqueeze(
                -1
            ).unsqueeze(-1)
            logw = logw - diff.pow(2).sum(1) * inv_two_var  # (B, n, w, Ky, Kx, Py, Px)
        logw = logw.expand(B, n, w, K, K, ay.P, ax.P).reshape(B, n * w, K * K, ay.P * ax.P)
        weights = torch.softmax(logw, dim=2)  # normalised over the window; -inf (outside) -> 0
        fn = f_cols[:, :, nb].view(B, C, n, K, w, K).permute(0, 2, 4, 1, 3, 5)  # (B, n, w, C, Ky, Kx)
        fn = fn.reshape(B, n * w, C, K * K)
        blocks = torch.matmul(fn, weights)  # (B, n*w, C, Py*Px)
        blocks = blocks.view(B, n, w, C, ay.P, ax.P).permute(0, 3, 1, 4, 2, 5).reshape(B, C, n * ay.P, w * ax.P)
        r0, r1 = int(ay.start[c0]), int(ay.start[c1 - 1] + ay.count[c1 - 1])
        if r1 > r0:
            keep_rows = ay.to_padded[r0:r1] - c0 * ay.P
            if keep_rows.numel() != blocks.shape[2]:  # drop padding slots (advanced indexing: much
                blocks = blocks[:, :, keep_rows]  # faster than index_select on CPU)
            if ax.to_padded.numel() != blocks.shape[3]:
                blocks = blocks[:, :, :, ax.to_padded]
            out[:, :, r0:r1] = blocks
    return out


class JointBilateralUpsampler(BaselineUpsampler):
    """Classic JBU guided by the image (see module docstring)."""

    def __init__(self, config: JBUConfig | None = None) -> None:
        super().__init__()
        self.config = config or JBUConfig()
        c = self.config
        if c.radius < 0 or c.sigma_spatial <= 0 or not c.sigma_range > 0:
            raise ValueError(f"JBUConfig needs radius >= 0, sigma_spatial > 0 and sigma_range > 0, got {c}")
        make_guide(torch.zeros(1, 3, 1, 1), c.guidance, torch.float32)  # validates the guidance name

    def upsample(self, image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        c = self.config
        dt = torch.float64 if features.dtype == torch.float64 else torch.float32
        guide = make_guide(image, c.guidance, dt)  # (B, G, H, W)
        guide_hr = resize(guide, size)  # (B, G, H', W')
        guide_lr = resize(guide, (features.shape[-2], features.shape[-1]))  # (B, G, h, w)
        return joint_bilateral_upsample(
            guide_hr, guide_lr, features.to(dt), size, c.radius, c.sigma_spatial, c.sigma_range, c.max_memory
        )
