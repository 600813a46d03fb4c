"""The reference computation, as the authors' code does it: whole maps and a dense window mask.

Memory ``O(H'*W'*h*w)`` (the (H'*W', h*w) mask and four heads of logits): used only by the tests
(as the oracle for every engine path and for gradients) and by the benchmarks (as the baseline).
Not part of the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anyup.engine import Window
from anyup.layers import acc_dtype, pixel_coordinates


def dense_forward(
    model, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """AnyUp's forward pass, module by module, on whole maps: (B, C, H', W')."""
    b, c, h, w = features.shape
    size = tuple(output_size) if output_size is not None else tuple(image.shape[-2:])
    image = image.to(features.dtype)
    e = model.image_encoder(image)  # (B, D, H, W)
    e = model.rope(e, pixel_coordinates(e.shape[-2], e.device), pixel_coordinates(e.shape[-1], e.device))
    q = F.adaptive_avg_pool2d(model.query_encoder(e), size)  # (B, D, H', W')
    k = F.adaptive_avg_pool2d(model.key_encoder(e), (h, w))  # (B, D, h, w)
    kf = model.key_features_encoder(F.normalize(features, dim=1))  # (B, D, h, w)
    k = model.aggregation(torch.cat([k, kf], dim=1))
    cfg = model.config
    window = Window.build(size, (h, w), cfg.window_ratio, features.device, cfg.window_edge, acc_dtype(features))
    mask = window.dense_mask()  # (H'*W', h*w): bool, or the soft edge's additive bias
    return model.cross_decode(q, k, features, mask)
