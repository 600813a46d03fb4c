"""Checkpoint registry and loading.

``anyup.load(name_or_path)`` resolves a registered name or loads a file path (``.pth`` or
``.safetensors``), with a strict key and shape check, finite values, and never executing a pickle.
A registered name is looked for, in order, in the package, ``$ANYUP_WEIGHTS_DIR``, the cache
(``$ANYUP_CACHE_DIR``, default ``~/.cache/anyup``) and torch.hub's checkpoint folder
(``$TORCH_HOME/hub/checkpoints``); a file found locally must match the registered sha256. Only then
is it downloaded (failing at once when offline). Architecture metadata in a ``.safetensors`` file
is validated (types, ranges, shapes against the tensors in the file) before anything is allocated;
run-time settings (``max_memory``, ``tile_size`` ...) never come from a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anyup._atomic import atomic_write
from anyup._checks import check_arch_fields
from anyup._env import ENV_CACHE_DIR, require_network  # noqa: F401  (ENV_CACHE_DIR re-exported)
from anyup._env import cache_dir as _cache_root
from anyup._registry import Registry
from anyup._state import load_strict, read_state_dict, read_torch_weights, state_dict_of
from anyup.model import ARCH_FIELDS, AnyUp, AnyUpConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_WEIGHTS",
    "WEIGHTS",
    "WeightSpec",
    "arch_config",
    "available_weights",
    "cache_dir",
    "load",
    "load_state_dict_strict",
    "read_state_dict",
    "register_weights",
    "resolve_weights",
    "sha256_file",
    "stored_config",
    "verify_weights",
]

ENV_WEIGHTS_DIR = "ANYUP_WEIGHTS_DIR"  # a folder holding <name>.pth / <name>.safetensors files
PACKAGE_WEIGHTS_DIR = Path(__file__).parent / "weights_data"  # weights shipped inside the package


@dataclass(frozen=True)
class WeightSpec:
    """A registered checkpoint."""

    name: str
    filename: str
    url: str | None  # None: shipped with the package
    sha256: str
    licence: str
    description: str


WEIGHTS: Registry[WeightSpec] = Registry("weights", hint=" (or pass a file path)")


def register_weights(spec: WeightSpec) -> WeightSpec:
    """Add a checkpoint to the registry (names are unique)."""
    return WEIGHTS.register(spec)


# The registered checkpoints (a declarative table).
_RELEASES = "https://github.com/wimmerth/anyup/releases/download"
for _spec in (
    WeightSpec(
        name="anyup_paper",
        filename="anyup_paper.pth",
        url=f"{_RELEASES}/checkpoint/anyup_paper.pth",
        sha256="9d035c0f27114a6f32bdd3d8ed93b6cd39dad4b8f8bf94e69fddbfbf022901b2",
        licence="CC-BY-4.0 (Wimmer et al.)",
        description="Published AnyUp weights trained on DINOv2 ViT-S/14 features",
    ),
    WeightSpec(
        name="anyup_multi_backbone",
        filename="anyup_multi_backbone.pth",
        url=f"{_RELEASES}/checkpoint_v2/anyup_multi_backbone.pth",
        sha256="b6cc407da8986c7e5c9098e61f7531767a9aca8fff20a1bc6c99d488e61aac59",
        licence="CC-BY-4.0 (Wimmer et al.)",
        description="Published AnyUp weights trained on DINOv2-S(+reg), CLIP-B/16, SigLIP-B/16, ViT-B/16",
    ),
    WeightSpec(
        name="anyup_offline",
        filename="anyup_offline.safetensors",
        url=None,  # ships inside the package: works with no network
        sha256="89c10e059322f8d3bb7d9b5235f0ddb865892c36f33499ff35634026de787d2f",
        licence="MIT (trained by the anyup project)",
        description="Our AnyUp weights, trained on CPU over EfficientNet-Lite0 / CRAFT VGG16-BN / HED VGG16 "
        "features of offline photos (see the model card in the README)",
    ),
):
    register_weights(_spec)

DEFAULT_WEIGHTS = "anyup_offline"  # what the CLI and one-call API use when no model is given


def available_weights() -> dict[str, WeightSpec]:
    """All registered checkpoint names and their specs."""
    return dict(WEIGHTS.items())


def cache_dir() -> Path:
    """Where downloads are kept: ``$ANYUP_CACHE_DIR`` (``$ANYUP_CACHE`` deprecated), default ``~/.cache/anyup``."""
    return _cache_root()


def torch_hub_dir() -> Path:
    """torch.hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, so a file is hashed once


def sha256_file(path: str | os.PathLike) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _candidates(spec: WeightSpec) -> list[Path]:
    out = [PACKAGE_WEIGHTS_DIR / spec.filename]
    if os.environ.get(ENV_WEIGHTS_DIR):
        out.append(Path(os.environ[ENV_WEIGHTS_DIR]).expanduser() / spec.filename)
    out.append(cache_dir() / spec.filename)
    out.append(torch_hub_dir() / spec.filename)
    return out


def _check_sha256(name: str, spec: WeightSpec, path: Path) -> Path:
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise ValueError(
            f"{str(path)!r} is not the registered {name!r} (sha256 {digest[:16]}..., expected "
            f"{spec.sha256[:16]}...): a different or damaged file; remove it, or load it by path"
        )
    return path


def resolve_weights(name: str, download: bool = True) -> Path:
    """Local file of a registered checkpoint (sha256-checked): package, ``$ANYUP_WEIGHTS_DIR``, cache,
    torch.hub's checkpoints, then a download."""
    spec = WEIGHTS.get(name)
    candidates = _candidates(spec)
    for path in candidates:
        if path.is_file():
            return _check_sha256(name, spec, path)
    if spec.url is None:
        raise FileNotFoundError(f"weights {name!r} should ship with the package but {candidates[0]} is missing")
    if not download:
        raise FileNotFoundError(f"weights {name!r} not found locally (looked in {[str(p) for p in candidates]})")
    cached, hub_file = cache_dir() / spec.filename, torch_hub_dir() / spec.filename
    how = (
        f"Download {spec.filename} elsewhere and either pass its path "
        f"(anyup.load('/path/to/{spec.filename}') or --model /path/to/{spec.filename}), "
        f"set {ENV_WEIGHTS_DIR}=/folder/holding/it, or copy it to {cached} or {hub_file}."
    )
    try:
        require_network(spec.url, f"weights {name!r} ({spec.url})", how)
        _download(spec.url, cached, spec.sha256)
    except (OSError, RuntimeError) as err:
        raise RuntimeError(
            f"could not download weights {name!r} from {spec.url} ({err.__class__.__name__}: {err}). "
            + ("" if how in str(err) else f"Offline? {how}")
        ) from None
    return cached


def _download(url: str, dest: Path, sha256: str) -> None:
    """Stream ``url`` into ``dest`` (atomically), checking the sha256 before the file appears."""
    from urllib.request import urlopen

    def write(tmp: str) -> None:
        h = hashlib.sha256()
        with open(tmp, "wb") as out, urlopen(url, timeout=30) as resp:  # noqa: S310 (fixed https URLs)
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                h.update(block)
        if h.hexdigest() != sha256:
            raise RuntimeError(f"sha256 mismatch for {url}: got {h.hexdigest()}, expected {sha256}")

    atomic_write(dest, write)


def verify_weights(names: list[str] | None = None, download: bool = False) -> list[tuple[str, str, bool]]:
    """``(name, message, ok)`` for every registered name (or ``names``): never stops at the first problem."""
    rows = []
    for n in names or sorted(WEIGHTS):
        try:
            path = resolve_weights(n, download=download)
            rows.append((n, f"{path} sha256 OK", True))
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            rows.append((n, str(err), False))
    return rows


def load_state_dict_strict(model: AnyUp, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load with a strict key *and shape* check and finite values; errors list what is missing or unexpected."""
    load_strict(model, state, source, what="the AnyUp architecture")


def load(
    name_or_path: str | os.PathLike = DEFAULT_WEIGHTS,
    device: str | torch.device = "cpu",
    config: AnyUpConfig | None = None,
) -> AnyUp:
    """Build AnyUp and load weights by registered name or file path; returns an eval-mode model.

    Args:
        name_or_path: a name from :func:`available_weights` (default: :data:`DEFAULT_WEIGHTS`, the
            offline weights shipped with the package) or a ``.pth``/``.safetensors`` file.
        device: where to put the model.
        config: run-time settings (window ratio, memory cap); architecture fields must match. Default:
            the architecture stored in a ``.safetensors`` file's metadata (``anyup train`` exports
            and ``save_pretrained`` write it), else ``AnyUpConfig()``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"weights must be a registered name {WEIGHTS.names()} or a file path, got "
            f"{name_or_path!r} ({type(name_or_path).__name__})"
        )
    if config is not None and not isinstance(config, AnyUpConfig):
        raise TypeError(f"config must be an AnyUpConfig or None, got {type(config).__name__}")
    p = Path(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in WEIGHTS:
        path = resolve_weights(name_or_path)
    elif p.is_dir():
        raise ValueError(f"{str(p)!r} is a folder; pass a weights file, or use AnyUp.from_pretrained for a folder")
    elif p.suffix in (".pth", ".pt", ".safetensors", ".bin") or p.exists():
        path = p
    else:
        raise ValueError(
            f"{str(name_or_path)!r} is neither a registered weights name {WEIGHTS.names()} nor an existing file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {str(path)!r}")
    if config is not None:
        arch_config({k: getattr(config, k) for k in ARCH_FIELDS}, "config")
    raw = None if path.suffix == ".safetensors" else read_torch_weights(path)  # a torch file is read once
    if config is None:
        config = (stored_config(path) if raw is None else checkpoint_config(raw, path)) or AnyUpConfig()
    check_shapes_before_allocating(path, config)
    model = AnyUp(config)
    state = read_state_dict(path) if raw is None else state_dict_of(raw, path)
    load_state_dict_strict(model, state, source=str(path))
    return model.to(device).eval()


# ------------------------------------------------------------------------------- untrusted metadata
def arch_config(fields: Any, source: str) -> AnyUpConfig:
    """A validated :class:`AnyUpConfig` from untrusted architecture fields (metadata, config.json).

    Only :data:`anyup.model.ARCH_FIELDS` are taken (run-time settings never come from a file);
    the rules are :func:`anyup._checks.check_arch_fields`.
    """
    if not isinstance(fields, dict):
        raise ValueError(f"{source}: the architecture must be a JSON object, got {type(fields).__name__}")
    defaults = AnyUpConfig().to_dict()
    full = {k: fields.get(k, defaults[k]) for k in ARCH_FIELDS}  # missing fields: the published defaults
    return AnyUpConfig(**check_arch_fields(full, source, ARCH_FIELDS))


def _expected_shapes(config: AnyUpConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of ``AnyUp(config)``, computed on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = AnyUp(AnyUpConfig(**{k: getattr(config, k) for k in ARCH_FIELDS}))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_shapes_before_allocating(path: Path, config: AnyUpConfig) -> None:
    """For ``.safetensors``: the file's tensor shapes (from its header) must fit ``config``, before any allocation."""
    if path.suffix != ".safetensors":
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{str(path)!r} is not a valid safetensors file: {err}") from None
    expected = _expected_shapes(config)
    bad = [f"{k}: file {shapes[k]} vs model {v}" for k, v in expected.items() if k in shapes and shapes[k] != v]
    if bad:
        arch = {k: getattr(config, k) for k in ARCH_FIELDS}
        raise ValueError(f"weights {str(path)!r} do not fit the AnyUp architecture {arch}: shape mismatches {bad[:4]}")


def stored_config(path: str | os.PathLike) -> AnyUpConfig | None:
    """The architecture stored with the weights, validated; else ``None``.

    ``.safetensors``: the ``anyup_config`` metadata (JSON). ``.pt``/``.pth``: an ``anyup train``
    checkpoint's ``config["model"]`` (e.g. ``window_edge="soft"``); other torch files have none.
    """
    path = Path(path)
    if path.suffix in (".pt", ".pth") and path.is_file():
        try:
            raw = read_torch_weights(path)
        except ValueError:
            return None  # unreadable: read_state_dict reports it, with the reason
        return checkpoint_config(raw, path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    if path.stat().st_size == 0:
        raise ValueError(f"{str(path)!r} is not a valid safetensors file: it is empty (0 bytes)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{str(path)!r} is not a valid safetensors file: {err}") from None
    if "anyup_config" not in meta:
        return None
    try:
        fields = json.loads(meta["anyup_config"])
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{str(path)!r} has unreadable anyup_config metadata: {err}") from None
    return arch_config(fields, f"{str(path)!r} anyup_config metadata")


def checkpoint_config(obj: Any, path: str | os.PathLike) -> AnyUpConfig | None:
    """The architecture fields of an ``anyup train`` checkpoint object (``{"format": 1, "config": {"model": {...}}}``)
    read from ``path``, validated; ``None`` for anything else (the published .pth files are plain state dicts)."""
    from anyup.train.checkpoint import FORMAT

    if not (isinstance(obj, dict) and obj.get("format") == FORMAT and isinstance(obj.get("config"), dict)):
        return None
    fields = obj["config"].get("model") or {}
    if not isinstance(fields, dict):
        raise ValueError(f"{str(path)!r}: the training checkpoint's config.model is not a mapping: {fields!r}")
    return arch_config({k: v for k, v in fields.items() if k in ARCH_FIELDS}, f"{str(path)!r} config.model")
