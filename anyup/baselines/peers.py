"""Published peer upsamplers loaded through ``torch.hub``: FeatUp, JAFAR, LoftUp and NAF.

Their code and weights come from GitHub / Hugging Face, so on an offline machine they are
*unavailable*: :func:`anyup.baselines.create` raises :class:`MethodUnavailable` with a one-line
reason, quickly (a cached hub checkout is used if present; otherwise a DNS/TCP probe of
github.com with a short timeout decides before ``torch.hub`` is ever called). To run them offline,
clone the repository elsewhere, pre-fetch its weights into the torch/HF caches, and pass
``repo_dir=/path/to/clone``.

Each peer is backbone-specific (its weights were trained for one encoder's features): choose the
entry point / backbone matching the features you upsample (``entry`` and ``kwargs``).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyup._checks import error_summary
from anyup.baselines.base import BaselineUpsampler, MethodUnavailable
from anyup.baselines.guidance import resize

logger = logging.getLogger(__name__)


@dataclass
class PeerConfig:
    repo: str = ""  # GitHub "owner/name" of the torch.hub repository
    entry: str = ""  # hubconf entry point
    kwargs: dict = field(default_factory=dict)  # keyword arguments of the entry point
    repo_dir: str | None = None  # local clone (torch.hub source="local"); skips the network
    timeout: float = 3.0  # seconds for the reachability probe of github.com
    device: str = "cpu"


@dataclass
class FeatUpConfig(PeerConfig):
    """FeatUp JBU stack (Fu et al., ICLR 2024); ``model.upsampler(features, image)`` gives 16x, then resized."""

    repo: str = "mhamilton723/FeatUp"
    entry: str = "dinov2"  # also "dino16", "vit", "clip", "resnet50", "maskclip"
    kwargs: dict = field(default_factory=lambda: {"use_norm": True})


@dataclass
class JAFARConfig(PeerConfig):
    """JAFAR (Couairon et al., NeurIPS 2025); ``jafar(image, features, (H', W'))``."""

    repo: str = "PaulCouairon/JAFAR"
    entry: str = "jafar"
    kwargs: dict = field(default_factory=lambda: {"backbone_name": "vit_small_patch14_dinov2.lvd142m", "device": "cpu"})


@dataclass
class LoftUpConfig(PeerConfig):
    """LoftUp (Huang et al., 2025); ``upsampler(features, image)`` gives the image size, then resized."""

    repo: str = "andrehuang/loftup"
    entry: str = "loftup_dinov2s"  # also loftup_dinov2b, loftup_clip, loftup_siglip, loftup_siglip2, ..._reg
    kwargs: dict = field(default_factory=lambda: {"pretrained": True})


@dataclass
class NAFConfig(PeerConfig):
    """NAF (Chambon et al., 2025), encoder-agnostic; ``naf(image, features, (H', W'))``. Needs ``natten``."""

    repo: str = "valeoai/NAF"
    entry: str = "naf"
    kwargs: dict = field(default_factory=lambda: {"pretrained": True, "device": "cpu"})


def github_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether a TCP connection to github.com:443 opens within ``timeout`` seconds (DNS included)."""
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            with socket.create_connection(("github.com", 443), timeout=timeout):
                result.append((True, ""))
        except OSError as err:
            result.append((False, error_summary(err)))

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)  # getaddrinfo has no timeout of its own
    return result[0] if result else (False, f"no answer within {timeout:.1f} s")


def cached_hub_dir(repo: str) -> Path | None:
    """An existing ``torch.hub`` checkout of ``owner/name`` (any branch), or None."""
    owner, _, name = repo.partition("/")
    hub = Path(torch.hub.get_dir())
    if not hub.is_dir():
        return None
    found = sorted(p for p in hub.glob(f"{owner}_{name}_*") if (p / "hubconf.py").is_file())
    return found[0] if found else None


def hub_load(method: str, config: PeerConfig) -> Any:
    """Load ``config.entry`` from a local clone, the hub cache, or GitHub; MethodUnavailable otherwise."""
    source, where = "github", config.repo
    if config.repo_dir:
        path = Path(config.repo_dir).expanduser()
        if not (path / "hubconf.py").is_file():
            raise FileNotFoundError(
                f"{method}: repo_dir {str(path)!r} has no hubconf.py (expected a clone of {config.repo})"
            )
        source, where = "local", str(path)
    else:
        cached = cached_hub_dir(config.repo)
        if cached is not None:
            source, where = "local", str(cached)
        else:
            ok, why = github_reachable(config.timeout)
            if not ok:
                raise MethodUnavailable(
                    f"{method}: torch.hub repo {config.repo} is not cached in {torch.hub.get_dir()} and github.com "
                    f"is unreachable ({why}); clone it elsewhere and pass repo_dir=PATH"
                )
    try:
        if source == "local":
            return torch.hub.load(where, config.entry, source="local", **config.kwargs)
        return torch.hub.load(where, config.entry, trust_repo=True, **config.kwargs)
    except Exception as err:  # third-party code: any failure (missing deps, weights download) = unavailable
        raise MethodUnavailable(
            f"{method}: torch.hub.load({where!r}, {config.entry!r}) failed: {error_summary(err)}"
        ) from err


class PeerUpsampler(BaselineUpsampler):
    """Adapts a peer's calling convention to ``up(image, features, output_size)``.

    ``call(model, image, features, size)`` runs the peer and may return any spatial size; the
    result is resized (bilinear, antialiased when shrinking) to ``size``.
    """

    def __init__(self, model: nn.Module, call: Callable[..., torch.Tensor], config: PeerConfig) -> None:
        super().__init__()
        self.model = model.eval() if isinstance(model, nn.Module) else model
        self.call = call
        self.config = config

    def upsample(self, image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        dev = torch.device(self.config.device)
        out = self.call(self.model, image.float().to(dev), features.float().to(dev), size)
        if out.ndim != 4 or out.shape[:2] != features.shape[:2]:
            raise RuntimeError(
                f"{self.name}: peer returned shape {tuple(out.shape)} for features {tuple(features.shape)}"
            )
        return resize(out.float(), size).to(features.device)


def _featup_call(model: Any, image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    up = getattr(model, "upsampler", model)
    return up(features, image)


def _feats_image_call(model: Any, image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return model(features, image)


def _image_feats_size_call(
    model: Any, image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    return model(image, features, size)


def _builder(method: str, call: Callable[..., torch.Tensor], pick: Callable[[Any], Any] = lambda m: m):
    def build(config: PeerConfig) -> PeerUpsampler:
        model = pick(hub_load(method, config))
        if isinstance(model, nn.Module):
            model = model.to(config.device)
        return PeerUpsampler(model, call, config)

    return build


def _first(obj: Any) -> Any:
    return obj[0] if isinstance(obj, (tuple, list)) else obj  # JAFAR's hub entry returns (jafar, backbone)


build_featup = _builder("featup", _featup_call)
build_jafar = _builder("jafar", _image_feats_size_call, _first)
build_loftup = _builder("loftup", _feats_image_call)
build_naf = _builder("naf", _image_feats_size_call)
