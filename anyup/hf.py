"""Hugging Face Hub style ``save_pretrained`` / ``from_pretrained`` (safetensors + config.json).

Saving and loading a local folder needs nothing beyond the core dependencies; a Hub repository
id needs ``pip install "anyup[hub]"`` (huggingface_hub).
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import torch

from anyup._atomic import atomic_write, atomic_write_text
from anyup.model import ARCH_FIELDS, AnyUp, AnyUpConfig
from anyup.weights import load_state_dict_strict, read_state_dict

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_pretrained(model: AnyUp, folder: str | os.PathLike, push_to_hub: str | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (atomically); optionally push."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(model.config, k) for k in ARCH_FIELDS}
    config["architecture"] = "AnyUp"
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    arch = json.dumps({k: config[k] for k in ARCH_FIELDS})  # also in the file, so anyup.load(file) works alone
    atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt", "anyup_config": arch}))
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2))
    if push_to_hub:
        hub = _hub()
        hub.HfApi().upload_folder(repo_id=push_to_hub, folder_path=str(folder))
    return folder


def from_pretrained(repo_or_folder: str | os.PathLike, device: str | torch.device = "cpu", **hub_kwargs) -> AnyUp:
    """Load a folder written by :func:`save_pretrained`, or a Hub repository id (downloads it)."""
    folder = Path(repo_or_folder)
    if not folder.is_dir():
        hub = _hub()
        folder = Path(hub.snapshot_download(str(repo_or_folder), allow_patterns=[WEIGHTS_NAME, CONFIG_NAME], **hub_kwargs))
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(cfg_path)!r} not found: not a folder written by save_pretrained")
    raw = json.loads(cfg_path.read_text())
    known = {f.name for f in fields(AnyUpConfig)}
    model = AnyUp(AnyUpConfig(**{k: v for k, v in raw.items() if k in known}))
    load_state_dict_strict(model, read_state_dict(folder / WEIGHTS_NAME), source=str(folder))
    return model.to(device).eval()


def _hub():
    try:
        import huggingface_hub
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('Hugging Face Hub access needs huggingface_hub: pip install "anyup[hub]"') from err
    return huggingface_hub
