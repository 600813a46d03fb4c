"""Label-free validation: feature fidelity and PCA pictures on held-out images.

*Feature fidelity*: downscale a held-out image by ``F`` (``F*S`` -> ``S`` pixels), run the encoder on
it, upsample those low-res features ``F`` times, and compare them (per-pixel cosine similarity,
averaged over pixels and images) with the encoder's own features of the full-size image. The same
is reported for bilinear upsampling, the baseline every upsampler has to beat.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from anyup.encoders.base import feature_map
from anyup.predictor import run_anyup
from anyup.train.data import downsample, fit_to_multiple

if TYPE_CHECKING:
    import PIL.Image

logger = logging.getLogger(__name__)

Encoder = Callable[[torch.Tensor], list[torch.Tensor]]  # RGB (B, 3, H, W) in [0, 1] -> one map per layer


def _features(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    """Encoder features; inputs resized to the encoder's input multiple first (ViT patch 14 at 128 px)."""
    multiple = int(getattr(getattr(encoder, "info", None), "multiple", 1))
    return feature_map(encoder(fit_to_multiple(images, multiple)), 0, f"encoder {type(encoder).__name__}")


@torch.no_grad()
def feature_fidelity(
    model: nn.Module | None,
    encoder: Encoder,
    images_hr: torch.Tensor,
    input_size: int,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean cosine similarity to the encoder's full-size features, for AnyUp and bilinear.

    Args:
        model: an AnyUp model (or ``None`` for the bilinear baseline only).
        encoder: frozen encoder, RGB ``(B, 3, H, W)`` in [0, 1] -> ``(B, C, H/s, W/s)``.
        images_hr: ``(N, 3, F*S, F*S)`` float RGB in [0, 1] (CPU or ``device``).
        input_size: ``S``, the side of the downscaled input.
        batch_size: images per forward pass.
        device: where to compute.

    Returns:
        ``{"anyup": float, "bilinear": float}`` (``"anyup"`` missing when ``model`` is None),
        each the mean over images of the per-pixel cosine similarity, in [-1, 1].
    """
    if images_hr.ndim != 4 or images_hr.shape[1] != 3:
        raise ValueError(f"images_hr must be (N, 3, H, W), got {tuple(images_hr.shape)}")
    sums = {"bilinear": 0.0} if model is None else {"anyup": 0.0, "bilinear": 0.0}
    n = images_hr.shape[0]
    for i in range(0, n, batch_size):
        hr = images_hr[i : i + batch_size].to(device)
        lr_image = downsample(hr, input_size)  # (b, 3, S, S)
        lowres = _features(encoder, lr_image).float()  # (b, C, h, w)
        target = _features(encoder, hr).float()  # (b, C, F*h, F*w)
        size = tuple(target.shape[-2:])
        bil = F.interpolate(lowres, size=size, mode="bilinear", align_corners=False)
        sums["bilinear"] += F.cosine_similarity(bil, target, dim=1).mean(dim=(1, 2)).sum().item()
        if model is not None:
            pred = run_anyup(model, lr_image, lowres, size).float()
            sums["anyup"] += F.cosine_similarity(pred, target, dim=1).mean(dim=(1, 2)).sum().item()
    return {k: v / n for k, v in sums.items()}


def pca_basis(features: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of ``(N, C)`` rows: returns ``mean (C,)``, ``components (C, k)``, and 1st/99th percentiles."""
    mean = features.mean(0)
    x = features - mean
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comp = v[:k].T  # (C, k)
    if comp.shape[1] < k:  # fewer channels than k: pad with zeros
        comp = F.pad(comp, (0, k - comp.shape[1]))
    proj = x @ comp  # (N, k)
    lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
    return mean, comp, lo, hi


def pca_image(feat: torch.Tensor, basis: tuple[torch.Tensor, ...], size: int) -> torch.Tensor:
    """``(C, h, w)`` -> ``(3, size, size)`` RGB in [0, 1] using a PCA basis (nearest upscaling)."""
    mean, comp, lo, hi = basis
    c, h, w = feat.shape
    proj = (feat.reshape(c, -1).T - mean) @ comp  # (h*w, 3)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1).T.reshape(3, h, w)
    return F.interpolate(rgb[None], size=(size, size), mode="nearest")[0]


@torch.no_grad()
def save_pca_samples(
    path: str | os.PathLike,
    model: nn.Module,
    encoder: Encoder,
    images_hr: torch.Tensor,
    input_size: int,
    tile: int = 160,
    device: torch.device | str = "cpu",
    title: str = "",
) -> Path:
    """A grid picture, one row per image: input | low-res | bilinear | AnyUp | encoder at full size | AnyUp per pixel.

    Features are shown as their first three principal components (fitted per image on the
    encoder's full-size features). Written atomically with PIL (no matplotlib needed).
    """
    from PIL import Image

    from anyup.train.checkpoint import atomic_write

    rows = []
    for hr in images_hr:
        hr = hr[None].to(device)  # (1, 3, F*S, F*S)
        lr_image = downsample(hr, input_size)
        lowres = _features(encoder, lr_image).float()  # (1, C, h, w)
        target = _features(encoder, hr).float()  # (1, C, F*h, F*w)
        size = tuple(target.shape[-2:])
        pred = run_anyup(model, lr_image, lowres, size).float()
        dense = run_anyup(model, lr_image, lowres, hr.shape[-2:]).float()  # (1, C, F*S, F*S)
        bil = F.interpolate(lowres, size=size, mode="bilinear", align_corners=False)
        basis = pca_basis(target[0].reshape(target.shape[1], -1).T.cpu())
        panels = [F.interpolate(hr, size=(tile, tile), mode="bilinear", antialias=True)[0].cpu()]
        for f in (lowres, bil, pred, target):
            panels.append(pca_image(f[0].cpu(), basis, tile))
        dense_small = F.interpolate(dense, size=(tile, tile), mode="area")[0].cpu()
        panels.append(pca_image(dense_small, basis, tile))
        rows.append(torch.cat(panels, dim=2))  # (3, tile, 6*tile)
    grid = torch.cat(rows, dim=1).clamp(0, 1)  # (3, n*tile, 6*tile)
    arr = (grid * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    picture = _with_header(Image.fromarray(arr), tile, title)
    path = Path(path)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    return path


_COLUMNS = ("image", "low-res", "bilinear", "AnyUp", "encoder, full size", "AnyUp per pixel")


def _with_header(picture: PIL.Image.Image, tile: int, title: str) -> PIL.Image.Image:
    """Add a white strip with the column names (and ``title``) above the grid."""
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (picture.width, picture.height + 28), "white")
    out.paste(picture, (0, 28))
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(_COLUMNS):
        draw.text((i * tile + 4, 2), name, fill="black")
    if title:
        draw.text((4, 15), title, fill="gray")
    return out
