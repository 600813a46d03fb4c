"""Resumable checkpoints and the final safetensors export, all written atomically.

A checkpoint (``torch.save`` of plain dicts, tensors and numbers; loadable with
``weights_only=True``) holds::

    {"format": 1, "step": int, "model": state_dict, "optimizer": state_dict,
     "data": {"epoch": int, "index": int}, "rng": [per-rank RNG states], "config": dict,
     "ema": {"decay": float, "updates": int, "tensors": dict}}   # "ema" only with optim.ema_decay > 0

RNG states cover Python's ``random``, NumPy's global generator, torch's CPU generator and every
CUDA device. Files are written to a temporary name in the same folder and moved into place with
``os.replace``, so a run killed at any instant leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from anyup._atomic import atomic_write

FORMAT = 1


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states as plain Python values and tensors (``weights_only``-loadable)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = cast(
        tuple[str, np.ndarray, int, int, float], np.random.get_state()
    )
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` a checkpoint dict (see the module docstring for its keys)."""
    state = {"format": FORMAT, **state}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


RESUME_KEYS: dict[str, type] = {"step": int, "model": dict, "optimizer": dict, "data": dict, "rng": list}


def load_checkpoint(path: str | os.PathLike, required: dict[str, type] | None = None) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True`` and check its format.

    Every failure (missing, empty, truncated, foreign or malicious file) is one ``ValueError`` /
    ``FileNotFoundError`` naming the file. ``required``: keys that must be present with these
    types (the trainer passes :data:`RESUME_KEYS`).
    """
    from anyup._state import torch_load

    path = Path(path)
    state = torch_load(path, "training checkpoint")  # one clear error naming the file
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an anyup training checkpoint (format {FORMAT})")
    for key, tp in (required or {}).items():
        if not isinstance(state.get(key), tp):
            raise ValueError(
                f"training checkpoint {str(path)!r} is damaged: {key!r} is missing or not a {tp.__name__}; "
                f"delete it to start the run afresh"
            )
    return state


def export_safetensors(model: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write the model's float32 state dict as safetensors (atomically); metadata values JSON-encoded."""
    from safetensors.torch import save_file

    tensors = {
        k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in model.state_dict().items()
    }
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
