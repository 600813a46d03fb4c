"""What every evaluation dataset returns, and the resizing shared by all of them.

An item is a dict with

* ``image``: ``(3, H, W)`` float32 RGB in ``[0, 1]`` (always);
* ``seg``: ``(H, W)`` int64 class ids in ``[0, num_classes)``, ``ignore_index`` (255) = ignore;
* ``depth``: ``(H, W)`` float32, metres (``depth_metric=True``) or a relative depth derived from
  disparity (``depth_metric=False``, only ratios between pixels are meaningful); 0 = invalid;
* ``depth_valid``: ``(H, W)`` bool, ``depth > 0`` and finite;
* ``normals``: ``(3, H, W)`` float32 unit vectors in camera coordinates (x right, y down,
  z forward, i.e. OpenCV convention; surfaces facing the camera have ``z < 0``); all-zero = invalid;
* ``normals_valid``: ``(H, W)`` bool;
* ``name``: ``str``, unique within the dataset split;

where the label keys are present exactly for the tasks in ``dataset.tasks``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("seg", "depth", "normals")
IGNORE_INDEX = 255


@dataclass
class DatasetConfig:
    """Options shared by every dataset (each dataset's config subclasses this)."""

    size: int | None = None  # resize so the short side is `size` (labels: nearest); None = native size
    crop: bool = True  # with `size`: centre-crop to size x size afterwards (JAFAR / FeatUp protocol)
    limit: int | None = None  # keep only the first `limit` items (sorted by name); None = all


class DenseDataset(Dataset):
    """Base class: subclasses fill ``self.items`` and implement :meth:`load` (native resolution).

    Attributes: ``name`` (registry name), ``split``, ``tasks`` (tuple, subset of :data:`TASKS`),
    ``num_classes`` (0 without ``seg``), ``ignore_index``, ``class_names`` (tuple or None),
    ``depth_metric`` (True: metres; False: relative depth from disparity).
    """

    name: str = "dataset"
    tasks: tuple[str, ...] = ()
    num_classes: int = 0
    ignore_index: int = IGNORE_INDEX
    class_names: tuple[str, ...] | None = None
    depth_metric: bool = True

    def __init__(self, split: str, config: DatasetConfig) -> None:
        super().__init__()
        self.split = split
        self.config = config
        self.items: list[Any] = []
        if config.size is not None and config.size < 1:
            raise ValueError(f"config.size must be a positive int or None, got {config.size!r}")
        if config.limit is not None and config.limit < 0:
            raise ValueError(f"config.limit must be >= 0 or None, got {config.limit!r}")

    def _apply_limit(self) -> None:
        if self.config.limit is not None:
            self.items = self.items[: self.config.limit]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name!r} ({len(self)} items)")
        sample = self.load(index % len(self))
        return resize_sample(sample, self.config.size, self.config.crop)

    def load(self, index: int) -> dict[str, Any]:
        """Item ``index`` at native resolution (see module docstring for the keys)."""
        raise NotImplementedError  # pragma: no cover  (abstract)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, items={len(self)}, "
            f"tasks={self.tasks}, num_classes={self.num_classes})"
        )


def add_valid_masks(sample: dict[str, Any]) -> dict[str, Any]:
    """Fill ``depth_valid`` / ``normals_valid`` from ``depth`` / ``normals`` (zeros = invalid)."""
    if "depth" in sample:
        d = sample["depth"]
        ok = torch.isfinite(d) & (d > 0)
        sample["depth"] = torch.where(ok, d, torch.zeros_like(d))
        sample["depth_valid"] = ok
    if "normals" in sample:
        n = sample["normals"]
        ok = torch.isfinite(n).all(0) & (n.abs().sum(0) > 0)
        sample["normals"] = torch.where(ok, n, torch.zeros_like(n))
        sample["normals_valid"] = ok
    return sample


def resize_sample(sample: dict[str, Any], size: int | None, crop: bool = True) -> dict[str, Any]:
    """Resize an item so its short side is ``size`` (then centre-crop to ``size x size`` if ``crop``).

    The image uses antialiased bilinear resampling; every other tensor with the image's height
    and width (``seg``, ``depth``, ``normals``, the valid masks, extras) uses nearest neighbour
    (no mixing of classes or of valid and invalid pixels).
    ``size=None`` returns the sample unchanged.
    """
    if size is None:
        return sample
    from anyup.image import center_crop, resize, resize_nearest, short_side_size

    image = sample["image"]
    h, w = image.shape[-2:]
    new_hw = short_side_size(h, w, size)
    out_hw = (size, size) if crop else new_hw

    def fit(x: torch.Tensor, dense: bool) -> torch.Tensor:
        y = resize(x.float(), new_hw, antialias=True).to(x.dtype) if dense else resize_nearest(x, new_hw)
        return center_crop(y, out_hw) if crop else y

    out = dict(sample)
    out["image"] = fit(image, dense=True).clamp(0, 1)
    for key, value in sample.items():  # every per-pixel map: seg, depth, normals, masks, extras
        if (
            key != "image"
            and isinstance(value, torch.Tensor)
            and value.ndim in (2, 3)
            and tuple(value.shape[-2:]) == (h, w)
        ):
            out[key] = fit(value, dense=False).contiguous()
    return out
