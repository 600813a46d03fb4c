"""The one interface every upsampling method implements, and its input checks.

An *upsampler* is an ``nn.Module`` called as ``up(image, features, output_size)``:

* ``image``: ``(B, 3, H, W)`` float, normalised with ImageNet mean/std (the guidance image);
* ``features``: ``(B, C, h, w)`` float, any ``C >= 1``, from any frozen encoder;
* ``output_size``: ``(H', W')`` positive ints (or one int for a square; ``None`` means ``(H, W)``);
* returns ``(B, C, H', W')`` in the dtype (and on the device) of ``features``.
"""

from __future__ import annotations

from numbers import Integral
from typing import Sequence, Union

import torch
from torch import nn

OutputSize = Union[int, Sequence[int], None]


class MethodUnavailable(RuntimeError):
    """A method cannot be built here (missing weights, package or network); the message says why."""


def parse_output_size(output_size: OutputSize, image: torch.Tensor | None = None) -> tuple[int, int]:
    """Return ``(H', W')`` from an int, a pair of ints or ``None`` (the image's own size)."""
    if output_size is None:
        if image is None:
            raise ValueError("output_size=None needs an image to take the size from")
        return int(image.shape[-2]), int(image.shape[-1])
    if isinstance(output_size, Integral) and not isinstance(output_size, bool):
        size: tuple = (int(output_size), int(output_size))
    elif isinstance(output_size, torch.Size) or (
        isinstance(output_size, Sequence) and not isinstance(output_size, str)
    ):
        size = tuple(output_size)
    else:
        raise ValueError(f"output_size must be an int or a pair (H', W') of ints, got {output_size!r}")
    if len(size) != 2 or not all(isinstance(s, Integral) and not isinstance(s, bool) for s in size):
        raise ValueError(f"output_size must be a pair (H', W') of ints, got {output_size!r}")
    if min(size) < 1:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return int(size[0]), int(size[1])


def check_inputs(image: torch.Tensor, features: torch.Tensor, output_size: OutputSize) -> tuple[int, int]:
    """Validate the common call signature; return the output size ``(H', W')``.

    Raises ``ValueError`` (naming the bad value) for a wrong rank, a non-RGB image, a batch
    mismatch, non-float tensors, empty maps or a bad ``output_size``.
    """
    if not isinstance(image, torch.Tensor) or not isinstance(features, torch.Tensor):
        raise TypeError(
            f"image and features must be tensors, got {type(image).__name__} and {type(features).__name__}"
        )
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got shape {tuple(image.shape)}")
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, h, w), got shape {tuple(features.shape)}")
    if image.shape[0] != features.shape[0]:
        raise ValueError(
            f"batch mismatch: image has batch {image.shape[0]}, features have batch {features.shape[0]}"
        )
    if not image.is_floating_point() or not features.is_floating_point():
        raise ValueError(f"image and features must be float tensors, got {image.dtype} and {features.dtype}")
    if min(features.shape[1:]) < 1 or min(image.shape[2:]) < 1:
        raise ValueError(
            f"empty input: image {tuple(image.shape)}, features {tuple(features.shape)}"
        )
    return parse_output_size(output_size, image)


class Upsampler(nn.Module):
    """Base class: validates inputs, then calls :meth:`upsample` with a parsed ``(H', W')``.

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
