"""Learned methods that live in this package: AnyUp (published or any checkpoint) and the
"high-resolution backbone" upper-bound-style baseline (run the encoder on a larger input)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from anyup._checks import error_summary
from anyup.baselines.base import BaselineUpsampler, MethodUnavailable
from anyup.baselines.guidance import resize
from anyup.weights import DEFAULT_WEIGHTS

if TYPE_CHECKING:
    from anyup.encoders.base import Encoder

logger = logging.getLogger(__name__)


@dataclass
class AnyUpMethodConfig:
    # registered weights name or file: the shipped default (offline), "anyup_multi_backbone" or "anyup_paper"
    weights: str = DEFAULT_WEIGHTS
    window_ratio: float | None = None  # override the attention window half-width (None: as trained, 0.1)
    max_memory: int | None = None  # working-memory cap in bytes (None: automatic)
    device: str = "cpu"


@dataclass
class AnyUpCheckpointConfig:
    checkpoint: str | None = None  # path to a .pth / .safetensors AnyUp state dict (required)
    window_ratio: float | None = None
    max_memory: int | None = None
    device: str = "cpu"


class AnyUpUpsampler(BaselineUpsampler):
    """Wraps an :class:`anyup.AnyUp` model behind the common call signature."""

    def __init__(self, model: nn.Module, max_memory: int | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.max_memory = max_memory

    def upsample(self, image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        if features.dtype == torch.float64:  # the model computes in float32 / half precision only
            features = features.float()
        out = self.model(image.to(dev, torch.float32), features.to(dev), size, max_memory=self.max_memory)
        return out.to(features.device)


def _load_anyup(source: str, device: str, window_ratio: float | None) -> nn.Module:
    import anyup

    model = anyup.load(source, device=device)
    if window_ratio is not None:
        model.window_ratio = window_ratio
    return model


def build_anyup(config: AnyUpMethodConfig) -> AnyUpUpsampler:
    """AnyUp (default: the shipped offline weights); :class:`MethodUnavailable` when the weights cannot be found."""
    try:
        model = _load_anyup(config.weights, config.device, config.window_ratio)
    except (RuntimeError, OSError) as err:
        reason = error_summary(err, with_type=False)
        raise MethodUnavailable(f"anyup: weights {config.weights!r} unavailable: {reason}") from err
    return AnyUpUpsampler(model, config.max_memory)


def build_anyup_checkpoint(config: AnyUpCheckpointConfig) -> AnyUpUpsampler:
    """AnyUp from a checkpoint file (e.g. one written by ``anyup train``)."""
    if not config.checkpoint:
        raise ValueError("anyup_checkpoint needs config checkpoint=PATH (a .pth or .safetensors AnyUp state dict)")
    path = Path(config.checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"AnyUp checkpoint not found: {str(path)!r}")
    return AnyUpUpsampler(_load_anyup(str(path), config.device, config.window_ratio), config.max_memory)


@dataclass
class HighResConfig:
    encoder: Any = "efficientnet_lite0"  # encoder name (anyup.encoders.list_encoders()) or a built Encoder
    factor: float = 2.0  # encoder input = factor x the input that produced the features (h*stride, w*stride)
    weights: str | None = None  # local weights file for the encoder (None: its default pretrained weights)
    pretrained: bool = True  # False: random init (tests)
    layers: Any = None  # encoder layer selection (must give the same channels as the features)
    max_side: int = 2048  # cap on the encoder input's longer side (memory / time)
    device: str = "cpu"


class HighResBackbone(BaselineUpsampler):
    """Run the encoder itself at ``factor`` x its input size, then resize its features to the output.

    The encoder input is the guidance image denormalised to ``[0, 1]`` and resized (antialiased
    bilinear) to ``factor * (h * stride, w * stride)`` rounded to the encoder's size multiple,
    where ``(h, w)`` is the grid of the given features; the given features are only checked
    (batch, channels). Not an upsampler of the given features: a reference for what a
    larger input would give, at ``factor**2`` times the encoder cost (more for ViTs).
    """

    def __init__(self, encoder: Encoder, config: HighResConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config
        if not config.factor > 0:
            raise ValueError(f"HighResConfig.factor must be > 0, got {config.factor}")

    def input_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Encoder input ``(H_in, W_in)`` for a feature grid ``(h, w)``."""
        info = self.encoder.info
        m = info.multiple
        size = [max(m, round(self.config.factor * g * info.stride / m) * m) for g in grid]
        longest = max(size)
        if longest > self.config.max_side:
            scale = self.config.max_side / longest
            size = [max(m, math.floor(s * scale / m) * m) for s in size]
        return size[0], size[1]

    def upsample(self, image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        from anyup.image import imagenet_denormalize

        info = self.encoder.info
        if features.shape[1] != info.channels:
            raise ValueError(
                f"features have {features.shape[1]} channels but encoder {info.name!r} gives {info.channels}; "
                f"the high-res backbone baseline needs features from the same encoder and layer"
            )
        dev = next(iter(self.encoder.buffers()), torch.empty(0)).device
        rgb = imagenet_denormalize(image.float()).clamp(0, 1)
        x = (
            resize(rgb, self.input_size((features.shape[-2], features.shape[-1]))).clamp(0, 1).to(dev)
        )  # (B, 3, H_in, W_in)
        with torch.no_grad():
            feats = self.encoder(x)[0]  # (B, C, h, w)
        return resize(feats.float(), size).to(features.device)  # (B, C, H', W')


def build_highres(config: HighResConfig) -> HighResBackbone:
    enc = config.encoder
    if isinstance(enc, str):
        from anyup import encoders

        try:
            enc = encoders.create(
                enc, weights=config.weights, pretrained=config.pretrained, layers=config.layers, device=config.device
            )
        except (RuntimeError, OSError, ImportError) as err:
            if isinstance(err, FileNotFoundError) and config.weights:
                raise
            reason = error_summary(err, with_type=False)
            raise MethodUnavailable(f"highres: encoder {config.encoder!r} unavailable: {reason}") from err
    elif not (isinstance(enc, nn.Module) and hasattr(enc, "info")):
        raise TypeError(f"HighResConfig.encoder must be an encoder name or an anyup Encoder, got {type(enc).__name__}")
    return HighResBackbone(enc, config)
