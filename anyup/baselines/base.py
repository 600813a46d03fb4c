"""The one interface every upsampling method implements (its input checks live in :mod:`anyup._checks`).

An *upsampler* is an ``nn.Module`` called as ``up(image, features, output_size)``:

* ``image``: ``(B, 3, H, W)`` float, normalised with ImageNet mean/std (the guidance image);
* ``features``: ``(B, C, h, w)`` float, any ``C >= 1``, from any frozen encoder;
* ``output_size``: ``(H', W')`` positive ints (or one int for a square; ``None`` means ``(H, W)``);
* returns ``(B, C, H', W')`` in the dtype (and on the device) of ``features``.
"""

from __future__ import annotations

import torch
from torch import nn

from anyup._checks import OutputSize, check_image_and_features, check_output_memory, parse_output_size
from anyup._deprecation import deprecated_aliases

__all__ = ["BaselineUpsampler", "MethodUnavailable", "OutputSize", "check_inputs", "parse_output_size"]


class MethodUnavailable(RuntimeError):
    """A method cannot be built here (missing weights, package or network); the message says why."""


def check_inputs(image: torch.Tensor, features: torch.Tensor, output_size: OutputSize) -> tuple[int, int]:
    """Validate the common call signature (see :mod:`anyup._checks`); return the output size ``(H', W')``."""
    check_image_and_features(image, features)
    size = parse_output_size(output_size, image)
    check_output_memory((*features.shape[:2], *size), features.dtype, features.device)
    return size


class BaselineUpsampler(nn.Module):
    """Base class of every upsampling method (not :class:`anyup.Upsampler`, the image-in wrapper):
    validates inputs, then calls :meth:`upsample` with a parsed ``(H', W')``.

    Subclasses implement ``upsample(image, features, size) -> (B, C, H', W')``; the base casts
    the result back to the features' dtype. ``name`` is the registry name the method was built as.
    """

    name: str = "upsampler"

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: OutputSize = None) -> torch.Tensor:
        size = check_inputs(image, features, output_size)
        out = self.upsample(image, features, size)  # (B, C, H', W')
        return out.to(features.dtype)

    def upsample(self, image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover  (abstract)

    def extra_repr(self) -> str:
        cfg = getattr(self, "config", None)
        return f"name={self.name!r}, config={cfg!r}" if cfg is not None else f"name={self.name!r}"


# Renamed in 0.2.0 (it clashed with anyup.Upsampler, the image-in wrapper); the old name warns for one release.
__getattr__ = deprecated_aliases(__name__, {"Upsampler": ("BaselineUpsampler", BaselineUpsampler)})
