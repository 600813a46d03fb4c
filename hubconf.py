"""torch.hub entry points, named and called as in the authors' repository.

>>> upsampler = torch.hub.load("<owner>/anyup", "anyup", use_natten=False, pretrained=True, device="cpu")  # doctest: +SKIP
>>> hr_features = upsampler(hr_image, lr_features, output_size=(448, 448), q_chunk_size=128)          # doctest: +SKIP

``use_natten`` is accepted for compatibility: this implementation's windowed attention needs no
NATTEN (``use_natten=True`` is refused with a clear message rather than silently ignored).
"""

dependencies = ["torch", "numpy", "safetensors"]


def _build(name: str, use_natten: bool, pretrained: bool, device: str):
    from anyup import AnyUp, load

    if use_natten:
        raise ValueError(
            "use_natten=True: this implementation has its own exact windowed attention and does not use NATTEN; "
            "pass use_natten=False (the result is the same), or choose a backend with model(..., attention='sdpa')"
        )
    return load(name, device=device) if pretrained else AnyUp().to(device)


def anyup(use_natten: bool = False, pretrained: bool = True, device: str = "cpu"):
    """AnyUp with the paper's weights (trained on DINOv2 ViT-S/14 features)."""
    return _build("anyup_paper", use_natten, pretrained, device)


def anyup_multi_backbone(use_natten: bool = False, pretrained: bool = True, device: str = "cpu"):
    """AnyUp with the multi-backbone weights (DINOv2-S(+reg), CLIP-B/16, SigLIP-B/16, ViT-B/16)."""
    return _build("anyup_multi_backbone", use_natten, pretrained, device)
