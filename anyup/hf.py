"""Hugging Face Hub style ``save_pretrained`` / ``from_pretrained`` (safetensors + config.json).

Saving and loading a local folder needs nothing beyond the core dependencies; a Hub repository
id needs ``pip install "anyup[hub]"`` (huggingface_hub).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from anyup._atomic import atomic_write, atomic_write_text
from anyup._env import require_network
from anyup.model import ARCH_FIELDS, AnyUp
from anyup.weights import arch_config, check_shapes_before_allocating, load_state_dict_strict, read_state_dict

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
    """Load a folder written by :func:`save_pretrained`, or a Hub repository id (downloads it).

    ``config.json`` is untrusted input: only the architecture fields are read (validated by
    :func:`anyup.weights.arch_config`); run-time settings such as ``max_memory`` never come from it.
    Offline (``HF_HUB_OFFLINE=1`` or no network) a repository id fails at once.
    """
    if not isinstance(repo_or_folder, (str, os.PathLike)):
        raise TypeError(
            f"repo_or_folder must be a folder path or a Hub repository id, got {type(repo_or_folder).__name__}"
        )
    folder = Path(repo_or_folder)
    if not folder.is_dir():
        text = str(repo_or_folder)
        if folder.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
            raise FileNotFoundError(
                f"{text!r} is not a folder written by save_pretrained, nor a Hub repository id like 'owner/name'"
            )
        how = (
            "Download the repository elsewhere (model.safetensors + config.json) and pass its folder: "
            "AnyUp.from_pretrained('/path/to/folder')."
        )
        require_network("huggingface.co", f"Hub repository {text!r}", how)
        hub = _hub()
        try:
            folder = Path(hub.snapshot_download(text, allow_patterns=[WEIGHTS_NAME, CONFIG_NAME], **hub_kwargs))
        except Exception as err:  # noqa: BLE001 - network, auth, missing repo: one clear message
            raise RuntimeError(
                f"could not download Hub repository {text!r} ({err.__class__.__name__}: {err}). {how}"
            ) from None
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(cfg_path)!r} not found: not a folder written by save_pretrained")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(cfg_path)!r} is not valid JSON: {err}") from None
    config = arch_config(raw, repr(str(cfg_path)))
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        check_shapes_before_allocating(weights, config)
    model = AnyUp(config)
    load_state_dict_strict(model, read_state_dict(weights), source=str(weights))
    return model.to(device).eval()


def _hub():
    try:
        import huggingface_hub
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('Hugging Face Hub access needs huggingface_hub: pip install "anyup[hub]"') from err
    return huggingface_hub
