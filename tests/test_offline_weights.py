"""The weights shipped inside the package (``anyup_offline``): integrity and measured quality."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import anyup
from anyup.weights import DEFAULT_WEIGHTS, available_weights, resolve_weights, sha256_file


def test_shipped_file_matches_registry_and_loads_strictly(monkeypatch, tmp_path):
    monkeypatch.delenv("ANYUP_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("ANYUP_CACHE_DIR", str(tmp_path))  # prove no cache or network is involved
    spec = available_weights()["anyup_offline"]
    path = resolve_weights("anyup_offline", download=False)
    assert path.suffix == ".safetensors" and path.stat().st_size < 8 << 20
    assert sha256_file(path) == spec.sha256
    model = anyup.load("anyup_offline")  # strict key + shape check inside
    assert DEFAULT_WEIGHTS == "anyup_offline"
    assert sum(p.numel() for p in model.parameters()) == 878_080


def _fidelity(model, enc, image01: torch.Tensor) -> tuple[float, float]:
    """Cosine between features upsampled from the half-size image and the encoder's full-size features."""
    # a multiple of twice the encoder's input multiple, so the half-size image is valid too
    full = anyup.image.resize_to_multiple(image01, 2 * enc.info.multiple, short_side=224)[None]  # (1, 3, H, W)
    small = F.interpolate(full, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        (target,) = enc(full)  # (1, C, h, w)
        (low,) = enc(small)  # (1, C, h/2, w/2)
        guide = anyup.imagenet_normalize(F.interpolate(full, size=small.shape[-2:], mode="bilinear", antialias=True))
        # upsample to the target grid, guided by the small image, then compare cell by cell
        ours = model(guide, low, target.shape[-2:])
        bil = F.interpolate(low, size=target.shape[-2:], mode="bilinear", align_corners=False)
    cos = lambda a: F.cosine_similarity(a, target, dim=1).mean().item()  # noqa: E731
    return cos(ours), cos(bil)


@pytest.mark.slow
def test_shipped_model_beats_untrained_on_held_out_photo():
    skimage = pytest.importorskip("skimage")
    from anyup import encoders

    enc = encoders.create("efficientnet_lite0", layers="stage4")
    image = anyup.load_image(skimage.data.astronaut())  # held out from training
    trained, bilinear = _fidelity(anyup.load("anyup_offline"), enc, image)
    torch.manual_seed(0)
    untrained, _ = _fidelity(anyup.AnyUp().eval(), enc, image)
    assert trained > untrained + 0.02, (trained, untrained, bilinear)


@pytest.mark.slow
@pytest.mark.parametrize(
    "photo, margin",
    [
        ("coffee", 0.015),  # measured at export: anyup_offline 0.6590, bilinear 0.6282
        ("astronaut", 0.006),  # measured at export: anyup_offline 0.5678, bilinear 0.5562
    ],
)
def test_shipped_model_beats_bilinear_on_held_out_photo(photo, margin):
    """Label-free fidelity on photos held out of training, HED VGG16 conv4_3 (an encoder seen in training).

    Not every encoder layer wins: on astronaut, EfficientNet-Lite0 stage4 is below bilinear (0.504 vs
    0.520); the README's model card has the full table.
    """
    skimage = pytest.importorskip("skimage")
    pytest.importorskip("h5py")
    from anyup import encoders

    enc = encoders.create("vgg16_hed", layers="conv4_3")
    image = anyup.load_image(getattr(skimage.data, photo)())
    trained, bilinear = _fidelity(anyup.load("anyup_offline"), enc, image)
    assert trained > bilinear + margin, (trained, bilinear)
