"""Checkpoint registry and loading.

``anyup.load(name_or_path)`` resolves a registered name (download URL, sha256, cache folder,
``ANYUP_WEIGHTS_DIR`` for a local folder of weights) or loads a file path (``.pth`` or
``.safetensors``), with a strict key check and never executing a pickle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from anyup.model import ARCH_FIELDS, AnyUp, AnyUpConfig

logger = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "ANYUP_WEIGHTS_DIR"  # a folder holding <name>.pth / <name>.safetensors files
ENV_CACHE_DIR = "ANYUP_CACHE"  # where downloads are kept (default ~/.cache/anyup)
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


_REGISTRY: dict[str, WeightSpec] = {}


def register_weights(spec: WeightSpec) -> None:
    _REGISTRY[spec.name] = spec


register_weights(
    WeightSpec(
        name="anyup_paper",
        filename="anyup_paper.pth",
        url="https://github.com/wimmerth/anyup/releases/download/checkpoint/anyup_paper.pth",
        sha256="9d035c0f27114a6f32bdd3d8ed93b6cd39dad4b8f8bf94e69fddbfbf022901b2",
        licence="CC-BY-4.0 (Wimmer et al.)",
        description="Published AnyUp weights trained on DINOv2 ViT-S/14 features",
    )
)
register_weights(
    WeightSpec(
        name="anyup_multi_backbone",
        filename="anyup_multi_backbone.pth",
        url="https://github.com/wimmerth/anyup/releases/download/checkpoint_v2/anyup_multi_backbone.pth",
        sha256="b6cc407da8986c7e5c9098e61f7531767a9aca8fff20a1bc6c99d488e61aac59",
        licence="CC-BY-4.0 (Wimmer et al.)",
        description="Published AnyUp weights trained on DINOv2-S(+reg), CLIP-B/16, SigLIP-B/16, ViT-B/16",
    )
)


register_weights(
    WeightSpec(
        name="anyup_offline",
        filename="anyup_offline.safetensors",
        url=None,  # ships inside the package: works with no network
        sha256="8c3ec793f9714b151c9406bd6c5f6357a45f105295be8f2ec42fcc25d971bb36",
        licence="MIT (trained by the anyup project)",
        description="Our AnyUp weights, trained on CPU over EfficientNet-Lite0 / CRAFT VGG16-BN / HED VGG16 "
        "features of offline photos (see the model card in the README)",
    )
)

DEFAULT_WEIGHTS = "anyup_offline"  # what the CLI and one-call API use when no model is given


def available_weights() -> dict[str, WeightSpec]:
    """All registered checkpoint names and their specs."""
    return dict(_REGISTRY)


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR, Path.home() / ".cache" / "anyup"))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_weights(name: str, download: bool = True) -> Path:
    """Local file of a registered checkpoint: package, ``$ANYUP_WEIGHTS_DIR``, cache, then download."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown weights {name!r}; registered names: {sorted(_REGISTRY)} (or pass a file path)")
    spec = _REGISTRY[name]
    candidates = [PACKAGE_WEIGHTS_DIR / spec.filename]
    if os.environ.get(ENV_WEIGHTS_DIR):
        candidates.append(Path(os.environ[ENV_WEIGHTS_DIR]) / spec.filename)
    cached = cache_dir() / spec.filename
    candidates.append(cached)
    for path in candidates:
        if path.is_file():
            return path
    if spec.url is None:
        raise FileNotFoundError(f"weights {name!r} should ship with the package but {candidates[0]} is missing")
    if not download:
        raise FileNotFoundError(f"weights {name!r} not found locally (looked in {[str(p) for p in candidates]})")
    try:
        _download(spec.url, cached, spec.sha256)
    except (OSError, RuntimeError) as err:
        raise RuntimeError(
            f"could not download weights {name!r} from {spec.url} ({err.__class__.__name__}: {err}). "
            f"Offline? Download {spec.filename} elsewhere and either pass its path "
            f"(anyup.load('/path/to/{spec.filename}') or --model /path/to/{spec.filename}), "
            f"set {ENV_WEIGHTS_DIR}=/folder/holding/it, or copy it to {cached}."
        ) from err
    return cached


def _download(url: str, dest: Path, sha256: str) -> None:
    from urllib.request import urlopen

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=30) as resp:  # noqa: S310 (fixed https URLs)
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                h.update(block)
        if h.hexdigest() != sha256:
            raise RuntimeError(f"sha256 mismatch for {url}: got {h.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a plain tensor state dict from ``.safetensors`` or a ``weights_only`` torch file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{str(path)!r} is not a valid safetensors file: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as err:
        raise ValueError(
            f"{str(path)!r} is not a plain PyTorch state dict that can be loaded safely "
            f"(weights_only=True refused it or it is corrupt): {str(err).splitlines()[0]}"
        ) from err
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # a training checkpoint of ours
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors (got {type(obj).__name__})")
    return obj


def load_state_dict_strict(model: AnyUp, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load with a strict key *and shape* check; errors list what is missing or unexpected."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad_shapes:
        raise ValueError(
            f"{source} does not fit the AnyUp architecture: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"shape mismatches {bad_shapes[:5]}"
        )
    model.load_state_dict(state, strict=True)


def load(
    name_or_path: str | os.PathLike = "anyup_multi_backbone",
    device: str | torch.device = "cpu",
    config: AnyUpConfig | None = None,
) -> AnyUp:
    """Build AnyUp and load weights by registered name or file path; returns an eval-mode model.

    Args:
        name_or_path: a name from :func:`available_weights` or a ``.pth``/``.safetensors`` file.
        device: where to put the model.
        config: run-time settings (window ratio, memory cap); architecture fields must match. Default:
            the architecture stored in a ``.safetensors`` file's metadata (``anyup train`` exports
            and ``save_pretrained`` write it), else ``AnyUpConfig()``.
    """
    p = Path(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in _REGISTRY:
        path = resolve_weights(name_or_path)
    elif p.suffix in (".pth", ".pt", ".safetensors", ".bin") or p.exists():
        path = p
    else:
        raise ValueError(
            f"{str(name_or_path)!r} is neither a registered weights name {sorted(_REGISTRY)} nor an existing file"
        )
    if config is None:
        config = stored_config(path)
    model = AnyUp(config)
    load_state_dict_strict(model, read_state_dict(path), source=str(path))
    return model.to(device).eval()


def stored_config(path: str | os.PathLike) -> AnyUpConfig | None:
    """The architecture in a ``.safetensors`` file's ``anyup_config`` metadata (JSON), if any."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is not a valid safetensors file: {err}") from err
    if "anyup_config" not in meta:
        return None
    try:
        fields = json.loads(meta["anyup_config"])
        return AnyUpConfig(**{k: v for k, v in fields.items() if k in ARCH_FIELDS})
    except (json.JSONDecodeError, TypeError, AttributeError) as err:
        raise ValueError(f"{str(path)!r} has unreadable anyup_config metadata: {err}") from err
