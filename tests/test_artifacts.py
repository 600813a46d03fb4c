"""The cell-border artifact measure (anyup.eval.artifacts) on constructed maps and a real photo."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anyup.eval.artifacts import cell_border_energy, cell_index, flat_mask


def test_cell_index_matches_nearest_upsampling():
    low = torch.arange(7.0).view(1, 1, 1, 7)
    up = F.interpolate(low, size=(1, 30), mode="nearest-exact")[0, 0, 0]
    assert torch.equal(cell_index(30, 7), up.long())


def test_nearest_is_all_border_and_bilinear_is_not():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(1, 16, 8, 8, generator=g)
    near = F.interpolate(low, size=(64, 64), mode="nearest-exact")[0]
    bil = F.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)[0]
    assert math.isinf(cell_border_energy(near, (8, 8)).ratio)
    r = cell_border_energy(bil, (8, 8))
    assert 0.8 < r.ratio < 1.25, r
    # a step added on the cell borders is picked up in proportion to its size
    step = torch.zeros(1, 64, 64)
    step[..., 32:] = 1.0  # one border column (between x = 31 and 32 = cells 3 and 4)
    assert cell_border_energy(bil + 3 * step, (8, 8)).ratio > 1.5 * r.ratio


def test_flat_mask_excludes_edges_that_justify_a_step():
    image = torch.full((3, 64, 64), 0.5)
    image[:, :, 32:] = 0.9  # an image edge exactly on a cell border
    image += 0.001 * torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))
    mask = flat_mask(image, fraction=0.5)
    assert not mask[:, 30:34].any()
    g = torch.Generator().manual_seed(2)
    smooth = F.interpolate(torch.randn(1, 4, 8, 8, generator=g), size=(64, 64), mode="bilinear")[0]
    stepped = smooth.clone()
    stepped[:, :, 32:] += 5.0  # the guided-upsampler step that follows the image edge
    with_mask = cell_border_energy(stepped, (8, 8), image, flat_fraction=0.5).ratio
    without = cell_border_energy(stepped, (8, 8)).ratio
    assert without > 3 * with_mask
    assert with_mask == pytest.approx(cell_border_energy(smooth, (8, 8), image, flat_fraction=0.5).ratio)


def test_real_photo_nearest_vs_bilinear():
    data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(data.chelsea().copy()).permute(2, 0, 1).float()[None] / 255  # (1, 3, 300, 451)
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    low = F.adaptive_avg_pool2d(img, (14, 14))  # a "feature map" with real image structure
    near = F.interpolate(low, size=(224, 224), mode="nearest-exact")[0]
    bil = F.interpolate(low, size=(224, 224), mode="bilinear")[0]
    r_near = cell_border_energy(near, (14, 14), img[0]).ratio
    r_bil = cell_border_energy(bil, (14, 14), img[0]).ratio
    assert r_near > 10 and 0.7 < r_bil < 1.4, (r_near, r_bil)


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="low_hw"):
        cell_border_energy(torch.zeros(2, 8, 8), (16, 4))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        cell_border_energy(torch.zeros(8, 8), (2, 2))
    with pytest.raises(ValueError, match="fraction"):
        flat_mask(torch.zeros(3, 8, 8), 0.0)


def test_phase_profile_finds_a_grid_locked_step_inside_cells():
    """A step at the same place inside every cell (as where an attention window jumps) is a peak."""
    g = torch.Generator().manual_seed(3)
    low = torch.randn(1, 8, 8, 8, generator=g)
    bil = F.interpolate(low, size=(128, 128), mode="bilinear")[0]  # 16 px per cell
    x = torch.arange(128)
    stepped = bil + 2.0 * ((x + 10) // 16).float()[None, None, :]  # a staircase: one jump at phase 6 of every cell
    r_bil, r_step = cell_border_energy(bil, (8, 8)), cell_border_energy(stepped, (8, 8))
    assert len(r_step.phase_profile) == 16 and r_bil.peak_ratio < 1.3
    assert r_step.peak_ratio > 3 and max(range(16), key=lambda b: r_step.phase_profile[b]) == 6
    assert r_step.ratio < 1  # the border ratio alone misses it (the steps are inside the cells)
