"""The one strict state-dict reader and loader (AnyUp weights, encoder weights, training checkpoints).

* :func:`read_state_dict` reads ``.safetensors`` or a ``weights_only=True`` torch file (a pickle
  is never executed) and turns every failure — empty, text, truncated, foreign or malicious — into
  one ``ValueError`` that names the file and keeps torch's useful part ("Unsupported global ...").
* :func:`torch_load` is that safe ``torch.load`` for any plain-data file (training checkpoints).
* :func:`load_strict` loads with a strict key *and* shape check, after checking the values are finite.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _torch_reason(err: BaseException) -> str:
    """The informative part of a ``torch.load`` error, on one line."""
    text = str(err)
    for marker in (r"WeightsUnpickler error:", r"trusted source\."):  # drop torch's advice, keep the reason
        m = re.search(marker + r"\s*(.*?)\s*(?:Check the documentation|$)", text, re.S)
        if m and m.group(1).strip():
            return _one_line(m.group(1))
    if isinstance(err, EOFError):
        return "the file ends early (empty or truncated)"
    if isinstance(err, (KeyError, UnicodeDecodeError)) or not text.strip():
        return f"not a PyTorch file ({err.__class__.__name__}: {text or 'no detail'})"
    return _one_line(text)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def torch_load(path: str | os.PathLike, what: str = "PyTorch file") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {str(path)!r}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says it all
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises ~8 types for bad files; all mean "cannot load"
        raise ValueError(
            f"{what} {str(path)!r} cannot be loaded safely (weights_only=True refused it or it is corrupt): "
            f"{_torch_reason(err)}"
        ) from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain tensor state dict from ``.safetensors`` or a ``weights_only`` torch file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if path.stat().st_size == 0:
            raise ValueError(f"{str(path)!r} is not a valid safetensors file: it is empty (0 bytes)")
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{str(path)!r} is not a valid safetensors file: {err}") from None
    return state_dict_of(read_torch_weights(path), path)


def read_torch_weights(path: str | os.PathLike) -> Any:
    """The object in a ``weights_only`` torch weights file (a state dict or an ``anyup train`` checkpoint)."""
    try:
        return torch_load(path, "weights file")
    except ValueError as err:
        raise ValueError(f"{err} (not a plain PyTorch state dict)") from None


def state_dict_of(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensor state dict in ``obj`` read from ``path``: itself, or a training checkpoint's ``model``."""
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # a training checkpoint of ours
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(
            f"{str(path)!r} is not a plain PyTorch state dict: it holds a {type(obj).__name__}, "
            f"not a dict of name -> tensor"
        )
    return obj


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights with NaN or inf values, naming the first bad tensor."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"weights {source} contain NaN or inf values in {len(bad)} tensor(s), e.g. {bad[:3]}")


def load_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    ignore_unexpected: Iterable[str] = (),
    what: str = "this module",
) -> None:
    """Load ``state`` into ``module``: finite values, every key present with the right shape, none extra.

    Args:
        source: names the file in errors. ``what``: names the target ("the AnyUp architecture").
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
            f"weights {source} do not fit {what}: {len(missing)} missing keys {missing[:4]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:4]}, shape mismatches {shapes[:4]}"
        )
    check_finite(state, source)
    module.load_state_dict(state, strict=True)
