"""Where an output pixel looks: AnyUp's attention over the low-res tokens, over the image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anyup.viz.pca import to_uint8_hwc

# A dark-to-bright colour ramp (black, purple, red, orange, pale yellow) for heatmaps.
DEFAULT_GAMMA = 0.5  # attention colours: (weight / max) ** gamma
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
    alpha: float = 0.75,
    marker_radius: int = 5,
    vmax: float | None = None,
    gamma: float = DEFAULT_GAMMA,
    dim: float = 0.5,
) -> np.ndarray:
    """Overlay one attention map (over the low-res grid) on the image, with a marker on the pixel.

    Args:
        image: RGB (3, H, W) tensor in [0, 1] or (H, W, 3) uint8/float array.
        attention: (h, w) non-negative weights over the low-res tokens (e.g. one map of
            ``AnyUp.attention_weights``); shown as blocks (nearest enlargement).
        pixel: (y, x) of the querying output pixel, in image coordinates; drawn as a ring + dot.
        alpha: heatmap opacity where the attention is largest (fades to 0.15 * alpha at zero).
        vmax: the weight shown as the brightest colour (default: this map's maximum); pass one
            value for several maps so their colours compare (as :func:`attention_row` does).
        gamma: colour = ``(weight / vmax) ** gamma``; below 1 lifts the small weights of a peaked
            map out of the dark end (0.5: a quarter of ``vmax`` shows half-way up the ramp).
        dim: the image is darkened to this brightness under the heatmap, for contrast.

    Returns:
        uint8 (H, W, 3).
    """
    from PIL import Image, ImageDraw

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    img = to_uint8_hwc(image).astype(np.float32) / 255.0
    h, w = img.shape[:2]
    a = torch.as_tensor(attention).detach().float().cpu()
    if a.ndim != 2:
        raise ValueError(f"attention must be one (h, w) map, got shape {tuple(a.shape)}")
    top = float(a.max()) if vmax is None else float(vmax)
    a = (a / max(top, 1e-12)).clamp(0, 1).pow(gamma)
    a_big = F.interpolate(a[None, None], size=(h, w), mode="nearest")[0, 0].numpy()  # (H, W)
    heat = heat_colors(a_big)
    weight = alpha * (0.15 + 0.85 * a_big)[..., None]
    out = Image.fromarray(((img * dim * (1 - weight) + heat * weight) * 255 + 0.5).astype(np.uint8))
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


def colorbar(height: int, vmax: float, gamma: float = DEFAULT_GAMMA, width: int = 12) -> np.ndarray:
    """A vertical colour bar for :func:`attention_overlay`: uint8 (height, width + 52, 3).

    The ramp runs from ``vmax`` (top) to 0 (bottom) with the ``gamma`` mapping, labelled with the
    attention weights at the top, a quarter-way colour and the bottom.
    """
    from PIL import Image, ImageDraw

    if height < 1:
        raise ValueError(f"height must be >= 1, got {height}")
    ramp = heat_colors(np.linspace(1.0, 0.0, height))[:, None, :].repeat(width, axis=1)  # (H, width, 3)
    canvas = Image.new("RGB", (width + 52, height), (255, 255, 255))
    canvas.paste(Image.fromarray((ramp * 255 + 0.5).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for v in (1.0, 0.5, 0.0):  # colour positions; the weight there is vmax * v ** (1 / gamma)
        y = min(height - 11, max(0, round((1 - v) * (height - 1)) - 5))
        draw.text((width + 3, y), f"{vmax * v ** (1 / gamma):.2g}", fill=(0, 0, 0))
    return np.asarray(canvas)


def attention_row(
    image: torch.Tensor | np.ndarray,
    attention: torch.Tensor | np.ndarray,
    pixels: Sequence[tuple[int, int]],
    alpha: float = 0.75,
    labels: Sequence[str] | None = None,
    gamma: float = DEFAULT_GAMMA,
    bar: bool = True,
) -> np.ndarray:
    """One overlay per pixel, side by side with labels, and a shared colour bar.

    ``attention`` is (P, h, w) (or (1, P, h, w)) with one map per pixel, in the same order;
    every panel uses the same colour scale (the largest weight of all maps), shown by the colour
    bar on the right (``bar=False`` leaves it out). ``labels`` default to the pixel coordinates.

    Returns:
        uint8 (H + 14, P W + gaps [+ bar], 3).
    """
    from anyup.viz.pca import labelled_row

    a = torch.as_tensor(attention).detach()
    if a.ndim == 4:
        a = a[0]
    if a.ndim != 3 or a.shape[0] != len(pixels):
        raise ValueError(f"attention must be (P, h, w) with P = {len(pixels)} pixels, got {tuple(a.shape)}")
    vmax = float(a.float().max())
    panels = [attention_overlay(image, a[i], p, alpha, vmax=vmax, gamma=gamma) for i, p in enumerate(pixels)]
    if labels is None:
        labels = [f"pixel (y={y}, x={x})" for y, x in pixels]
    labels = list(labels)
    if bar:
        panels.append(colorbar(panels[0].shape[0], vmax, gamma))
        labels.append("weight")
    return labelled_row(panels, labels)
