"""Encoders built with timm: ViTs (DINOv2, DINOv3, CLIP, SigLIP/SigLIP2, plain ViT) and CNNs
(ResNet-50, ConvNeXt).

ViTs are created with ``dynamic_img_size=True`` so any multiple of the patch size works. Their
layers are ``"final"`` (last block, final norm applied: what AnyUp was trained on) and
``"block{i}"`` (raw output of block ``i``, 0-based, no norm); prefix tokens (cls, registers) are
always dropped. CNN layers are the stages of timm's ``feature_info``.

Pretrained weights come from the Hugging Face hub (timm's ids), or from a local file
(``weights=PATH``: timm's ``.safetensors``/``.bin``, or the original release format that timm's
checkpoint filter converts, e.g. ``dinov2_vits14_pretrain.pth``), loaded with a strict key check.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
from torch import nn

from anyup.encoders._loading import load_strict, read_weights
from anyup.encoders.base import Encoder
from anyup.encoders.registry import BuildRequest, offline_error

logger = logging.getLogger(__name__)


def _import_timm():
    try:
        import timm
    except ImportError as err:
        raise ImportError('timm encoders need timm: pip install "anyup[encoders]"') from err
    return timm


def _create_from_hub(timm_name: str, **kwargs) -> nn.Module:
    """timm model with pretrained weights from the hub (network). Tests replace this function."""
    from anyup._env import require_network

    # Fail at once offline (HF_HUB_OFFLINE=1, or no route to the hub) instead of after timm's retries.
    require_network("huggingface.co", f"timm/{timm_name}", "")
    timm = _import_timm()
    return timm.create_model(timm_name, pretrained=True, **kwargs)


def _create_timm(request: BuildRequest, **kwargs) -> tuple[nn.Module, str]:
    """The timm model of ``request``, with weights from hub, file or random init, and their source."""
    spec = request.spec
    timm_name = spec.extra["timm_name"]
    timm = _import_timm()
    if request.pretrained and request.weights is None:
        logger.info("fetching pretrained weights of %s from the hub (timm/%s)", spec.name, timm_name)
        try:
            return _create_from_hub(timm_name, **kwargs), f"hub:timm/{timm_name}"
        except Exception as err:  # network, hub, cache: any failure becomes one clear message
            raise offline_error(spec.name, f"the Hugging Face hub (timm/{timm_name})", err) from err
    model = timm.create_model(timm_name, pretrained=False, **kwargs)
    if request.weights is None:
        return model, "random init"
    state = read_weights(request.weights)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)  # converts original release formats, resizes pos embeds
    classifier = model.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    load_strict(model, state, str(request.weights), ignore_unexpected=tuple(c + "." for c in classifier))
    return model, str(request.weights)


# --------------------------------------------------------------------------------------------
# ViTs
class TimmViTEncoder(Encoder):
    """Patch-token maps of a timm ViT: ``final`` (normed) and/or raw ``block{i}`` outputs."""

    model: Any  # a timm VisionTransformer (forward_features / forward_intermediates are timm's API)

    def __init__(self, request: BuildRequest, model: nn.Module, weights: str) -> None:
        super().__init__(request.info(weights))
        self.model = model
        self._blocks = [None if l.name == "final" else int(l.name[len("block") :]) for l in request.layers]

    def _tokens_to_map(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        patches = tokens[:, self.model.num_prefix_tokens :]  # (B, h*w, C): cls/register tokens dropped
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)  # (B, C, h, w)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.info.multiple
        h, w = x.shape[-2] // p, x.shape[-1] // p
        blocks = sorted({i for i in self._blocks if i is not None})
        need_final = None in self._blocks
        out: dict[int | None, torch.Tensor] = {}
        if not blocks:
            out[None] = self._tokens_to_map(self.model.forward_features(x), h, w)
        else:
            res = self.model.forward_intermediates(
                x,
                indices=blocks,
                norm=False,
                output_fmt="NCHW",
                intermediates_only=not need_final,
                stop_early=not need_final,
            )
            if need_final:
                final, inter = res
                out[None] = self._tokens_to_map(final, h, w)
            else:
                inter = res
            out.update(zip(blocks, inter))
        return [out[i] for i in self._blocks]


def build_vit(request: BuildRequest) -> Encoder:
    model, source = _create_timm(request, dynamic_img_size=True, num_classes=0)
    return TimmViTEncoder(request, model, source)


# --------------------------------------------------------------------------------------------
# CNNs
class TimmCNNEncoder(Encoder):
    """Stage outputs of a timm CNN via ``forward_intermediates`` (stops after the deepest one)."""

    model: Any  # a timm CNN (forward_intermediates is timm's API)

    def __init__(self, request: BuildRequest, model: nn.Module, weights: str) -> None:
        super().__init__(request.info(weights))
        self.model = model
        names = [l.name for l in request.spec.layers]
        self._indices = [names.index(l.name) for l in request.layers]

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        wanted = sorted(set(self._indices))
        maps = self.model.forward_intermediates(x, indices=wanted, intermediates_only=True, stop_early=True)
        out = dict(zip(wanted, maps))
        return [out[i] for i in self._indices]


def build_cnn(request: BuildRequest) -> Encoder:
    model, source = _create_timm(request, num_classes=0)
    return TimmCNNEncoder(request, model, source)
