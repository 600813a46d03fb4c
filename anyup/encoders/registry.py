"""The encoder registry: one name -> one :class:`EncoderSpec` (metadata + builder).

Builders receive the resolved request (layers, weights file, pretrained flag) and return an
:class:`~anyup.encoders.base.Encoder`; :func:`create` freezes it and moves it to the device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from anyup._checks import error_summary
from anyup._registry import Registry
from anyup.encoders.base import Encoder, EncoderInfo, LayerInfo

logger = logging.getLogger(__name__)

LayerArg = None | str | int | Sequence[str | int]


@dataclass(frozen=True)
class BuildRequest:
    """What :func:`create` asks a builder for."""

    spec: EncoderSpec
    layers: tuple[LayerInfo, ...]
    weights: Path | None  # a local weights file, or None (hub / bundled package / random init)
    pretrained: bool

    def info(self, weights: str) -> EncoderInfo:
        """The :class:`EncoderInfo` of the encoder being built; ``weights`` says where they came from."""
        first = self.layers[0]
        return EncoderInfo(
            name=self.spec.name,
            family=self.spec.family,
            stride=first.stride,
            channels=first.channels,
            multiple=self.spec.multiple_for(self.layers),
            layers=self.layers,
            mean=self.spec.mean,
            std=self.spec.std,
            weights=weights,
        )


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: what it returns and how to build it."""

    name: str
    family: str  # e.g. "dinov2", "clip", "resnet"; the stress test counts families
    builder: Callable[[BuildRequest], Encoder]
    layers: tuple[LayerInfo, ...]  # every selectable output, shallow to deep
    default_layer: str
    mean: tuple[float, float, float]  # input normalisation (RGB, on [0, 1] values)
    std: tuple[float, float, float]
    weights_source: str  # where pretrained weights come from, for humans
    offline: bool  # True when real weights ship in an installable package (no hub needed)
    patch_size: int | None = None  # ViTs: input multiple regardless of the layer
    block_prefix: str | None = None  # ViTs: integer layer i means f"{block_prefix}{i}"
    description: str = ""
    extra: dict = field(default_factory=dict, compare=False)  # builder-specific settings

    @property
    def default(self) -> LayerInfo:
        return self.layer(self.default_layer)

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(
            f"encoder {self.name!r} has no layer {name!r}; available: {', '.join(l.name for l in self.layers)}"
        )

    def multiple_for(self, layers: Sequence[LayerInfo]) -> int:
        """Input-size multiple that makes every requested map exactly ``H // stride``."""
        if self.patch_size is not None:
            return self.patch_size
        return max(layer.stride for layer in layers)

    def resolve_layers(self, layers: LayerArg) -> tuple[LayerInfo, ...]:
        """Requested layers (None: the default one; a name or int; a list of them) -> their infos, in order."""
        if layers is None:
            return (self.default,)
        if isinstance(layers, (str, int)) and not isinstance(layers, bool):
            return (self._one(layers),)
        if isinstance(layers, bool):
            raise TypeError(f"layers is None, a layer name or int, or a list of them; got {layers!r}")
        items = list(layers)
        if not items:
            raise ValueError(f"layers must name at least one layer of {self.name!r}, got an empty list")
        return tuple(self._one(x) for x in items)

    def _one(self, layer: str | int) -> LayerInfo:
        if isinstance(layer, bool) or not isinstance(layer, (str, int)):
            raise TypeError(f"a layer is a name or an int, got {layer!r}")
        if isinstance(layer, str) and layer.lstrip("-").isdigit():
            layer = int(layer)
        if isinstance(layer, int):
            if self.block_prefix is not None:
                blocks = [l for l in self.layers if l.name.startswith(self.block_prefix)]
                if not -len(blocks) <= layer < len(blocks):
                    raise ValueError(f"block index {layer} out of range for {self.name!r} ({len(blocks)} blocks)")
                return blocks[layer]
            if not -len(self.layers) <= layer < len(self.layers):
                raise ValueError(f"layer index {layer} out of range for {self.name!r} ({len(self.layers)} layers)")
            return self.layers[layer]
        return self.layer(layer)


def _populate() -> None:
    from anyup.encoders import registrations  # noqa: F401  (registers the built-in encoders on import)


ENCODERS: Registry[EncoderSpec] = Registry("encoder", populate=_populate, sort=True)
# Name prefixes that load a model of another library (see anyup.encoders.adapters), e.g. "hf:facebook/dinov2-small".
ADAPTER_PREFIXES = ("hf", "torchhub", "open_clip")


def _check(spec: EncoderSpec) -> None:
    if spec.default_layer not in {l.name for l in spec.layers}:
        raise ValueError(f"default layer {spec.default_layer!r} of {spec.name!r} is not one of its layers")


def register(spec: EncoderSpec) -> EncoderSpec:
    """Add an encoder to the registry (names are unique)."""
    return ENCODERS.register(spec, check=_check)


def list_encoders(family: str | None = None, offline_only: bool = False) -> list[str]:
    """Registered encoder names (sorted), optionally of one family / with offline weights only."""
    return [
        n for n, s in ENCODERS.items() if (family is None or s.family == family) and (not offline_only or s.offline)
    ]


def get_spec(name: str) -> EncoderSpec:
    """The :class:`EncoderSpec` registered under ``name`` (ValueError listing the registered names if unknown)."""
    return ENCODERS.get(name)


def create(
    name: str,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    layers: LayerArg = None,
    device: str | torch.device = "cpu",
) -> Encoder:
    """Build a frozen, eval-mode encoder.

    Args:
        name: a name from :func:`list_encoders`, or ``hf:<id or folder>``, ``torchhub:[REPO_OR_DIR:]<entry>``,
            ``open_clip:<model>[/<tag>]`` (see :mod:`anyup.encoders.adapters`).
        weights: a local weights file. Without it, pretrained weights come from the hub (timm
            models; fails with instructions when offline) or from their installed package
            (``efficientnet_lite0``, ``vgg16_bn_craft``, ``vgg16_hed``).
        pretrained: ``False`` builds a random-init encoder (``weights`` must then be None).
        layers: ``None`` (the default layer), a layer name, an int (ViT block index / stage index),
            or a list of those.
        device: where to put the encoder.

    Returns:
        An :class:`Encoder`: ``enc(image)`` with image (B, 3, H, W) in [0, 1] gives a list with one
        (B, C, h, w) map per requested layer.

    Example:
        >>> import torch
        >>> enc = create("efficientnet_lite0")
        >>> [f.shape for f in enc(torch.rand(1, 3, 224, 320))]
        [torch.Size([1, 112, 14, 20])]
    """
    prefix, sep, target = name.partition(":") if isinstance(name, str) else ("", "", "")
    adapter = bool(sep) and prefix in ADAPTER_PREFIXES  # hf:<id>, torchhub:<entry>, open_clip:<model>
    spec = None if adapter else get_spec(name)
    path = None
    if weights is not None:
        if not pretrained:
            raise ValueError("pass either weights=PATH or pretrained=False, not both")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file for encoder {name!r} not found: {str(path)!r}")
    if spec is None:
        from anyup.encoders.adapters import ADAPTER_BUILDERS

        encoder = ADAPTER_BUILDERS[prefix](target, path, pretrained, layers)
        logger.info("built encoder %s (layers %s, weights: %s)", name, encoder.info.layer_names, encoder.info.weights)
        return encoder.freeze().to(device)
    selected = spec.resolve_layers(layers)
    request = BuildRequest(spec=spec, layers=selected, weights=path, pretrained=pretrained)
    encoder = spec.builder(request)
    logger.info("built encoder %s (layers %s, weights: %s)", name, encoder.info.layer_names, encoder.info.weights)
    return encoder.freeze().to(device)


def fetch_error(
    what: str, err: BaseException, get: str, encoder: str, weights: bool = True, also: str = ""
) -> RuntimeError:
    """The one shape of "could not fetch" errors: what failed and why, then how to do it offline.

    Args:
        what: what could not be done ("fetch the pretrained weights of encoder 'x' from hub:...").
        get: how to get the files on another machine ("Download the weights file elsewhere").
        encoder: the ``--encoder`` value that uses the local copy; ``weights``: it also needs a weights file.
        also: a last alternative (", or use pretrained=False for a random-init encoder").
    """
    file_flag, file_arg = (" --encoder-weights PATH", ", weights=PATH") if weights else ("", "")
    return RuntimeError(
        f"could not {what} ({error_summary(err)}). Offline? {get}, copy it here and pass it: on the command line "
        f"`--encoder {encoder}{file_flag}`, in Python `anyup.encoders.create({encoder!r}{file_arg})`{also}."
    )


def offline_error(name: str, source: str, err: BaseException) -> RuntimeError:
    """The error raised when pretrained weights cannot be fetched: says exactly how to pass a file."""
    what = f"fetch the pretrained weights of encoder {name!r} from {source}"
    also = "; or use pretrained=False for a random-init encoder"
    return fetch_error(what, err, "Download the weights file elsewhere", name, also=also)
