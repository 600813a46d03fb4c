"""Any ``nn.Module`` as an :class:`~anyup.encoders.Encoder`: forward hooks on named submodules.

>>> enc = wrap(my_vit, layer="blocks.11", patch_size=14)           # doctest: +SKIP
>>> enc(torch.rand(1, 3, 224, 308)).shape                          # (1, C, 16, 22)  # doctest: +SKIP

:func:`wrap` gives the module the contract of every registered encoder: input RGB ``(B, 3, H, W)``
in ``[0, 1]``, its normalisation applied inside, output ``(B, C, H // stride, W // stride)``.
What a tap returns is turned into a map:

* a ``(B, C, h, w)`` tensor is kept (CNN stages);
* ``(B, N, C)`` ViT tokens become a ``(B, C, H // p, W // p)`` grid (``p`` = patch size); the
  ``N - (H // p) * (W // p)`` leading tokens (cls, registers) are dropped, so non-square inputs and
  any number of register tokens work;
* a tuple/list gives its first tensor (what transformer blocks return); a ``transformers``
  ``ModelOutput`` or a dict gives ``last_hidden_state`` (or DINOv2's ``x_norm_patchtokens``).

Modules of known libraries get their library's defaults (see :mod:`anyup.encoders.adapters`):
``transformers`` vision models (``Dinov2Model``, ``Dinov2WithRegistersModel``,
``CLIPVisionModel``, ``SiglipVisionModel``, ...), ``torch.hub`` DINOv2 and ``open_clip`` models.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from anyup.encoders.base import Encoder, EncoderInfo, LayerInfo
from anyup.image import CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
    "half": (HALF, HALF),  # SigLIP, plain ViTs: [0, 1] -> [-1, 1]
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # the module gets [0, 1] as is
}
OUTPUT = ""  # tap name of the module's own output

Normalize = str | tuple[Sequence[float], Sequence[float]] | None
CallFn = Callable[[nn.Module, torch.Tensor], Any]


@dataclass(frozen=True)
class WrapConfig:
    """How a :class:`WrappedEncoder` runs its module and reads its layers."""

    taps: tuple[str, ...]  # submodule names whose outputs are read; OUTPUT ("") = the module's output
    labels: tuple[str, ...]  # the layer names reported in ``EncoderInfo`` (same order as taps)
    patch_size: int | None  # ViTs: token grid cell size in pixels (None: taps return (B, C, h, w))
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = "wrapped"
    family: str = "custom"
    weights: str = "user module"
    call: CallFn | None = None  # how to run the module on the normalised input; None: module(x)
    return_list: bool | None = None  # deprecated, ignored: an encoder always returns a list of maps
    probe_size: int = 224  # side of the zero image used once to read channels and strides


class _Stop(Exception):
    """Raised by a hook once every requested tap has fired (skips the rest of the network)."""


def resolve_normalize(normalize: Normalize) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``"imagenet"``/``"clip"``/``"half"``/``"none"``/None or ``(mean, std)`` -> (mean, std) RGB tuples."""
    if normalize is None:
        return NORMALIZATIONS["none"]
    if isinstance(normalize, str):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {sorted(NORMALIZATIONS)} or (mean, std), got {normalize!r}")
        return NORMALIZATIONS[normalize]
    try:
        mean, std = (tuple(float(v) for v in part) for part in normalize)
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be a name or (mean, std) with 3 values each, got {normalize!r}") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"normalize (mean, std) needs 3 values each and std > 0, got {normalize!r}")
    return mean, std


def _first_tensor(out: Any, where: str) -> torch.Tensor:
    """The feature tensor inside what a module returned."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):  # transformers ModelOutput is a dict too
        for key in ("last_hidden_state", "x_norm_patchtokens"):
            if out.get(key) is not None:
                return out[key]
        out = [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"{where} returned {type(out).__name__}, which holds no feature tensor")


def tokens_to_grid(tokens: torch.Tensor, h: int, w: int, where: str = "tokens") -> torch.Tensor:
    """ViT tokens (B, N, C) -> patch grid (B, C, h, w); the N - h*w leading (cls/register) tokens dropped."""
    b, n, c = tokens.shape
    prefix = n - h * w
    if prefix < 0:
        raise RuntimeError(f"{where}: {n} tokens cannot hold a {h}x{w} patch grid; is the patch size right?")
    patches = tokens[:, prefix:]  # (B, h*w, C)
    return patches.transpose(1, 2).reshape(b, c, h, w)  # (B, C, h, w)


class WrappedEncoder(Encoder):
    """An arbitrary module run with forward hooks; see :func:`wrap`."""

    def __init__(self, module: nn.Module, config: WrapConfig) -> None:
        names = dict(module.named_modules())
        for tap in config.taps:
            if tap != OUTPUT and tap not in names:
                near = [n for n in names if n and tap.split(".")[-1] in n][:8]
                raise ValueError(f"module has no submodule {tap!r}; e.g. {near or list(names)[1:9]}")
        probe_info = EncoderInfo(
            name=config.name,
            family=config.family,
            stride=config.patch_size or 1,
            channels=0,
            multiple=config.patch_size or 1,
            layers=(),
            mean=config.mean,
            std=config.std,
            weights=config.weights,
        )
        if config.return_list is not None:
            warnings.warn(
                "WrapConfig.return_list is deprecated and ignored: an encoder always returns a list of maps",
                DeprecationWarning,
                stacklevel=2,
            )
        super().__init__(probe_info)
        self.model = module
        self.config = config
        self._lock = threading.Lock()  # hooks live on the shared module: one forward pass at a time
        self.info = self._probe(module)

    def __getstate__(self) -> dict:  # locks do not pickle / deepcopy
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()

    # --------------------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw tensors of every tap for normalised input ``x`` (B, 3, H, W)."""
        cfg = self.config
        captured: dict[str, Any] = {}
        wanted = {t for t in cfg.taps if t != OUTPUT}
        need_output = OUTPUT in cfg.taps
        handles = []
        modules = dict(self.model.named_modules())

        def make_hook(tap: str):
            def hook(_module, _inputs, output):
                captured.setdefault(tap, output)  # a module run twice keeps its first output
                if not need_output and wanted <= captured.keys():
                    raise _Stop

            return hook

        with self._lock:
            for tap in wanted:
                handles.append(modules[tap].register_forward_hook(make_hook(tap)))
            try:
                out = cfg.call(self.model, x) if cfg.call is not None else self.model(x)
                captured[OUTPUT] = out
            except _Stop:
                pass
            finally:
                for h in handles:
                    h.remove()
        missing = [t for t in cfg.taps if t not in captured]
        if missing:
            raise RuntimeError(f"{cfg.name}: submodule(s) {missing} did not run in the forward pass")
        return [_first_tensor(captured[t], f"{cfg.name} layer {t or 'output'!r}") for t in cfg.taps]

    def _to_map(self, t: torch.Tensor, hw: tuple[int, int], label: str) -> torch.Tensor:
        p = self.config.patch_size
        if t.ndim == 3:
            if p is None:
                raise ValueError(
                    f"{self.config.name}: layer {label!r} returns tokens {tuple(t.shape)}; pass patch_size= to wrap()"
                )
            return tokens_to_grid(t, hw[0] // p, hw[1] // p, f"{self.config.name} layer {label!r}")
        if t.ndim == 4:
            return t
        raise RuntimeError(f"{self.config.name}: layer {label!r} returned shape {tuple(t.shape)}, not a map or tokens")

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        hw = (x.shape[-2], x.shape[-1])
        return [self._to_map(t, hw, label) for t, label in zip(self._run(x), self.config.labels)]

    @torch.no_grad()
    def _probe(self, module: nn.Module) -> EncoderInfo:
        """Channels and stride of every layer, from one forward pass on a zero image."""
        cfg = self.config
        p = cfg.patch_size
        side = cfg.probe_size if p is None else -(-cfg.probe_size // p) * p
        param = next(iter(module.parameters()), None)
        x = torch.zeros(1, 3, side, side, device=param.device if param is not None else "cpu")
        if param is not None and param.is_floating_point():
            x = x.to(param.dtype)
        was_training = module.training
        module.eval()
        try:
            maps = self.extract(x)
        except (RuntimeError, ValueError, TypeError) as err:
            raise ValueError(
                f"{cfg.name}: could not run the module on a {side}x{side} probe image ({err}); check layer= and "
                f"patch_size=, or set probe_size= to a size the module accepts"
            ) from err
        finally:
            module.train(was_training)
        layers = []
        for label, f in zip(cfg.labels, maps):
            h = f.shape[-2]
            if side % h or side % f.shape[-1] or side // h != side // f.shape[-1]:
                raise ValueError(f"{cfg.name}: layer {label!r} gives a {tuple(f.shape[-2:])} map for a {side}^2 input")
            layers.append(LayerInfo(label, side // h, int(f.shape[1])))
        multiple = p if p is not None else max(layer.stride for layer in layers)
        return EncoderInfo(
            name=cfg.name,
            family=cfg.family,
            stride=layers[0].stride,
            channels=layers[0].channels,
            multiple=multiple,
            layers=tuple(layers),
            mean=cfg.mean,
            std=cfg.std,
            weights=cfg.weights,
        )


def wrap(
    module: nn.Module,
    layer: str | int | None | Sequence[str | int | None] = None,
    patch_size: int | None = None,
    normalize: Normalize | str = "auto",
    *,
    name: str | None = None,
    call: CallFn | None = None,
    probe_size: int = 224,
) -> Encoder:
    """Turn any module into a frozen :class:`~anyup.encoders.Encoder`.

    Args:
        module: an ``nn.Module`` mapping a normalised image (B, 3, H, W) to features. Models of
            ``transformers``, ``torch.hub`` DINOv2 and ``open_clip`` are recognised and get their
            library defaults (layer, patch size, normalisation, positional-embedding interpolation).
            The module is frozen in place (eval mode, no gradients).
        layer: ``None`` (the model's output: ``last_hidden_state`` patch tokens for ``transformers``,
            the final normed tokens for DINOv2/open_clip), a submodule name (``"encoder.layer.5"``),
            an int block index (recognised models), or a list of those (the encoder then returns a list).
        patch_size: ViT patch size (read from recognised models); needed when a layer returns tokens.
        normalize: ``"auto"`` (the library's default, else ImageNet), ``"imagenet"``, ``"clip"``,
            ``"half"`` ([-1, 1]), ``"none"``, or ``(mean, std)``; applied inside the encoder.
        name: the encoder name in ``info`` (default: the module's class name).
        call: ``call(module, x)`` runs the module (default ``module(x)`` or the library's call).
        probe_size: side of the zero image run once to read channels and strides.

    Returns:
        An :class:`~anyup.encoders.Encoder`: RGB (B, 3, H, W) in [0, 1] with H, W multiples of
        ``info.multiple`` -> a list with one (B, C, H // stride, W // stride) map per layer.

    Example:
        >>> from transformers import Dinov2Config, Dinov2Model                 # doctest: +SKIP
        >>> enc = wrap(Dinov2Model(Dinov2Config()))                            # doctest: +SKIP
        >>> enc(torch.rand(1, 3, 224, 336))[0].shape                           # doctest: +SKIP
        torch.Size([1, 768, 16, 24])
    """
    from anyup.encoders.adapters import adapter_for

    if not isinstance(module, nn.Module):
        raise TypeError(f"wrap() needs a torch.nn.Module, got {type(module).__name__}")
    if isinstance(module, Encoder):
        raise TypeError(f"{module.info.name!r} is already an anyup Encoder; use it directly")
    if patch_size is not None and (isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1):
        raise ValueError(f"patch_size must be a positive int or None, got {patch_size!r}")
    if not isinstance(probe_size, int) or probe_size < 1:
        raise ValueError(f"probe_size must be a positive int, got {probe_size!r}")
    adapter = adapter_for(module)
    items: list[str | int | None] = (
        list(layer) if isinstance(layer, (list, tuple)) else [cast("str | int | None", layer)]
    )
    if not items:
        raise ValueError("layer must name at least one layer, got an empty list")
    taps, labels = zip(*(adapter.tap(module, item) for item in items))
    if normalize == "auto":
        mean, std = adapter.normalization(module)
    else:
        mean, std = resolve_normalize(normalize)
    config = WrapConfig(
        taps=tuple(taps),
        labels=tuple(labels),
        patch_size=patch_size if patch_size is not None else adapter.patch_size(module),
        mean=mean,
        std=std,
        name=name or type(module).__name__,
        family=adapter.family(module),
        weights="user module",
        call=call if call is not None else adapter.call,
        probe_size=probe_size,
    )
    return WrappedEncoder(module, config).freeze()
