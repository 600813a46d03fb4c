"""The frozen-encoder interface every registered encoder implements.

An :class:`Encoder` takes an RGB image tensor ``(B, 3, H, W)`` float in ``[0, 1]``, applies its own
input normalisation, and returns a list of ``(B, C, h, w)`` feature maps, one per requested layer
(a one-element list for one layer). ``H`` and ``W`` must be multiples of ``info.multiple``; then
``h = H // stride`` and ``w = W // stride`` exactly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from anyup._checks import check_encoder_input


@dataclass(frozen=True)
class LayerInfo:
    """One selectable output of an encoder."""

    name: str
    stride: int  # input pixels per feature cell
    channels: int


@dataclass(frozen=True)
class EncoderInfo:
    """What a built encoder returns. ``stride``/``channels`` describe the first returned map."""

    name: str
    family: str
    stride: int
    channels: int
    multiple: int  # required multiple of the input height and width
    layers: tuple[LayerInfo, ...]  # the returned maps, in order
    mean: tuple[float, float, float]  # input normalisation applied inside the encoder
    std: tuple[float, float, float]
    weights: str  # where the weights came from: "random init", a file path, "hub:<id>", "package:<name>"

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)


class Encoder(nn.Module):
    """A frozen feature extractor with its own normalisation.

    Subclasses implement :meth:`extract`, which receives the *normalised* input and returns one
    ``(B, C, h, w)`` map per requested layer, in the order of ``info.layers``.
    """

    mean: torch.Tensor  # (1, 3, 1, 1) buffer, registered in __init__
    std: torch.Tensor  # (1, 3, 1, 1) buffer

    def __init__(self, info: EncoderInfo, return_list: bool | None = None) -> None:
        super().__init__()
        if return_list is not None:
            warnings.warn(
                "Encoder(info, return_list) is deprecated and ignored: an encoder always returns a list of maps",
                DeprecationWarning,
                stacklevel=2,
            )
        self.info = info
        self.register_buffer("mean", torch.tensor(info.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info.std).view(1, 3, 1, 1), persistent=False)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def freeze(self) -> Encoder:
        """Eval mode, no gradients for the parameters."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Encoder:
        # Frozen: BatchNorm statistics and dropout never switch to training behaviour.
        return super().train(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Features of ``image``.

        Args:
            image: (B, 3, H, W) float RGB in [0, 1]; H and W multiples of ``info.multiple``.

        Returns:
            One (B, C, H // stride, W // stride) map per layer of ``info.layers`` (in that order), in the
            dtype of the encoder's parameters; a one-element list when one layer was requested.
        """
        check_encoder_input(image, self.info.name, self.info.multiple)
        h, w = image.shape[-2:]
        dtype = self.mean.dtype
        x = (image.to(dtype) - self.mean) / self.std  # (B, 3, H, W)
        maps = self.extract(x)
        for layer, f in zip(self.info.layers, maps):
            expected = (h // layer.stride, w // layer.stride)
            if tuple(f.shape[-2:]) != expected or f.shape[1] != layer.channels:
                raise RuntimeError(
                    f"{self.info.name}: layer {layer.name!r} returned {tuple(f.shape)}, expected "
                    f"(B, {layer.channels}, {expected[0]}, {expected[1]})"
                )
        if len(maps) != len(self.info.layers):
            raise RuntimeError(
                f"{self.info.name}: extract returned {len(maps)} maps for {len(self.info.layers)} layers"
            )
        return list(maps)


def feature_map(
    maps: list[torch.Tensor] | tuple[torch.Tensor, ...], index: int = 0, who: str = "encoder"
) -> torch.Tensor:
    """Map ``index`` (default the first; ``-1`` the last) of an encoder's output: the list every
    :class:`Encoder` returns, one ``(B, C, h, w)`` map per layer.

    For code that accepts any module as an encoder (training, validation): a module that returns a
    bare tensor gets a ``TypeError`` saying how to make it follow the contract, rather than having its
    first batch item taken for a map.
    """
    if not isinstance(maps, (list, tuple)) or not maps:
        raise TypeError(
            f"{who} must return a non-empty list of (B, C, h, w) feature maps (the anyup Encoder contract), "
            f"got {type(maps).__name__}; wrap a module with anyup.encoders.wrap(module)"
        )
    return maps[index]
