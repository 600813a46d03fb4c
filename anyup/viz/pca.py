"""Feature maps as colour images: one PCA basis shared by several maps, components -> RGB.

Fitting the basis on the low-resolution features and projecting the bilinear and AnyUp outputs
onto the same basis (with the same colour scaling) makes the panels directly comparable: AnyUp's
output stays in the input feature space, so its colours match the low-res ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anyup._checks import one_map

DEFAULT_MAX_SIDE = 1024  # long side of each pca_comparison panel (larger maps are area-averaged down)
MAX_FIT_ROWS = 65536  # pixels used to fit the basis (random subset beyond that, fixed seed)


@dataclass
class PCABasis:
    """``project(f)`` maps (C, H, W) features to (H, W, k) values in [0, 1]."""

    mean: torch.Tensor  # (C,)
    components: torch.Tensor  # (k, C), unit rows, sign fixed (largest loading positive)
    low: torch.Tensor  # (k,) 1st percentile of the fit projections
    high: torch.Tensor  # (k,) 99th percentile

    def project(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        f = _as_chw(features)
        c, h, w = f.shape
        if c != self.mean.numel():
            raise ValueError(f"features have C={c} channels but the PCA basis was fit on C={self.mean.numel()}")
        x = f.reshape(c, -1).T - self.mean  # (H*W, C)
        p = (x @ self.components.T - self.low) / (self.high - self.low).clamp_min(1e-8)  # (H*W, k)
        return p.clamp(0, 1).reshape(h, w, -1).numpy().astype(np.float32)


def _as_chw(features: torch.Tensor | np.ndarray, what: str = "features") -> torch.Tensor:
    return one_map(features, what).float().cpu()  # (C, H, W)


def fit_pca(features: torch.Tensor | np.ndarray, n_components: int = 3) -> PCABasis:
    """PCA basis of the pixels of a (C, H, W) map (rows = pixels, columns = channels)."""
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    f = _as_chw(features)
    c = f.shape[0]
    x = f.reshape(c, -1).T.double()  # (N, C)
    if x.shape[0] > MAX_FIT_ROWS:
        g = torch.Generator().manual_seed(0)
        x = x[torch.randperm(x.shape[0], generator=g)[:MAX_FIT_ROWS]]
    mean = x.mean(0)
    xc = x - mean
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)  # (min(N, C), C)
    comps = vh[:n_components]
    if comps.shape[0] < n_components:  # fewer channels (or pixels) than components: pad with zeros
        comps = torch.cat([comps, comps.new_zeros(n_components - comps.shape[0], c)])
    idx = comps.abs().argmax(dim=1, keepdim=True)
    comps = comps * torch.sign(comps.gather(1, idx)).clamp_min(0).mul(2).sub(1)  # deterministic signs
    proj = xc @ comps.T  # (N, k)
    low = torch.quantile(proj, 0.01, dim=0)
    high = torch.quantile(proj, 0.99, dim=0)
    high = torch.where(high - low < 1e-8, low + 1.0, high)  # constant component: map to the low end
    return PCABasis(mean.float(), comps.float(), low.float(), high.float())


def pca_rgb(
    features_list: Sequence[torch.Tensor | np.ndarray], n_components: int = 3, fit_index: int = 0
) -> list[np.ndarray]:
    """Colour several feature maps with one shared PCA basis.

    Args:
        features_list: maps of the same C, each (C, H, W) or (1, C, H, W); sizes may differ.
        n_components: PCA components kept (3 gives RGB).
        fit_index: which map the basis (and colour scaling) is fit on, e.g. the low-res features.

    Returns:
        One (H, W, n_components) float32 array in [0, 1] per input map.

    Example:
        >>> low, up = torch.randn(64, 8, 8), torch.randn(64, 32, 32)
        >>> [a.shape for a in pca_rgb([low, up])]
        [(8, 8, 3), (32, 32, 3)]
    """
    if not features_list:
        raise ValueError("features_list is empty")
    if not -len(features_list) <= fit_index < len(features_list):
        raise ValueError(f"fit_index {fit_index} out of range for {len(features_list)} maps")
    basis = fit_pca(features_list[fit_index], n_components)
    return [basis.project(f) for f in features_list]


def to_uint8_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An RGB image (3, H, W) / (1, 3, H, W) tensor in [0, 1], or (H, W, 3) array, as uint8 (H, W, 3)."""
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 4:
            t = t[0]
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"expected an RGB tensor (3, H, W), got {tuple(image.shape)}")
        arr = t.permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr


def labelled_row(panels: Sequence[np.ndarray], labels: Sequence[str], gap: int = 4) -> np.ndarray:
    """Panels (H, W_i, 3) uint8 side by side on white, each with a label above; (H + 14, sum W + gaps, 3)."""
    from PIL import Image, ImageDraw

    h = max(p.shape[0] for p in panels)
    widths = [p.shape[1] for p in panels]
    header = 14
    canvas = Image.new("RGB", (sum(widths) + gap * (len(panels) - 1), h + header), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, label, w in zip(panels, labels, widths):
        canvas.paste(Image.fromarray(panel), (x, header))
        draw.text((x + 2, 1), label, fill=(0, 0, 0))
        x += w + gap
    return np.asarray(canvas)


def pca_comparison(
    image: torch.Tensor,
    lowres: torch.Tensor,
    upsampled: torch.Tensor,
    bilinear: torch.Tensor | None = None,
    labels: Sequence[str] = ("image", "low-res", "bilinear", "AnyUp"),
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> np.ndarray:
    """image | low-res | bilinear | AnyUp, the features coloured with one PCA basis fit on the low-res map.

    Args:
        image: (3, H, W) or (1, 3, H, W) RGB in [0, 1], at the output size.
        lowres: (C, h, w) or (1, C, h, w) features (shown with nearest-neighbour enlargement).
        upsampled: (C, H, W) or (1, C, H, W), e.g. AnyUp's output.
        bilinear: optional (C, H, W); default: bilinear upsampling of ``lowres`` to the panel size.
        max_side: panels are drawn at most this many pixels on their long side: a larger ``image``
            and ``upsampled`` are area-averaged down first (so a 2000x3000 output costs a
            ~700x1024 picture, not copies of the full map) and the default bilinear panel is drawn at
            the panel size. ``None`` draws at (H, W).

    Returns:
        A numpy ``uint8`` array (H' + 14, 4 W' + 12, 3) (RGB, ready for :func:`anyup.viz.save_png`):
        four panels of (H', W') = (H, W), or (H, W) scaled to fit ``max_side``, with a 14-pixel
        label strip on top and 4-pixel white gaps.
    """
    import torch.nn.functional as F

    low = _as_chw(lowres, "lowres")
    up_t = torch.as_tensor(upsampled).detach()
    up_t = up_t[0] if up_t.ndim == 4 and up_t.shape[0] == 1 else up_t
    if up_t.ndim != 3:
        raise ValueError(f"expected upsampled (C, H, W) or (1, C, H, W), got {tuple(up_t.shape)}")
    h, w = panel_size((up_t.shape[-2], up_t.shape[-1]), max_side)
    up = _area_resize(up_t, (h, w))
    img = torch.as_tensor(image).detach()
    img = _area_resize(img[0] if img.ndim == 4 else img, (h, w)) if img.ndim in (3, 4) else img
    if bilinear is None:
        bilinear = F.interpolate(low[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    else:
        bilinear = _area_resize(torch.as_tensor(bilinear).detach(), (h, w))
    rgb_low, rgb_bil, rgb_up = pca_rgb([low, bilinear, up], n_components=3, fit_index=0)
    low_big = np.asarray(
        F.interpolate(torch.from_numpy(rgb_low).permute(2, 0, 1)[None], size=(h, w), mode="nearest")[0].permute(1, 2, 0)
    )
    panels = [to_uint8_hwc(img), to_uint8_hwc(low_big), to_uint8_hwc(rgb_bil), to_uint8_hwc(rgb_up)]
    return labelled_row(panels, labels)


def panel_size(size: tuple[int, int], max_side: int | None = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(H, W) scaled (aspect kept) so the long side is at most ``max_side`` (unchanged if it already is)."""
    h, w = size
    if max_side is None or max(h, w) <= max_side:
        return h, w
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}")
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _area_resize(x: torch.Tensor, size: tuple[int, int], band_rows: int = 256) -> torch.Tensor:
    """(C, H, W) -> (C, *size) float32, equal to ``adaptive_avg_pool2d``, reading ``x`` in row bands.

    Never makes a float copy of the whole input (bilinear instead when enlarging).
    """
    if x.ndim == 4:
        x = x[0]
    if tuple(x.shape[-2:]) == tuple(size):
        return x.float().cpu()
    hh = x.shape[-2]
    h, w = size
    if h > hh or w > x.shape[-1]:
        return torch.nn.functional.interpolate(x.float().cpu()[None], size=size, mode="bilinear", align_corners=False)[
            0
        ]
    out = []
    for i0 in range(0, h, band_rows):  # output rows [i0, i1) average input rows [floor(i0 H/h), ceil(i1 H/h))
        i1 = min(h, i0 + band_rows)
        y0, y1 = (i0 * hh) // h, -((-i1 * hh) // h)
        band = x[:, y0:y1].float().cpu()[None]  # (1, C, y1 - y0, W)
        pooled = torch.nn.functional.adaptive_avg_pool2d(band, (y1 - y0, w))  # columns first
        rows = [pooled[..., (i * hh) // h - y0 : -((-(i + 1) * hh) // h) - y0, :].mean(-2) for i in range(i0, i1)]
        out.append(torch.stack(rows, -2)[0])  # (C, i1 - i0, w)
    return torch.cat(out, -2)
