"""torch.hub entry points, named as in the authors' repository.

>>> model = torch.hub.load("<owner>/anyup", "anyup_multi_backbone")   # doctest: +SKIP
"""

dependencies = ["torch", "numpy", "safetensors"]


def anyup(*, pretrained: bool = True, device: str = "cpu"):
    """AnyUp with the paper's weights (trained on DINOv2 ViT-S/14 features)."""
    from anyup import AnyUp, load

    return load("anyup_paper", device=device) if pretrained else AnyUp().to(device)


def anyup_multi_backbone(*, pretrained: bool = True, device: str = "cpu"):
    """AnyUp with the multi-backbone weights (DINOv2-S(+reg), CLIP-B/16, SigLIP-B/16, ViT-B/16)."""
    from anyup import AnyUp, load

    return load("anyup_multi_backbone", device=device) if pretrained else AnyUp().to(device)
