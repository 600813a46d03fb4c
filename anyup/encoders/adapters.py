"""Library adapters: what :func:`~anyup.encoders.wrap` knows about models of other libraries, and
registry names that load them.

========================  ==============================================  ==========================
registry name             loads                                           weights offline
========================  ==============================================  ==========================
``hf:<id or folder>``     ``transformers.AutoModel`` (Dinov2, Dinov2 with  a folder written by
                          registers, CLIP / SigLIP vision towers, ...)     ``save_pretrained``
``torchhub:<entry>``      ``torch.hub.load("facebookresearch/dinov2",     ``torchhub:DIR:<entry>``
                          entry)``; ``torchhub:OWNER/REPO:<entry>``        (a clone) + ``weights=PATH``
``open_clip:<model>``     ``open_clip.create_model(model, pretrained=tag)``  ``weights=PATH``
``open_clip:<model>/<tag>``
========================  ==============================================  ==========================

Layers: ``"final"`` (default: ``last_hidden_state`` patch tokens for ``transformers``, the final
normed patch tokens for DINOv2 and open_clip) and ``"block{i}"`` / an int ``i`` (raw output of
block ``i``, 0-based). cls and register tokens are always dropped; inputs may be non-square
(position embeddings are interpolated). Normalisation: DINOv2 ImageNet, CLIP/open_clip the CLIP
mean/std, SigLIP [-1, 1]; a ``transformers`` folder's ``preprocessor_config.json`` wins.

Offline (no network, or ``HF_HUB_OFFLINE=1``), loading by id fails at once with a message that
says how to pass a local folder or file.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyup.encoders.base import Encoder
from anyup.encoders.registry import LayerArg, fetch_error
from anyup.encoders.wrap import NORMALIZATIONS, OUTPUT, wrap
from anyup.image import CLIP_MEAN, CLIP_STD

logger = logging.getLogger(__name__)
_OR_WRAP = "; or build the model yourself and use anyup.encoders.wrap(model)"

DINOV2_HUB_REPO = "facebookresearch/dinov2"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``ANYUP_OFFLINE``) asks for no network access."""
    flags = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "ANYUP_OFFLINE"))
    return any(v in ("1", "true", "yes", "on") for v in flags)


# ------------------------------------------------------------------------------------------------
# What wrap() knows about a module
class Adapter:
    """Defaults for a plain module: the module's output, ImageNet normalisation, ``module(x)``."""

    family_name = "custom"
    # None (call the module), or a staticmethod (module, x) -> raw output that wrap() turns into a map
    call: Any = None

    def blocks(self, module: nn.Module) -> list[str]:
        return []

    def tap(self, module: nn.Module, layer: str | int | None) -> tuple[str, str]:
        """(submodule name to hook, layer label) of a requested layer."""
        if layer is None or layer == "final":
            return OUTPUT, "final"
        blocks = self.blocks(module)
        if isinstance(layer, str):
            m = re.fullmatch(r"block(-?\d+)", layer)
            if m and blocks:
                layer = int(m.group(1))
            elif layer.lstrip("-").isdigit() and blocks:
                layer = int(layer)
            else:
                return layer, layer
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"a layer is None, a submodule name or a block index, got {layer!r}")
        if not blocks:
            raise ValueError(
                f"{type(module).__name__}: no block list known, so an int layer cannot be resolved; "
                "pass a submodule name"
            )
        if not -len(blocks) <= layer < len(blocks):
            raise ValueError(f"block index {layer} out of range for {type(module).__name__} ({len(blocks)} blocks)")
        i = layer % len(blocks)
        return blocks[i], f"block{i}"

    def patch_size(self, module: nn.Module) -> int | None:
        return None

    def normalization(self, module: nn.Module):
        return NORMALIZATIONS["imagenet"]

    def family(self, module: nn.Module) -> str:
        return self.family_name


def _as_int(value: Any) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


class TransformersAdapter(Adapter):
    """``transformers`` vision models: ``last_hidden_state`` tokens, blocks ``encoder.layer(s).i``."""

    @staticmethod
    def _config(module: nn.Module):
        cfg = module.config
        return getattr(cfg, "vision_config", None) or cfg

    def blocks(self, module: nn.Module) -> list[str]:
        found = [
            (name, len(sub))
            for name, sub in module.named_modules()
            if isinstance(sub, nn.ModuleList) and re.search(r"(^|\.)encoder\.layers?$", name)
        ]
        found.sort(key=lambda f: "vision" not in f[0])  # a full CLIPModel also has text_model.encoder.layers
        return [f"{found[0][0]}.{i}" for i in range(found[0][1])] if found else []

    def patch_size(self, module: nn.Module) -> int | None:
        p = getattr(self._config(module), "patch_size", None)
        return None if p is None else _as_int(p)

    def normalization(self, module: nn.Module):
        kind = self.family(module)
        if kind.startswith("clip"):
            return NORMALIZATIONS["clip"]
        if kind.startswith("siglip"):
            return NORMALIZATIONS["half"]
        return NORMALIZATIONS["imagenet"]

    def family(self, module: nn.Module) -> str:
        return str(getattr(self._config(module), "model_type", "transformers")).replace("_vision_model", "")

    @staticmethod
    def call(module: nn.Module, x: torch.Tensor):
        target: Any = module  # a transformers model: its attributes are library-defined
        if "input_ids" in inspect.signature(module.forward).parameters and hasattr(module, "vision_model"):
            target = module.vision_model  # a full CLIPModel / SiglipModel: its image tower
        params = inspect.signature(target.forward).parameters
        if "interpolate_pos_encoding" in params:
            return target(pixel_values=x, interpolate_pos_encoding=True)
        return target(pixel_values=x)


class DinoV2HubAdapter(Adapter):
    """``torch.hub`` DINOv2 (``DinoVisionTransformer``): ``forward_features``' normed patch tokens."""

    family_name = "dinov2"

    def blocks(self, module: nn.Module) -> list[str]:
        return [n for n, m in module.named_modules() if n.startswith("blocks.") and type(m).__name__.endswith("Block")]

    def patch_size(self, module: nn.Module) -> int | None:
        return _as_int(module.patch_size)

    @staticmethod
    def call(module: Any, x: torch.Tensor):
        return module.forward_features(x)["x_norm_patchtokens"]  # (B, h*w, C)


class OpenClipAdapter(Adapter):
    """``open_clip`` ViT image towers, run with position embeddings interpolated to the input grid."""

    family_name = "open_clip"

    @staticmethod
    def _visual(module: nn.Module) -> tuple[Any, str]:
        # open_clip's tower: its attributes (conv1, transformer, grid_size, ...) are library-defined
        visual: Any
        visual, prefix = (module.visual, "visual.") if hasattr(module, "visual") else (module, "")
        if type(visual).__name__ != "VisionTransformer" or not hasattr(visual, "conv1"):
            raise ValueError(
                f"open_clip image tower {type(visual).__name__} is not a plain VisionTransformer; wrap it with "
                f"anyup.encoders.wrap(model.visual, layer=<submodule name>, normalize='clip')"
            )
        if getattr(visual, "attn_pool", None) is not None or not getattr(visual.transformer, "batch_first", True):
            raise ValueError("open_clip towers with attentional pooling or sequence-first blocks are not supported")
        return visual, prefix

    def blocks(self, module: nn.Module) -> list[str]:
        visual, prefix = self._visual(module)
        return [f"{prefix}transformer.resblocks.{i}" for i in range(len(visual.transformer.resblocks))]

    def patch_size(self, module: nn.Module) -> int | None:
        return _as_int(self._visual(module)[0].patch_size)

    def normalization(self, module: nn.Module):
        visual = self._visual(module)[0]
        mean, std = getattr(visual, "image_mean", None), getattr(visual, "image_std", None)
        return (tuple(mean), tuple(std)) if mean and std else (CLIP_MEAN, CLIP_STD)

    @staticmethod
    def call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        visual, _ = OpenClipAdapter._visual(module)
        b = x.shape[0]
        t = visual.conv1(x)  # (B, D, gh, gw)
        gh, gw = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)  # (B, gh*gw, D)
        pos = visual.positional_embedding  # (1 + g0*g1, D)
        g0, g1 = visual.grid_size
        if (gh, gw) != (g0, g1):
            grid = pos[1:].reshape(1, g0, g1, -1).permute(0, 3, 1, 2)  # (1, D, g0, g1)
            grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False).to(pos.dtype)
            pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])  # (1 + gh*gw, D)
        cls = visual.class_embedding.to(t.dtype).expand(b, 1, -1)  # (B, 1, D)
        t = torch.cat([cls, t], dim=1) + pos.to(t.dtype)  # (B, 1 + gh*gw, D)
        t = visual.ln_pre(visual.patch_dropout(t))
        t = visual.transformer(t)
        return visual.ln_post(t)  # (B, 1 + gh*gw, D): cls dropped by the grid reshape


def adapter_for(module: nn.Module) -> Adapter:
    """The adapter of a module's library (only libraries already imported are checked)."""
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(module, transformers.PreTrainedModel):
        return TransformersAdapter()
    if type(module).__name__ == "DinoVisionTransformer" and hasattr(module, "forward_features"):
        return DinoV2HubAdapter()
    if type(module).__module__.startswith("open_clip"):
        return OpenClipAdapter()
    return Adapter()


# ------------------------------------------------------------------------------------------------
# Registry names: hf:..., torchhub:..., open_clip:...
def _layers(layers: LayerArg) -> Any:
    return list(layers) if isinstance(layers, (list, tuple)) else layers


def _finish(module: nn.Module, name: str, layers: LayerArg, weights: str, normalize: Any = "auto") -> Encoder:
    from dataclasses import replace

    enc = wrap(module, layer=_layers(layers), normalize=normalize, name=name)
    enc.info = replace(enc.info, weights=weights)
    return enc


def _load_strict(module: nn.Module, path: Path) -> None:
    from anyup.encoders._loading import load_strict, read_weights

    load_strict(module, read_weights(path), str(path))


def _preprocessor_normalization(folder: Path):
    cfg = folder / "preprocessor_config.json"
    if not cfg.is_file():
        return "auto"
    raw = json.loads(cfg.read_text())
    mean, std = raw.get("image_mean"), raw.get("image_std")
    if mean and std and len(mean) == 3 and len(std) == 3:
        return (tuple(mean), tuple(std))
    return "auto"


def build_transformers(target: str, weights: Path | None, pretrained: bool, layers: LayerArg) -> Encoder:
    """``hf:<model id or local folder>``: a ``transformers`` vision model as an encoder."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError('hf: encoders need transformers: pip install "anyup[hf]"') from err
    folder = Path(target).expanduser()
    local = folder.is_dir()
    offline = hub_offline()
    source = str(folder) if local else f"hub:{target}"
    try:
        if pretrained and weights is None:
            model = transformers.AutoModel.from_pretrained(str(folder) if local else target, local_files_only=offline)
        else:
            config = transformers.AutoConfig.from_pretrained(str(folder) if local else target, local_files_only=offline)
            model = transformers.AutoModel.from_config(config)
            source = str(weights) if weights is not None else "random init"
    except OSError as err:
        what = f"load the transformers model {target!r}{' with HF_HUB_OFFLINE set' if offline else ''}"
        get = f"Save it elsewhere (`huggingface-cli download {target} --local-dir DIR`, or `AutoModel.from_pretrained({target!r}).save_pretrained(DIR)`)"  # fmt: skip
        raise fetch_error(what, err, get, "hf:DIR", weights=False, also=_OR_WRAP) from err
    if weights is not None:
        _load_strict(model, weights)
    norm = _preprocessor_normalization(folder) if local else "auto"
    return _finish(model, f"hf:{target}", layers, source, norm)


def _hub_parts(target: str) -> tuple[str, str]:
    """``entry`` -> (dinov2 repo, entry); ``REPO:entry`` / ``DIR:entry`` -> (REPO or DIR, entry)."""
    repo, sep, entry = target.rpartition(":")
    return (repo, entry) if sep else (DINOV2_HUB_REPO, target)


def build_torch_hub(target: str, weights: Path | None, pretrained: bool, layers: LayerArg) -> Encoder:
    """``torchhub:[REPO_OR_DIR:]entry``: a ``torch.hub`` model (DINOv2 by default) as an encoder."""
    repo, entry = _hub_parts(target)
    local = Path(repo).expanduser().is_dir()
    fetch = pretrained and weights is None
    cached = Path(torch.hub.get_dir()) / (repo.replace("/", "_") + "_main")
    if not local and hub_offline() and not cached.is_dir():
        err: Exception = FileNotFoundError(f"{cached} is not cached and HF_HUB_OFFLINE/ANYUP_OFFLINE is set")
        raise _hub_error(repo, entry, err) from None
    try:
        if local:
            model = torch.hub.load(str(Path(repo).expanduser()), entry, source="local", pretrained=fetch)
        else:
            model = torch.hub.load(repo, entry, pretrained=fetch, trust_repo=True, skip_validation=True)
    except Exception as err:  # network, GitHub, cache: any failure becomes one clear message
        raise _hub_error(repo, entry, err) from err
    source = f"hub:{repo}:{entry}" if fetch else "random init"
    if weights is not None:
        _load_strict(model, weights)
        source = str(weights)
    return _finish(model, f"torchhub:{target}", layers, source)


def _hub_error(repo: str, entry: str, err: BaseException) -> RuntimeError:
    get = f"Clone the repository elsewhere (`git clone https://github.com/{DINOV2_HUB_REPO}`) and download the weights file (e.g. {entry}_pretrain.pth)"  # fmt: skip
    return fetch_error(f"load torch.hub model {repo}:{entry}", err, get, f"torchhub:DIR:{entry}", also=_OR_WRAP)


def build_open_clip(target: str, weights: Path | None, pretrained: bool, layers: LayerArg) -> Encoder:
    """``open_clip:<model>[/<pretrained tag>]``: an open_clip ViT image tower as an encoder."""
    try:
        import open_clip
    except ImportError as err:
        raise ImportError('open_clip: encoders need open_clip_torch: pip install "anyup[hf]"') from err
    model_name, _, tag = target.partition("/")
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; e.g. {', '.join(open_clip.list_models()[:8])}, ...")
    if weights is not None:
        pretrained_arg, source = None, str(weights)
    elif pretrained:
        if not tag:
            tags = [t for m, t in open_clip.list_pretrained() if m == model_name]
            example = f"open_clip:{model_name}/{tags[0] if tags else 'TAG'}"
            raise ValueError(f"open_clip:{model_name} needs a pretrained tag, e.g. {example}")
        if hub_offline():
            raise _open_clip_error(target, FileNotFoundError("HF_HUB_OFFLINE/ANYUP_OFFLINE is set"))
        pretrained_arg, source = tag, f"hub:open_clip/{target}"
    else:
        pretrained_arg, source = None, "random init"
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained_arg)
    except Exception as err:  # download failures of any kind
        raise _open_clip_error(target, err) from err
    if weights is not None:
        _load_strict(model, weights)
    return _finish(model.visual, f"open_clip:{target}", layers, source, OpenClipAdapter().normalization(model.visual))


def _open_clip_error(target: str, err: BaseException) -> RuntimeError:
    encoder = f"open_clip:{target.partition('/')[0]}"
    return fetch_error(f"fetch the open_clip weights {target!r}", err, "Download the checkpoint elsewhere", encoder)


ADAPTER_BUILDERS = {"hf": build_transformers, "torchhub": build_torch_hub, "open_clip": build_open_clip}
