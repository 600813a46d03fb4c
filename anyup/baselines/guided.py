"""Guided filter (He, Sun and Tang, ECCV 2010 / TPAMI 2013) applied to bilinearly upsampled features.

Per window ``w_k`` of side ``2r+1`` the output is locally linear in the guide ``I``:
``q = a_k * I + b_k`` with ``a_k = cov(I, p) / (var(I) + eps)``, ``b_k = mean(p) - a_k * mean(I)``;
the coefficients are averaged over all windows covering a pixel. With a colour guide ``a_k`` is a
3-vector and ``var(I)`` a 3x3 covariance. Box means use cumulative sums (O(1) per pixel in ``r``)
and divide by the number of in-image pixels, so borders are means too. Not a convex combination:
``a`` can be negative, so outputs may leave the input's range near strong guide edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from anyup.baselines.base import BaselineUpsampler
from anyup.baselines.guidance import make_guide, resize
from anyup.baselines.interpolate import interpolate_features


@dataclass
class GuidedFilterConfig:
    radius: int | None = None  # window half-size in output pixels; None = one low-res cell (ceil(H'/h))
    eps: float = 1e-3  # regularisation, in guide units squared (guide values in [0, 1])
    guide: str = "grey"  # "grey" (1 channel) or "rgb" (colour guide, 3x3 covariance)
    subsample: int = 4  # fast guided filter: a, b computed at 1/subsample resolution (He & Sun 2015); 1 = exact
    max_memory: int = 256 * 2**20  # bytes of temporaries per chunk of channels (output not counted)


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the ``(2r+1)^2`` window clipped to the image, ``(..., H, W)`` -> same shape.

    Uses cumulative sums along each axis, so the cost does not depend on ``radius``.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if radius == 0:
        return x
    out = x
    for dim in (-2, -1):
        n = out.shape[dim]
        c = torch.cumsum(out, dim=dim)
        # prefix sums padded with r+1 zeros in front and r copies of the total behind:
        # window sum at i = P[i + 2r + 1] - P[i] with P the padded prefix sums.
        front = torch.zeros_like(c.narrow(dim, 0, 1)).expand(
            *[radius + 1 if d == dim % c.ndim else -1 for d in range(c.ndim)]
        )
        back = c.narrow(dim, n - 1, 1).expand(*[radius if d == dim % c.ndim else -1 for d in range(c.ndim)])
        p = torch.cat([front, c, back], dim=dim)  # (..., n + 2r + 1)
        total = p.narrow(dim, 2 * radius + 1, n) - p.narrow(dim, 0, n)
        idx = torch.arange(n, device=x.device)
        count = ((idx + radius + 1).clamp(max=n) - (idx - radius).clamp(min=0)).to(x.dtype)
        shape = [1] * out.ndim
        shape[dim] = n
        out = total / count.view(shape)
    return out


def guided_filter(
    guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float, max_memory: int = 256 * 2**20
) -> torch.Tensor:
    """Guided filter of ``src`` ``(B, C, H, W)`` with ``guide`` ``(B, 1, H, W)`` or ``(B, 3, H, W)``.

    Returns ``(B, C, H, W)`` in ``src``'s dtype. Channels are processed in chunks sized from
    ``max_memory``; the guide statistics are computed once.
    """
    return fast_guided_filter(guide, src, radius, eps, 1, max_memory)


def fast_guided_filter(
    guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float, subsample: int = 1, max_memory: int = 256 * 2**20
) -> torch.Tensor:
    """Guided filter with coefficients computed at ``1/subsample`` resolution (He & Sun 2015).

    ``subsample=1`` is the exact guided filter. Otherwise guide and source are downsampled
    (antialiased), ``a`` and ``b`` are computed there with radius ``round(r/subsample)``, their
    window means are upsampled bilinearly and ``q = mean_a * I + mean_b`` at full size.
    ``src`` may also be given directly at that coefficient resolution ``(ceil(H/s), ceil(W/s))``
    (saves upsampling many channels to full size only to shrink them again); the output is
    always at the guide's size ``(B, C, H, W)``.
    """
    if subsample < 1 or radius < 0:
        raise ValueError(f"need subsample >= 1 and radius >= 0, got subsample={subsample}, radius={radius}")
    H, W = guide.shape[-2:]
    small = (max(1, math.ceil(H / subsample)), max(1, math.ceil(W / subsample)))
    if (
        guide.ndim != 4
        or src.ndim != 4
        or guide.shape[1] not in (1, 3)
        or guide.shape[0] != src.shape[0]
        or src.shape[-2:] not in (guide.shape[-2:], torch.Size(small))
    ):
        raise ValueError(f"guide must be (B, 1|3, H, W) matching src {tuple(src.shape)}, got {tuple(guide.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    B, C = src.shape[:2]
    G = guide.shape[1]
    full = guide.to(src.dtype)
    r = radius if subsample == 1 else max(1, round(radius / subsample))
    g = resize(full, small)  # (B, G, h, w); identity when subsample == 1
    mean_i = box_filter(g, r)  # (B, G, h, w)
    if G == 1:
        inv = 1.0 / (box_filter(g * g, r) - mean_i**2 + eps)  # (B, 1, h, w)
    else:
        cov_ii = box_filter((g.unsqueeze(1) * g.unsqueeze(2)).flatten(1, 2), r).view(
            B, 3, 3, *small
        ) - mean_i.unsqueeze(1) * mean_i.unsqueeze(2)
        eye = torch.eye(3, dtype=src.dtype, device=src.device).view(1, 3, 3, 1, 1)
        inv = torch.linalg.inv((cov_ii + eps * eye).permute(0, 3, 4, 1, 2))  # (B, h, w, 3, 3), SPD input

    out = src.new_empty(B, C, H, W)
    per_channel = B * H * W * src.element_size() * (4 + 4 * G)
    chunk = max(1, min(C, max_memory // max(per_channel, 1)))
    for c0 in range(0, C, chunk):
        p = resize(src[:, c0 : c0 + chunk], small)  # (B, c, h, w)
        mean_p = box_filter(p, r)
        if G == 1:
            a = (box_filter(g * p, r) - mean_i * mean_p) * inv  # (B, c, h, w)
            b = mean_p - a * mean_i
            out[:, c0 : c0 + chunk] = resize(box_filter(a, r), (H, W)) * full + resize(box_filter(b, r), (H, W))
        else:
            corr = box_filter((g.unsqueeze(1) * p.unsqueeze(2)).flatten(1, 2), r)
            cov_ip = corr.view(B, -1, 3, *small) - mean_i.unsqueeze(1) * mean_p.unsqueeze(2)  # (B, c, 3, h, w)
            a = torch.einsum("bhwij,bcjhw->bcihw", inv, cov_ip)  # (B, c, 3, h, w)
            b = mean_p - (a * mean_i.unsqueeze(1)).sum(2)  # (B, c, h, w)
            mean_a = resize(box_filter(a.flatten(1, 2), r), (H, W)).view(B, -1, 3, H, W)
            out[:, c0 : c0 + chunk] = (mean_a * full.unsqueeze(1)).sum(2) + resize(box_filter(b, r), (H, W))
    return out


class GuidedFilterUpsampler(BaselineUpsampler):
    """Bilinear upsampling of the features, then a guided filter with the (grey or colour) image."""

    def __init__(self, config: GuidedFilterConfig | None = None) -> None:
        super().__init__()
        self.config = config or GuidedFilterConfig()
        c = self.config
        if c.guide not in ("grey", "rgb"):
            raise ValueError(f"GuidedFilterConfig.guide must be 'grey' or 'rgb', got {c.guide!r}")
        if not c.eps > 0 or c.subsample < 1 or (c.radius is not None and c.radius < 0):
            raise ValueError(f"GuidedFilterConfig needs eps > 0, subsample >= 1, radius >= 0 or None; got {c}")

    def upsample(self, image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        c = self.config
        dt = torch.float64 if features.dtype == torch.float64 else torch.float32
        radius = c.radius
        if radius is None:
            radius = max(1, math.ceil(max(size[0] / features.shape[-2], size[1] / features.shape[-1])))
        # bilinear upsampling straight to the coefficient resolution (== size when subsample is 1)
        small = (max(1, math.ceil(size[0] / c.subsample)), max(1, math.ceil(size[1] / c.subsample)))
        src = interpolate_features(features.to(dt), small, "bilinear")  # (B, C, H'/s, W'/s)
        guide = resize(make_guide(image, c.guide, dt), size)  # (B, 1|3, H', W')
        return fast_guided_filter(guide, src, radius, c.eps, c.subsample, c.max_memory)
