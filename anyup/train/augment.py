"""Photometric augmentation of the guidance image, driven by an explicit ``torch.Generator``.

Only pixel values change (colour jitter, grayscale, Gaussian blur, JPEG re-encoding, Gaussian
noise), never geometry, so the augmented image stays pixel-aligned with the clean one and the
consistency loss can compare the two upsampled maps pixel by pixel. All randomness comes from the
generator passed in, so a sample is a pure function of its seed (bit-identical resumes, identical
samples in any DataLoader worker).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from anyup.train.config import AugmentConfig

_LUMA = (0.299, 0.587, 0.114)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _chance(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of ``(3, H, W)`` in [0, 1], repeated to 3 channels."""
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * w).sum(0, keepdim=True).expand_as(x)


def rotate_hue(x: torch.Tensor, turns: float) -> torch.Tensor:
    """Rotate the hue of ``(3, H, W)`` by ``turns`` of a full circle (rotation in YIQ space)."""
    a = 2.0 * math.pi * turns
    c, s = math.cos(a), math.sin(a)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=x.dtype)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=x.dtype)
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (3, 3)
    return torch.einsum("ij,jhw->ihw", m.to(x.device), x)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(3, H, W)`` with reflect padding; kernel radius ``ceil(3 sigma)``."""
    radius = max(1, math.ceil(3.0 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")  # (1, 3, H+2r, W+2r)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return y[0]


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode ``(3, H, W)`` in [0, 1] as a JPEG of the given quality and decode it again."""
    from PIL import Image

    arr = (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(out.copy()).permute(2, 0, 1).to(x.dtype) / 255.0


def photometric_augment(image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly jitter, grey, blur, JPEG-compress and add noise to one image.

    Args:
        image: ``(3, H, W)`` float RGB in [0, 1] (CPU).
        cfg: probabilities and ranges.
        generator: the only source of randomness (the same seed gives the same output).

    Returns:
        ``(3, H, W)`` float in [0, 1], same dtype.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"photometric_augment expects a (3, H, W) image, got {tuple(image.shape)}")
    x = image
    g = generator
    # Draw every parameter whether or not it is used, so one decision never shifts the others.
    do_jitter = _chance(g, cfg.jitter_p)
    order = torch.randperm(4, generator=g).tolist()
    factors = [
        _uniform(g, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
        _uniform(g, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
        _uniform(g, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
        _uniform(g, -cfg.hue, cfg.hue),
    ]
    do_gray = _chance(g, cfg.grayscale_p)
    do_blur = _chance(g, cfg.blur_p)
    sigma = _uniform(g, *cfg.blur_sigma)
    do_jpeg = _chance(g, cfg.jpeg_p)
    quality = round(_uniform(g, *cfg.jpeg_quality))
    do_noise = _chance(g, cfg.noise_p)
    noise_std = _uniform(g, *cfg.noise_std)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype)

    if do_jitter:
        for op in order:
            f = factors[op]
            if op == 0:  # brightness
                x = x * f
            elif op == 1:  # contrast: blend with the mean grey level
                mean = grayscale(x).mean()
                x = (x - mean) * f + mean
            elif op == 2:  # saturation: blend with the grey image
                gray = grayscale(x)
                x = gray + (x - gray) * f
            else:  # hue
                x = rotate_hue(x, f)
            x = x.clamp(0, 1)
    if do_gray:
        x = grayscale(x).contiguous()
    if do_blur and sigma > 0:
        x = gaussian_blur(x, sigma)
    if do_jpeg:
        x = jpeg(x, quality)
    if do_noise and noise_std > 0:
        x = x + noise_std * noise
    return x.clamp(0, 1).contiguous()
