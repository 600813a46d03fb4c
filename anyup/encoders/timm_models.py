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
from anyup.encoders.base import Encoder, LayerInfo
from anyup.encoders.registry import BuildRequest, EncoderSpec, offline_error, register
from anyup.image import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


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
        super().__init__(request.info(weights), request.return_list)
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


def _build_vit(request: BuildRequest) -> Encoder:
    model, source = _create_timm(request, dynamic_img_size=True, num_classes=0)
    return TimmViTEncoder(request, model, source)


def _vit(name, family, timm_name, dim, depth, patch, mean, std, description) -> None:
    layers = (LayerInfo("final", patch, dim),) + tuple(LayerInfo(f"block{i}", patch, dim) for i in range(depth))
    register(
        EncoderSpec(
            name=name,
            family=family,
            builder=_build_vit,
            layers=layers,
            default_layer="final",
            mean=mean,
            std=std,
            weights_source=f"hub timm/{timm_name}",
            offline=False,
            patch_size=patch,
            block_prefix="block",
            description=description,
            extra={"timm_name": timm_name, "depth": depth},
        )
    )


for _size, _dim, _depth in (("s", 384, 12), ("b", 768, 12), ("l", 1024, 24), ("g", 1536, 40)):
    _arch = {"s": "small", "b": "base", "l": "large", "g": "giant"}[_size]
    _vit(
        f"dinov2_vit{_size}14",
        "dinov2",
        f"vit_{_arch}_patch14_dinov2.lvd142m",
        _dim,
        _depth,
        14,
        IMAGENET_MEAN,
        IMAGENET_STD,
        f"DINOv2 ViT-{_size.upper()}/14",
    )
    _vit(
        f"dinov2_vit{_size}14_reg",
        "dinov2_reg",
        f"vit_{_arch}_patch14_reg4_dinov2.lvd142m",
        _dim,
        _depth,
        14,
        IMAGENET_MEAN,
        IMAGENET_STD,
        f"DINOv2 ViT-{_size.upper()}/14 with 4 registers",
    )
for _size, _dim, _depth in (("s", 384, 12), ("b", 768, 12), ("l", 1024, 24)):
    _arch = {"s": "small", "b": "base", "l": "large"}[_size]
    _vit(
        f"dinov3_vit{_size}16",
        "dinov3",
        f"vit_{_arch}_patch16_dinov3.lvd1689m",
        _dim,
        _depth,
        16,
        IMAGENET_MEAN,
        IMAGENET_STD,
        f"DINOv3 ViT-{_size.upper()}/16 (LVD-1689M)",
    )
_vit(
    "clip_vitb16",
    "clip",
    "vit_base_patch16_clip_224.openai",
    768,
    12,
    16,
    CLIP_MEAN,
    CLIP_STD,
    "OpenAI CLIP ViT-B/16 image tower",
)
_vit(
    "clip_vitl14",
    "clip",
    "vit_large_patch14_clip_224.openai",
    1024,
    24,
    14,
    CLIP_MEAN,
    CLIP_STD,
    "OpenAI CLIP ViT-L/14 image tower",
)
_vit("siglip_vitb16", "siglip", "vit_base_patch16_siglip_224.webli", 768, 12, 16, HALF, HALF, "SigLIP ViT-B/16 (WebLI)")
_vit(
    "siglip2_vitb16",
    "siglip2",
    "vit_base_patch16_siglip_224.v2_webli",
    768,
    12,
    16,
    HALF,
    HALF,
    "SigLIP 2 ViT-B/16 (WebLI)",
)
_vit(
    "vit_s16",
    "vit",
    "vit_small_patch16_224.augreg_in21k_ft_in1k",
    384,
    12,
    16,
    HALF,
    HALF,
    "ViT-S/16, AugReg ImageNet-21k -> 1k",
)
_vit(
    "vit_b16",
    "vit",
    "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    768,
    12,
    16,
    HALF,
    HALF,
    "ViT-B/16, AugReg ImageNet-21k -> 1k",
)


# --------------------------------------------------------------------------------------------
# CNNs
class TimmCNNEncoder(Encoder):
    """Stage outputs of a timm CNN via ``forward_intermediates`` (stops after the deepest one)."""

    model: Any  # a timm CNN (forward_intermediates is timm's API)

    def __init__(self, request: BuildRequest, model: nn.Module, weights: str) -> None:
        super().__init__(request.info(weights), request.return_list)
        self.model = model
        names = [l.name for l in request.spec.layers]
        self._indices = [names.index(l.name) for l in request.layers]

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        wanted = sorted(set(self._indices))
        maps = self.model.forward_intermediates(x, indices=wanted, intermediates_only=True, stop_early=True)
        out = dict(zip(wanted, maps))
        return [out[i] for i in self._indices]


def _build_cnn(request: BuildRequest) -> Encoder:
    model, source = _create_timm(request, num_classes=0)
    return TimmCNNEncoder(request, model, source)


def _cnn(name, family, timm_name, stages, default, description) -> None:
    register(
        EncoderSpec(
            name=name,
            family=family,
            builder=_build_cnn,
            layers=tuple(LayerInfo(n, s, c) for n, s, c in stages),
            default_layer=default,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            weights_source=f"hub timm/{timm_name}",
            offline=False,
            description=description,
            extra={"timm_name": timm_name},
        )
    )


_cnn(
    "resnet50",
    "resnet",
    "resnet50.a1_in1k",
    (("stem", 2, 64), ("layer1", 4, 256), ("layer2", 8, 512), ("layer3", 16, 1024), ("layer4", 32, 2048)),
    "layer3",
    "ResNet-50 (timm A1 recipe, ImageNet-1k)",
)
_CONVNEXT_T = (("stage0", 4, 96), ("stage1", 8, 192), ("stage2", 16, 384), ("stage3", 32, 768))
_cnn(
    "convnext_tiny",
    "convnext",
    "convnext_tiny.fb_in22k_ft_in1k",
    _CONVNEXT_T,
    "stage2",
    "ConvNeXt-T, ImageNet-22k -> 1k",
)
_cnn(
    "convnext_base",
    "convnext",
    "convnext_base.fb_in22k_ft_in1k",
    (("stage0", 4, 128), ("stage1", 8, 256), ("stage2", 16, 512), ("stage3", 32, 1024)),
    "stage2",
    "ConvNeXt-B, ImageNet-22k -> 1k",
)
_cnn(
    "dinov3_convnext_tiny",
    "convnext",
    "convnext_tiny.dinov3_lvd1689m",
    _CONVNEXT_T,
    "stage2",
    "ConvNeXt-T distilled from DINOv3 (LVD-1689M)",
)
