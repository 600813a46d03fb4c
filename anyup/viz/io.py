"""Writing files atomically (temp file in the same folder, then ``os.replace``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anyup._atomic import atomic_write  # noqa: F401  (re-exported for callers of anyup.viz.io)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Save an (H, W, 3) or (H, W) uint8 array (or float in [0, 1]) as PNG, atomically."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"save_png expects uint8 or float in [0, 1], got dtype {arr.dtype}")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"save_png expects (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG", optimize=True))
