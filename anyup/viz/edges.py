"""How well a feature map's edges line up with the image's edges (a diagnostic for upsamplers).

``edge_alignment`` is the Pearson correlation, over pixels, between the gradient magnitude of the
features (summed over channels) and the gradient magnitude of the image (grey). Bilinear upsampling
spreads feature changes over a whole low-res cell, so its gradients ignore image edges; an
image-guided upsampler puts them on the edges, which raises the correlation.

Memory: both functions stream over bands of ``band_rows`` rows and accumulate the correlation's
sums in float64, so their working memory is about ``C x band_rows x W`` floats whatever the map's
height (a 2000x3000x112 map needs ~170 MB per 128-row band, not several copies of the map).
:func:`bilinear_edge_alignment` builds the bilinear map band by band from the low-res features
(bilinear upsampling is separable), so the full-size bilinear map never exists.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from anyup._checks import one_map

DEFAULT_BAND_ROWS = 128


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) or (1, C, H, W) -> (H-1, W-1) magnitude of forward differences, summed over channels."""
    x = x.detach().float()
    if x.ndim == 4:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"expected (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    dy = x[:, 1:, :-1] - x[:, :-1, :-1]  # (C, H-1, W-1)
    dx = x[:, :-1, 1:] - x[:, :-1, :-1]
    return (dy.pow(2) + dx.pow(2)).sum(0).sqrt()


def _correlation(rows: Callable[[int, int], torch.Tensor], image: torch.Tensor, band_rows: int) -> float:
    """Pearson correlation of feature- and image-gradient magnitudes, over bands of gradient rows.

    ``rows(y0, y1)`` returns feature rows ``[y0, y1)`` as (C, y1 - y0, W); ``image`` is (3, H, W).
    """
    if band_rows < 1:
        raise ValueError(f"band_rows must be >= 1, got {band_rows}")
    h = image.shape[-2]
    sums = torch.zeros(6, dtype=torch.float64)  # n, sum a, sum b, sum ab, sum a^2, sum b^2
    for g0 in range(0, h - 1, band_rows):  # gradient rows [g0, g1) need image rows [g0, g1 + 1)
        g1 = min(h - 1, g0 + band_rows)
        a = gradient_magnitude(rows(g0, g1 + 1).float().cpu()).flatten().double()
        grey = image[:, g0 : g1 + 1].float().mean(0, keepdim=True).cpu()  # (1, rows, W)
        b = gradient_magnitude(grey).flatten().double()
        sums += torch.stack([a.new_tensor(a.numel()), a.sum(), b.sum(), (a * b).sum(), (a * a).sum(), (b * b).sum()])
    n, sa, sb, sab, saa, sbb = sums.tolist()
    if n == 0:
        return 0.0
    cov = sab - sa * sb / n
    var = max(saa - sa * sa / n, 0.0) * max(sbb - sb * sb / n, 0.0)
    return float(cov / max(var**0.5, 1e-12))


def edge_alignment(features: torch.Tensor, image: torch.Tensor, band_rows: int = DEFAULT_BAND_ROWS) -> float:
    """Correlation of feature-gradient and image-gradient magnitudes (in [-1, 1], higher = sharper, aligned).

    Args:
        features: (C, H, W) or (1, C, H, W) at the image's resolution (any float dtype, not copied whole).
        image: RGB (3, H, W) or (1, 3, H, W) in [0, 1].
        band_rows: rows per band (memory only; the result is the same up to float rounding).
    """
    f = one_map(features, "features")
    img = one_map(image, "image")
    if tuple(img.shape[-2:]) != tuple(f.shape[-2:]):
        raise ValueError(f"features {tuple(f.shape[-2:])} and image {tuple(img.shape[-2:])} sizes differ")
    return _correlation(lambda y0, y1: f[:, y0:y1], img, band_rows)


def bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation, as ``F.interpolate(..., align_corners=False)``."""
    eye = torch.eye(n_in, dtype=torch.float32)[None]  # (1, n_in channels, n_in samples)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()  # (n_out, n_in)


def bilinear_edge_alignment(lowres: torch.Tensor, image: torch.Tensor, band_rows: int = DEFAULT_BAND_ROWS) -> float:
    """:func:`edge_alignment` of the bilinear upsampling of ``lowres`` (C, h, w) to the image size (3, H, W).

    The bilinear map is built band by band (``Wy[band] @ lowres @ Wx^T``), equal to
    ``F.interpolate(lowres, size=(H, W), mode="bilinear")`` up to float rounding.
    """
    low = one_map(lowres, "lowres").float().cpu()
    img = one_map(image, "image")
    hh, ww = img.shape[-2:]
    wy = bilinear_matrix(hh, low.shape[-2])  # (H, h)
    wx = bilinear_matrix(ww, low.shape[-1])  # (W, w)

    def rows(y0: int, y1: int) -> torch.Tensor:
        return torch.einsum("yh,chw,xw->cyx", wy[y0:y1], low, wx)  # (C, y1 - y0, W)

    return _correlation(rows, img, band_rows)
