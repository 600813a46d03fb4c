"""The cell-border artifact: does an upsampled map step at the borders of the low-res grid?

An upsampler that leaks the low-res grid into its output (nearest-neighbour copies, a window that
jumps at cell borders, per-cell pooled keys) makes faint blocks in flat image regions: the map's
gradient is larger on the pixel pairs that straddle a low-res cell border than on pairs inside a
cell. :func:`cell_border_energy` measures exactly that ratio:

    ratio = mean ||u(p) - u(q)||^2 over neighbour pairs (p, q) that cross a cell border
            --------------------------------------------------------------------------------
            mean ||u(p) - u(q)||^2 over neighbour pairs inside one cell

both restricted to *flat* image regions (where the guidance image itself has no edge nearby, so
a guided upsampler has no reason to change there). ``ratio = 1``: the grid is invisible; nearest
upsampling gives a very large ratio; bilinear upsampling (``align_corners=False``) gives about 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class BorderEnergy:
    """Result of :func:`cell_border_energy` (energies are per pixel pair, in squared feature units)."""

    ratio: float  # on-border / off-border energy (1 = no visible grid)
    on_border: float  # mean squared step across cell borders, flat pixels
    off_border: float  # mean squared step inside cells, flat pixels
    pairs_on: int  # number of flat pixel pairs across a border
    pairs_off: int  # number of flat pixel pairs inside a cell
    # Mean energy by where the pair's shared edge falls inside a cell (bin 0: on the border), and
    # its largest bin over the mean of the bins: a grid-locked step anywhere in the cell (e.g. where
    # an attention window gains or loses a low-res cell) shows as a peak, not only at the borders.
    phase_profile: list[float] | None = None
    peak_ratio: float = float("nan")


def cell_index(out_len: int, low_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Low-res cell of every output pixel along one axis: ``floor((i + 0.5) * low_len / out_len)``, ``(out_len,)``."""
    i = torch.arange(out_len, device=device, dtype=torch.float64)
    return ((i + 0.5) * low_len / out_len).floor().long().clamp_(0, low_len - 1)


def _phase_bins(out_len: int, low_len: int, bins: int, device: torch.device | str | None) -> torch.Tensor:
    """Phase bin (0 .. bins-1) of the edge between output pixels j and j+1 inside its low-res cell, ``(out_len - 1,)``."""
    t = torch.arange(1, out_len, device=device, dtype=torch.float64) * low_len / out_len  # edge position in cells
    frac = t - t.floor()
    return (frac * bins + 0.5).floor().long() % bins  # bin 0 centred on the cell border


def _interior(out_len: int, low_len: int, device: torch.device | str | None) -> torch.Tensor:
    """Output pixels between the first and the last low-res cell centre, ``(out_len,)`` bool."""
    t = (torch.arange(out_len, device=device, dtype=torch.float64) + 0.5) * low_len / out_len - 0.5
    return (t >= 0) & (t <= low_len - 1)


def flat_mask(image: torch.Tensor, fraction: float = 0.3, radius: int = 2) -> torch.Tensor:
    """Pixels of ``image`` in its flattest ``fraction``: ``(H, W)`` bool.

    Args:
        image: ``(3, H, W)`` or ``(1, H, W)`` float in [0, 1].
        fraction: share of pixels kept, those with the smallest local image gradient.
        radius: the gradient magnitude is max-pooled over ``(2 radius + 1)^2`` pixels, so pixels
            near an edge are not "flat".
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (3, H, W) or (1, H, W), got {tuple(image.shape)}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    grey = image.float().mean(0, keepdim=True)[None]  # (1, 1, H, W)
    gx = F.pad((grey[..., :, 1:] - grey[..., :, :-1]).abs(), (0, 1, 0, 0))
    gy = F.pad((grey[..., 1:, :] - grey[..., :-1, :]).abs(), (0, 0, 0, 1))
    g = F.max_pool2d(torch.maximum(gx, gy), 2 * radius + 1, stride=1, padding=radius)[0, 0]  # (H, W)
    threshold = torch.quantile(g.flatten(), fraction)
    return g <= threshold


def cell_border_energy(
    upsampled: torch.Tensor,
    low_hw: tuple[int, int],
    image: torch.Tensor | None = None,
    flat_fraction: float = 0.3,
) -> BorderEnergy:
    """Energy of the map's gradient on the low-res cell borders vs inside cells, on flat regions.

    Args:
        upsampled: ``(C, H, W)`` (or ``(1, C, H, W)``) upsampled features, any float dtype.
        low_hw: ``(h, w)`` of the low-res map it was upsampled from (``h <= H``, ``w <= W``).
        image: ``(3, H, W)`` guidance image in [0, 1] at the map's resolution (resized to it
            otherwise), used to keep only flat regions; ``None``: every pixel counts.
        flat_fraction: share of the image's flattest pixels used (see :func:`flat_mask`).

    Returns:
        :class:`BorderEnergy`; ``ratio`` is ``nan`` when one of the two pair sets is empty.
    """
    u = upsampled[0] if upsampled.ndim == 4 and upsampled.shape[0] == 1 else upsampled
    if u.ndim != 3:
        raise ValueError(f"upsampled must be (C, H, W) or (1, C, H, W), got {tuple(upsampled.shape)}")
    _, hh, ww = u.shape
    h, w = int(low_hw[0]), int(low_hw[1])
    if not (1 <= h <= hh and 1 <= w <= ww):
        raise ValueError(f"low_hw must be within (1, 1) and the map's size {(hh, ww)}, got {tuple(low_hw)}")
    u = u.float()
    if image is None:
        flat = torch.ones(hh, ww, dtype=torch.bool, device=u.device)
    else:
        img = image.float().to(u.device)
        if img.shape[-2:] != (hh, ww):
            img = F.interpolate(img[None], size=(hh, ww), mode="bilinear", align_corners=False, antialias=True)[0]
        flat = flat_mask(img, flat_fraction)
    ex = (u[:, :, 1:] - u[:, :, :-1]).square().sum(0)  # (H, W-1): step between pixel x and x+1
    ey = (u[:, 1:, :] - u[:, :-1, :]).square().sum(0)  # (H-1, W)
    cx, cy = cell_index(ww, w, u.device), cell_index(hh, h, u.device)
    border_x = (cx[1:] != cx[:-1])[None, :].expand_as(ex)  # (H, W-1)
    border_y = (cy[1:] != cy[:-1])[:, None].expand_as(ey)  # (H-1, W)
    # Pairs within half a cell of the image border are left out: there every upsampler that clamps
    # at the border (bilinear included) is flat, which would lower the inside-cell energy.
    ix, iy = _interior(ww, w, u.device), _interior(hh, h, u.device)
    flat_x = flat[:, 1:] & flat[:, :-1] & (ix[1:] & ix[:-1])[None, :]
    flat_y = flat[1:, :] & flat[:-1, :] & (iy[1:] & iy[:-1])[:, None]
    bins = max(1, round(min(ww / w, hh / h)))
    px = _phase_bins(ww, w, bins, u.device)[None, :].expand_as(ex)  # (H, W-1)
    py = _phase_bins(hh, h, bins, u.device)[:, None].expand_as(ey)  # (H-1, W)
    energies = torch.cat([ex.flatten(), ey.flatten()])
    border = torch.cat([border_x.flatten(), border_y.flatten()])
    keep = torch.cat([flat_x.flatten(), flat_y.flatten()])
    on, off = energies[border & keep], energies[~border & keep]
    e_on = float(on.mean()) if on.numel() else float("nan")
    e_off = float(off.mean()) if off.numel() else float("nan")
    phase = torch.cat([px.flatten(), py.flatten()])[keep]
    e_keep = energies[keep]
    profile = [float(e_keep[phase == b].mean()) if bool((phase == b).any()) else float("nan") for b in range(bins)]
    valid = [v for v in profile if not math.isnan(v)]
    mean_profile = sum(valid) / len(valid) if valid else float("nan")
    peak = max(valid) / mean_profile if valid and mean_profile > 0 else float("nan")
    if not (on.numel() and off.numel()):
        ratio = float("nan")
    elif e_off > 0:
        ratio = e_on / e_off
    else:  # a map constant inside every cell (nearest upsampling)
        ratio = float("inf") if e_on > 0 else 1.0
    return BorderEnergy(ratio, e_on, e_off, int(on.numel()), int(off.numel()), profile, peak)
