"""Pictures of features and of AnyUp's attention (numpy/PIL only; matplotlib is not needed).

>>> import torch
>>> from anyup.viz import pca_rgb
>>> low, up = torch.randn(64, 8, 8), torch.randn(64, 32, 32)
>>> rgb_low, rgb_up = pca_rgb([low, up])    # shared basis, fit on the first; (H, W, 3) in [0, 1]
>>> rgb_low.shape, rgb_up.shape
((8, 8, 3), (32, 32, 3))
"""

from __future__ import annotations

from anyup.viz.attention import attention_overlay, attention_row, colorbar, heat_colors
from anyup.viz.edges import edge_alignment, gradient_magnitude
from anyup.viz.io import atomic_write, save_png
from anyup.viz.pca import PCABasis, fit_pca, labelled_row, pca_comparison, pca_rgb, to_uint8_hwc

__all__ = [
    "PCABasis",
    "atomic_write",
    "attention_overlay",
    "attention_row",
    "colorbar",
    "edge_alignment",
    "fit_pca",
    "gradient_magnitude",
    "heat_colors",
    "labelled_row",
    "pca_comparison",
    "pca_rgb",
    "save_png",
    "to_uint8_hwc",
]
