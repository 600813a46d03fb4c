"""Guidance images for the classic edge-aware filters: ImageNet-normalised RGB -> [0, 1] RGB, grey or Lab."""

from __future__ import annotations

import torch

GUIDES = ("rgb", "grey", "lab", "normalized")


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``(B, 3, H, W)`` in ``[0, 1]`` -> CIE Lab (D65) with L in ``[0, 100]``, a/b roughly ``[-128, 127]``."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.tensor(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
        dtype=rgb.dtype,
        device=rgb.device,
    )
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)  # (B, 3, H, W)
    white = torch.tensor([0.950456, 1.0, 1.088754], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    t = xyz / white
    delta = 6.0 / 29.0
    f = torch.where(t > delta**3, t.clamp_min(1e-12) ** (1.0 / 3.0), t / (3 * delta**2) + 4.0 / 29.0)
    lightness = 116.0 * f[:, 1:2] - 16.0
    a = 500.0 * (f[:, 0:1] - f[:, 1:2])
    b = 200.0 * (f[:, 1:2] - f[:, 2:3])
    return torch.cat([lightness, a, b], dim=1)


def make_guide(image: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Guidance tensor from an ImageNet-normalised image ``(B, 3, H, W)``.

    ``rgb``: denormalised to ``[0, 1]`` (3 channels); ``grey``: its Rec. 601 luma (1 channel);
    ``lab``: CIE Lab divided by 100 (so L is in ``[0, 1]``, 3 channels); ``normalized``: as given.
    """
    from anyup.image import imagenet_denormalize

    if kind not in GUIDES:
        raise ValueError(f"guidance must be one of {GUIDES}, got {kind!r}")
    x = image.to(dtype)
    if kind == "normalized":
        return x
    rgb = imagenet_denormalize(x).clamp(0, 1)
    if kind == "rgb":
        return rgb
    if kind == "grey":
        w = torch.tensor([0.299, 0.587, 0.114], dtype=dtype, device=x.device).view(1, 3, 1, 1)
        return (rgb * w).sum(1, keepdim=True)  # (B, 1, H, W)
    return rgb_to_lab(rgb) / 100.0


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize, ``align_corners=False``, antialiased when shrinking; identity if same size."""
    from anyup.image import resize as _resize

    return _resize(x, size, antialias="shrink")
