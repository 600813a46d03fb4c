"""anyup: universal feature upsampling for any frozen vision encoder.

Implements AnyUp (Wimmer et al., "AnyUp: Universal Feature Upsampling", ICLR 2026).

>>> import torch, anyup
>>> model = anyup.load()                                  # the bundled default weights (anyup_offline)
>>> image = torch.randn(1, 3, 56, 84)                     # (B, 3, H, W), ImageNet-normalised
>>> lowres_features = torch.randn(1, 384, 4, 6)           # (B, C, h, w) of any encoder
>>> model(image, lowres_features).shape                   # (B, C, H, W)
torch.Size([1, 384, 56, 84])
>>> model = anyup.load("anyup_multi_backbone")          # published weights: a download  # doctest: +SKIP
"""

from __future__ import annotations

from anyup._version import __version__
from anyup.image import imagenet_normalize, load_image
from anyup.model import AnyUp, AnyUpConfig
from anyup.predictor import Upsampler, upsample
from anyup.weights import available_weights, load

__all__ = [
    "AnyUp",
    "AnyUpConfig",
    "Upsampler",
    "available_weights",
    "imagenet_normalize",
    "load",
    "load_image",
    "upsample",
    "__version__",
]
