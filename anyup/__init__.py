"""anyup: universal feature upsampling for any frozen vision encoder.

Implements AnyUp (Wimmer et al., "AnyUp: Universal Feature Upsampling", ICLR 2026).

>>> import anyup
>>> model = anyup.load("anyup_multi_backbone")          # doctest: +SKIP
>>> hr = model(image, lowres_features)                   # (B, C, H, W)  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from anyup.image import imagenet_normalize, load_image  # noqa: E402
from anyup.model import AnyUp, AnyUpConfig  # noqa: E402
from anyup.weights import available_weights, load  # noqa: E402
from anyup.predictor import Upsampler, upsample  # noqa: E402

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
