"""Frozen vision encoders that produce the low-resolution features AnyUp upsamples.

One registry, name -> builder (see :mod:`anyup.encoders.registry`; the built-in entries are the table in
:mod:`anyup.encoders.registrations`):

>>> import torch
>>> from anyup import encoders
>>> enc = encoders.create("efficientnet_lite0")            # offline: the weights ship in a pip package
>>> enc.info.stride, enc.info.channels
(16, 112)
>>> [f.shape for f in enc(torch.rand(1, 3, 224, 224))]   # one map per requested layer
[torch.Size([1, 112, 14, 14])]

Every encoder takes RGB ``(B, 3, H, W)`` in ``[0, 1]`` (it applies its own normalisation) with H, W
multiples of ``enc.info.multiple``, and returns a list of ``(B, C, H // stride, W // stride)`` maps,
one per requested layer.
Heavy dependencies (timm, torchvision, h5py, the weight packages) are imported only when an
encoder is built.
"""

from __future__ import annotations

from anyup.encoders.base import Encoder, EncoderInfo, LayerInfo, feature_map
from anyup.encoders.registry import ENCODERS, EncoderSpec, create, get_spec, list_encoders, register
from anyup.encoders.wrap import WrapConfig, WrappedEncoder, wrap

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncoderInfo",
    "EncoderSpec",
    "LayerInfo",
    "create",
    "feature_map",
    "get_spec",
    "list_encoders",
    "register",
    "wrap",
    "WrapConfig",
    "WrappedEncoder",
]
