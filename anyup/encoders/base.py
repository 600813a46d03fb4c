"""The frozen-encoder interface every registered encoder implements.

An :class:`Encoder` takes an RGB image tensor ``(B, 3, H, W)`` float in ``[0, 1]``, applies its own
input normalisation, and returns ``(B, C, h, w)`` feature maps (a list of them when several layers
were requested as a list). ``H`` and ``W`` must be multiples of ``info.multiple``; then
``h = H // stride`` and ``w = W // stride`` exactly.
"""

from __future__ import annotations

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

    def __init__(self, info: EncoderInfo, return_list: bool) -> None:
        super().__init__()
        self.info = info
        self.return_list = return_list
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

    def forward(self, image: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Features of ``image``.

        Args:
            image: (B, 3, H, W) float RGB in [0, 1]; H and W multiples of ``info.multiple``.

        Returns:
            (B, C, H // stride, W // stride) in the dtype of the encoder's parameters, or a list of
            such maps (one per layer) when the encoder was created with a list of layers.
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
        return maps if self.return_list else maps[0]
