"""Input validation for the public API: every error names the bad value and what is allowed."""

from __future__ import annotations

from typing import Sequence

import torch

MAX_SIDE = 1 << 16  # 65536 pixels per side: anything larger is almost surely a mistake


def check_image_and_features(image: torch.Tensor, features: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if image.ndim != 4:
        raise ValueError(f"image must be (B, 3, H, W), got {image.ndim} dims with shape {tuple(image.shape)}")
    if features.ndim != 4:
        raise ValueError(
            f"features must be (B, C, h, w), got {features.ndim} dims with shape {tuple(features.shape)}"
        )
    if image.shape[1] != 3:
        raise ValueError(f"image must have 3 channels (RGB, ImageNet-normalised), got {image.shape[1]}")
    if features.shape[1] < 1:
        raise ValueError(f"features must have at least 1 channel, got C = {features.shape[1]}")
    if image.shape[0] != features.shape[0]:
        raise ValueError(
            f"batch sizes differ: image has B = {image.shape[0]}, features have B = {features.shape[0]}"
        )
    if image.shape[0] < 1:
        raise ValueError("batch size must be >= 1, got 0")
    for name, t in (("image", image), ("features", features)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (float32, bfloat16, float16), got {t.dtype}")
        if min(t.shape[-2:]) < 1:
            raise ValueError(f"{name} spatial size must be >= 1, got {tuple(t.shape[-2:])}")
        if max(t.shape[-2:]) > MAX_SIDE:
            raise ValueError(f"{name} spatial size {tuple(t.shape[-2:])} exceeds the maximum side {MAX_SIDE}")
    if image.device != features.device:
        raise ValueError(f"image is on {image.device} but features are on {features.device}")
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or inf values")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or inf values")


def check_size(size: Sequence[int] | int | None, name: str, default: tuple[int, int]) -> tuple[int, int]:
    """Normalise an (H, W) size argument (an int means square)."""
    if size is None:
        return default
    if isinstance(size, torch.Size):
        size = tuple(size)
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"{name} must be an int or a pair (H, W), got {size!r}")
    out = []
    for v in size:
        if isinstance(v, bool) or not isinstance(v, int):
            try:
                import numpy as np

                if isinstance(v, np.integer):
                    v = int(v)
                else:
                    raise TypeError
            except TypeError:
                raise ValueError(f"{name} entries must be integers, got {size!r}") from None
        if v < 1 or v > MAX_SIDE:
            raise ValueError(f"{name} entries must be in [1, {MAX_SIDE}], got {tuple(size)}")
        out.append(int(v))
    return out[0], out[1]


def check_ratio(ratio: float) -> float:
    if not isinstance(ratio, (int, float)) or not (0.0 < float(ratio) <= 1.0):
        raise ValueError(f"window_ratio must be a float in (0, 1], got {ratio!r}")
    return float(ratio)
