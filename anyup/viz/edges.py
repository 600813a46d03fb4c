"""How well a feature map's edges line up with the image's edges (a diagnostic for upsamplers).

``edge_alignment`` is the Pearson correlation, over pixels, between the gradient magnitude of the
features (summed over channels) and the gradient magnitude of the image (grey). Bilinear upsampling
spreads feature changes over a whole low-res cell, so its gradients ignore image edges; an
image-guided upsampler puts them on the edges, which raises the correlation.
"""

from __future__ import annotations

import torch


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


def edge_alignment(features: torch.Tensor, image: torch.Tensor) -> float:
    """Correlation of feature-gradient and image-gradient magnitudes (in [-1, 1], higher = sharper, aligned).

    Args:
        features: (C, H, W) or (1, C, H, W) at the image's resolution.
        image: RGB (3, H, W) or (1, 3, H, W) in [0, 1].
    """
    img = image.detach().float()
    img = img[0] if img.ndim == 4 else img
    if tuple(img.shape[-2:]) != tuple(features.shape[-2:]):
        raise ValueError(f"features {tuple(features.shape[-2:])} and image {tuple(img.shape[-2:])} sizes differ")
    grey = img.mean(0, keepdim=True)  # (1, H, W)
    a = gradient_magnitude(features.float().cpu()).flatten()
    b = gradient_magnitude(grey.cpu()).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))
