"""Where an output pixel looks: AnyUp's attention over the low-res tokens, over the image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anyup.viz.pca import to_uint8_hwc

# A dark-to-bright colour ramp (black, purple, red, orange, pale yellow) for heatmaps.
_RAMP = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], dtype=np.float32) / 255.0


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB floats in [0, 1] (shape + (3,))."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(v.astype(np.int64), len(_RAMP) - 2)
    t = (v - i)[..., None]
    return _RAMP[i] * (1 - t) + _RAMP[i + 1] * t


def attention_overlay(
    image: torch.Tensor | np.ndarray,
    attention: torch.Tensor | np.ndarray,
    pixel: tuple[int, int] | None = None,
    alpha: float = 0.6,
    marker_radius: int = 5,
) -> np.ndarray:
    """Overlay one attention map (over the low-res grid) on the image, with a marker on the pixel.

    Args:
        image: RGB (3, H, W) tensor in [0, 1] or (H, W, 3) uint8/float array.
        attention: (h, w) non-negative weights over the low-res tokens (e.g. one map of
            ``AnyUp.attention_weights``); shown as blocks (nearest enlargement), scaled to its max.
        pixel: (y, x) of the querying output pixel, in image coordinates; drawn as a ring + dot.
        alpha: heatmap opacity where the attention is largest (fades to 0.15 * alpha at zero).

    Returns:
        uint8 (H, W, 3).
    """
    from PIL import Image, ImageDraw

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = to_uint8_hwc(image).astype(np.float32) / 255.0
    h, w = img.shape[:2]
    a = torch.as_tensor(attention).detach().float().cpu()
    if a.ndim != 2:
        raise ValueError(f"attention must be one (h, w) map, got shape {tuple(a.shape)}")
    a = a / a.max().clamp_min(1e-12)
    a_big = F.interpolate(a[None, None], size=(h, w), mode="nearest")[0, 0].numpy()  # (H, W)
    heat = heat_colors(a_big)
    weight = alpha * (0.15 + 0.85 * a_big)[..., None]
    out = Image.fromarray(((img * (1 - weight) + heat * weight) * 255 + 0.5).astype(np.uint8))
    if pixel is not None:
        y, x = pixel
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(f"pixel {(y, x)} lies outside the image of size {(h, w)}")
        draw = ImageDraw.Draw(out)
        r = marker_radius
        draw.ellipse((x - r - 1, y - r - 1, x + r + 1, y + r + 1), outline=(0, 0, 0), width=2)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=(0, 255, 255), width=2)
        draw.ellipse((x - 1, y - 1, x + 1, y + 1), fill=(0, 255, 255))
    return np.asarray(out)


def attention_row(
    image: torch.Tensor | np.ndarray,
    attention: torch.Tensor | np.ndarray,
    pixels: Sequence[tuple[int, int]],
    alpha: float = 0.6,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """One overlay per pixel, side by side with labels: uint8 (H + 14, P W + gaps, 3).

    ``attention`` is (P, h, w) (or (1, P, h, w)) with one map per pixel, in the same order;
    ``labels`` default to the pixel coordinates.
    """
    from anyup.viz.pca import labelled_row

    a = torch.as_tensor(attention).detach()
    if a.ndim == 4:
        a = a[0]
    if a.ndim != 3 or a.shape[0] != len(pixels):
        raise ValueError(f"attention must be (P, h, w) with P = {len(pixels)} pixels, got {tuple(a.shape)}")
    panels = [attention_overlay(image, a[i], p, alpha) for i, p in enumerate(pixels)]
    if labels is None:
        labels = [f"pixel (y={y}, x={x})" for y, x in pixels]
    return labelled_row(panels, labels)
