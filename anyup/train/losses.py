"""The AnyUp training objective.

``CosMSE(p, t) = mean(1 - cos(p, t)) + MSE(norm(p), norm(t))`` where the cosine is taken over
channels per pixel and averaged over pixels, and ``norm`` min-max normalises both maps with the
*target's* per-pixel minimum and maximum over channels (``(x - min_t) / (max_t - min_t + eps)``).

The full objective (:func:`recipe_loss`) is::

    crop_weight        * CosMSE(prediction window of each crop, encoder features of the crop)
                         (or, with full-image targets, CosMSE(prediction, features of the high-res image))
  + consistency_weight * CosMSE(anyup(augmented image), stopgrad(anyup(image)))   at S x S pixels
  + lowres_weight      * CosMSE(area_downsample(prediction, (h, w)), low-res features)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anyup.predictor import run_anyup
from anyup.train.config import LossConfig


def cos_mse(pred: torch.Tensor, target: torch.Tensor, minmax_eps: float = 1e-6, cos_eps: float = 1e-8) -> torch.Tensor:
    """CosMSE between two feature maps ``(B, C, H, W)`` of the same shape; returns a float32 scalar.

    Both inputs are cast to float32. Gradients flow into both unless the caller detaches one.
    """
    if pred.shape != target.shape:
        raise ValueError(f"cos_mse needs equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.ndim != 4:
        raise ValueError(f"cos_mse expects (B, C, H, W) maps, got {tuple(pred.shape)}")
    p, t = pred.float(), target.float()
    cos = F.cosine_similarity(p, t, dim=1, eps=cos_eps)  # (B, H, W)
    t_min = t.amin(dim=1, keepdim=True)  # (B, 1, H, W)
    t_max = t.amax(dim=1, keepdim=True)
    scale = t_max - t_min + minmax_eps
    mse = (((p - t_min) / scale - (t - t_min) / scale) ** 2).mean()
    return (1.0 - cos).mean() + mse


def crop_boxes(crop_u: torch.Tensor, hr_size: int, crop_size: int, stride: int) -> torch.Tensor:
    """Grid-aligned crop offsets in pixels from uniform numbers.

    Args:
        crop_u: ``(B, K, 2)`` floats in [0, 1).
        hr_size: side of the high-res image (``F * S``).
        crop_size: side of a crop (``S``); ``hr_size - crop_size`` must be a multiple of ``stride``.
        stride: encoder stride ``s``; offsets are multiples of it.

    Returns:
        ``(B, K, 2)`` int64 ``(top, left)`` pixel offsets, multiples of ``stride``.
    """
    if (hr_size - crop_size) % stride:
        raise ValueError(f"hr_size - crop_size = {hr_size - crop_size} is not a multiple of stride {stride}")
    positions = (hr_size - crop_size) // stride + 1
    cells = (crop_u * positions).long().clamp_(0, positions - 1)
    return cells * stride


def extract_crops(images: torch.Tensor, boxes: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``(B, C, H, W)`` and ``(B, K, 2)`` ``(top, left)`` offsets -> ``(B*K, C, h, w)`` windows, batch-major."""
    h, w = (size, size) if isinstance(size, int) else size
    if boxes.ndim != 3 or boxes.shape[0] != images.shape[0] or boxes.shape[2] != 2:
        raise ValueError(f"boxes must be (B={images.shape[0]}, K, 2), got {tuple(boxes.shape)}")
    out = [images[i, :, y : y + h, x : x + w] for i in range(boxes.shape[0]) for y, x in boxes[i].tolist()]
    return torch.stack(out)


class RecipeLoss(nn.Module):
    """One forward of the objective around an AnyUp model (the unit DDP wraps).

    The encoder is *not* part of this module: its features are inputs, so the frozen encoder never
    enters DistributedDataParallel and only AnyUp's parameters are synchronised.
    """

    def __init__(self, model: nn.Module, cfg: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(
        self,
        image: torch.Tensor,
        image_aug: torch.Tensor,
        lowres: torch.Tensor,
        targets: torch.Tensor,
        cells: torch.Tensor | None,
        hr_grid: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Compute the three terms and their weighted sum.

        Args:
            image: ``(B, 3, S, S)`` RGB in [0, 1] (guidance image).
            image_aug: ``(B, 3, S, S)`` its photometric augmentation.
            lowres: ``(B, C, h, w)`` encoder features of ``image``.
            targets: ``(B*K, C, h, w)`` encoder features of the K crops of each image.
            cells: ``(B, K, 2)`` crop offsets in feature cells of the high-res grid, or ``None`` when
                ``targets`` is ``(B, C, F*h, F*w)``, the features of the whole high-res image.
            hr_grid: ``(F*h, F*w)``, the grid the prediction is made on.

        Returns:
            dict of float32 scalars ``loss``, ``crop``, ``consistency``, ``lowres``.
        """
        c, eps = self.cfg, (self.cfg.minmax_eps, self.cfg.cos_eps)
        h, w = lowres.shape[-2:]
        pred = run_anyup(self.model, image, lowres, hr_grid)  # (B, C, F*h, F*w)
        pred_crops = pred if cells is None else extract_crops(pred, cells, (h, w))  # (B*K, C, h, w)
        loss_crop = cos_mse(pred_crops, targets, *eps)
        loss_low = cos_mse(F.adaptive_avg_pool2d(pred.float(), (h, w)), lowres, *eps)
        size = image.shape[-2:]
        with torch.no_grad():
            ref = run_anyup(self.model, image, lowres, size)  # (B, C, S, S)
        aug = run_anyup(self.model, image_aug, lowres, size)  # (B, C, S, S)
        loss_cons = cos_mse(aug, ref.detach(), *eps)
        total = c.crop_weight * loss_crop + c.consistency_weight * loss_cons + c.lowres_weight * loss_low
        return {"loss": total, "crop": loss_crop, "consistency": loss_cons, "lowres": loss_low}
