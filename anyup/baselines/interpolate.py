"""Image-agnostic resampling baselines: nearest, bilinear and bicubic interpolation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anyup.baselines.base import BaselineUpsampler

_MODES = ("nearest", "bilinear", "bicubic")


@dataclass
class InterpolateConfig:
    """``torch.nn.functional.interpolate`` settings (``align_corners=False`` always; mode = method name)."""

    antialias: bool = True  # low-pass filter when the output is smaller than the input (bilinear/bicubic)


def interpolate_features(
    features: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", antialias: bool = True
) -> torch.Tensor:
    """Resize ``(B, C, h, w)`` features to ``(B, C, H', W')`` with ``align_corners=False``.

    Computes in float32 for half-precision inputs (``interpolate`` lacks some half kernels on
    CPU) and returns the input dtype. Antialiasing only applies when a side shrinks.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    x = features if features.dtype in (torch.float32, torch.float64) else features.float()
    if mode == "nearest":
        # "nearest-exact" has the pixel-centre convention that matches align_corners=False.
        out = F.interpolate(x, size=size, mode="nearest-exact")
    else:
        shrinks = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        out = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias and shrinks)
    return out.to(features.dtype)  # (B, C, H', W')


class Interpolate(BaselineUpsampler):
    """Plain interpolation of the features; the image is ignored (only its batch is checked)."""

    def __init__(self, mode: str = "bilinear", config: InterpolateConfig | None = None) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self.config = config or InterpolateConfig()
        self.name = mode

    def upsample(self, image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return interpolate_features(features, size, self.mode, self.config.antialias)
