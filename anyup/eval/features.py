"""Encoder features for evaluation, cached on disk, and the in-memory samples built from them.

Running a frozen encoder is the most expensive step that every method shares, so its
low-resolution output is computed once per (encoder, image) and stored as a safetensors file
keyed by a hash of the encoder's weights and of the exact input pixels: changing the image
size, the dataset, the crop or the weights gives a different key, and a cache hit returns the
very tensor that would have been computed. Upsampled full-resolution maps are never stored on
disk (they are ``C x S x S`` per image); :class:`anyup.eval.probes.UpsampledFeatures` computes
them per batch.

Cache layout: ``<root>/<encoder fingerprint[:16]>/<key[:2]>/<key>.safetensors`` with one tensor
``features`` ``(C, h, w)`` float32 and metadata (encoder name, input size). Writes are atomic.
The default root is ``$ANYUP_CACHE_DIR/eval_features`` or ``~/.cache/anyup/eval_features``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anyup.encoders.base import feature_map
from anyup.eval.probes import ProbeSample

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureCache",
    "FidelitySample",
    "default_cache_dir",
    "encode",
    "encoder_fingerprint",
    "prepare_fidelity",
    "prepare_samples",
    "to_uint8",
]


def default_cache_dir() -> Path:
    """``$ANYUP_CACHE_DIR/eval_features``, else ``~/.cache/anyup/eval_features``."""
    from anyup._env import cache_dir

    return cache_dir() / "eval_features"


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """sha256 (hex) of the encoder's class, name, selected layers and every parameter and buffer.

    Computed once per encoder object and memoised on it (``_anyup_fingerprint``).
    """
    cached = getattr(encoder, "_anyup_fingerprint", None)
    if cached:
        return cached
    h = hashlib.sha256()
    info = getattr(encoder, "info", None)
    # the class, name and selected layers (same weights, other layer = other features)
    h.update(f"{type(encoder).__module__}.{type(encoder).__qualname__}|{getattr(info, 'name', '')}".encode())
    h.update(f"|{getattr(info, 'layers', '')}|{getattr(info, 'stride', '')}|{getattr(info, 'channels', '')}".encode())
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"|{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    fp = h.hexdigest()
    try:
        encoder._anyup_fingerprint = fp  # type: ignore[assignment]  # nn.Module.__setattr__ takes any value
    except AttributeError:  # pragma: no cover
        pass
    return fp


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1] -> uint8 (round to nearest)."""
    return (image.clamp(0, 1) * 255.0).round().to(torch.uint8)


class FeatureCache:
    """safetensors files of encoder features, keyed by (encoder fingerprint, input pixels).

    ``root=None`` disables the disk cache (every call computes). ``hits``/``misses`` count lookups.
    """

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root is not None else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(fingerprint: str, image_u8: torch.Tensor) -> str:
        h = hashlib.sha256()
        h.update(fingerprint.encode())
        h.update(f"|{tuple(image_u8.shape)}|".encode())
        h.update(image_u8.contiguous().numpy().tobytes())
        return h.hexdigest()

    def path(self, fingerprint: str, key: str) -> Path:
        assert self.root is not None
        return self.root / fingerprint[:16] / key[:2] / f"{key}.safetensors"

    def load(self, fingerprint: str, key: str) -> torch.Tensor | None:
        if self.root is None:
            return None
        p = self.path(fingerprint, key)
        if not p.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(p))["features"]
        except Exception as err:  # a broken file is a miss, recomputed and overwritten
            logger.warning("ignoring unreadable cache file %s: %s", p, err)
            return None

    def save(self, fingerprint: str, key: str, features: torch.Tensor, metadata: dict[str, str]) -> None:
        if self.root is None:
            return
        from safetensors.torch import save_file

        from anyup._atomic import atomic_write

        tensors = {"features": features.detach().float().contiguous()}
        atomic_write(self.path(fingerprint, key), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _encoder_input(image_u8: torch.Tensor, multiple: int) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> float ``(3, H', W')`` in [0, 1] with sides rounded to ``multiple``."""
    from anyup.image import load_image, resize_to_multiple

    return resize_to_multiple(load_image(image_u8), multiple)


@torch.no_grad()
def encode(
    encoder: torch.nn.Module,
    images_u8: Sequence[torch.Tensor],
    cache: FeatureCache,
    *,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "encode",
) -> list[torch.Tensor]:
    """Low-res features ``(C, h, w)`` float32 of each uint8 ``(3, H, W)`` image, from the cache when possible.

    The encoder receives the image as float in [0, 1] (it normalises itself), resized only if a
    side is not a multiple of ``encoder.info.multiple``. Images of equal size are batched.
    """
    info = getattr(encoder, "info", None)
    multiple = int(getattr(info, "multiple", 1) or 1)
    name = str(getattr(info, "name", type(encoder).__name__))
    fp = encoder_fingerprint(encoder)
    out: list[torch.Tensor | None] = [None] * len(images_u8)
    keys = [FeatureCache.key(fp, im) for im in images_u8]
    todo: list[int] = []
    for i, k in enumerate(keys):
        t = cache.load(fp, k)
        if t is None:
            todo.append(i)
            cache.misses += 1
        else:
            out[i] = t
            cache.hits += 1
    # group the misses by input size so each forward pass is one batch
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in todo:
        groups.setdefault(tuple(images_u8[i].shape), []).append(i)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=desc, leave=False, dynamic_ncols=True)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            x = torch.stack([_encoder_input(images_u8[i], multiple) for i in chunk])  # (b, 3, H', W')
            feats = feature_map(encoder(x), -1, f"encoder {name}").float()  # (b, C, h, w): the last layer
            for j, i in enumerate(chunk):
                t = feats[j].contiguous().clone()
                out[i] = t
                cache.save(fp, keys[i], t, {"encoder": name, "input": "x".join(map(str, x.shape[-2:]))})
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return [t for t in out if t is not None]


def _resize_item(item: dict[str, Any], size: int) -> dict[str, Any]:
    from anyup.eval.datasets.base import resize_sample

    return resize_sample(item, size, crop=True)


def _normalise_relative_depth(depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale relative depth so the median valid value is 1 (only ratios are meaningful)."""
    if not valid.any():
        return depth
    med = depth[valid].median()
    return torch.where(valid, depth / med.clamp(min=1e-12), torch.zeros_like(depth))


def prepare_samples(
    dataset: Any,
    encoder: torch.nn.Module,
    size: int,
    cache: FeatureCache,
    *,
    max_images: int | None = None,
    flips: bool = False,
    tasks: Sequence[str] = ("seg", "depth", "normals"),
    progress: bool = False,
    desc: str = "prepare",
) -> list[ProbeSample]:
    """Load, resize (short side ``size``, centre crop) and encode the first ``max_images`` items.

    Labels for the tasks the dataset has are kept (``seg`` as int64, depth and normals as
    float32 with their valid masks). Datasets with ``depth_metric = False`` (relative depth)
    get each image's depth divided by its median valid depth. With ``flips`` the features of
    the horizontally flipped image are encoded too.
    """
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    have = [t for t in tasks if t in tuple(getattr(dataset, "tasks", ()))]
    items: list[dict[str, Any]] = []
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"{desc}: load", leave=False, dynamic_ncols=True)
    for i in it:
        item = _resize_item(dataset[i], size)
        items.append(item)
    images = [to_uint8(item["image"]) for item in items]
    feats = encode(encoder, images, cache, progress=progress, desc=f"{desc}: encode")
    feats_f = (
        encode(encoder, [im.flip(-1) for im in images], cache, progress=progress, desc=f"{desc}: encode flipped")
        if flips
        else None
    )
    metric = bool(getattr(dataset, "depth_metric", True))
    samples: list[ProbeSample] = []
    for i, item in enumerate(items):
        s = ProbeSample(
            name=str(item.get("name", i)),
            image=images[i],
            features=feats[i],
            features_flipped=feats_f[i] if feats_f is not None else None,
        )
        if "seg" in have:
            s.seg = item["seg"].long()
        if "depth" in have:
            d = item["depth"].float()
            v = item.get("depth_valid", d > 0).bool() & (d > 0) & torch.isfinite(d)
            s.depth = d if metric else _normalise_relative_depth(d, v)
            s.depth_valid = v
        if "normals" in have:
            nrm = item["normals"].float()
            v = item.get("normals_valid", nrm.abs().sum(0) > 0).bool()
            s.normals, s.normals_valid = nrm, v
        samples.append(s)
    return samples


@dataclass
class FidelitySample:
    """A full image (uint8 ``(3, S, S)``), the encoder's features of it (the reference) and of
    the image downscaled ``scale`` times (the input to upsample)."""

    name: str
    image: torch.Tensor
    features_hr: torch.Tensor
    features_lr: torch.Tensor


def prepare_fidelity(
    dataset: Any,
    encoder: torch.nn.Module,
    size: int,
    scale: int,
    cache: FeatureCache,
    *,
    max_images: int | None = None,
    progress: bool = False,
    desc: str = "fidelity",
) -> list[FidelitySample]:
    """Each image with short side about ``size`` (aspect kept, sides multiples of the encoder's
    ``multiple * scale``; :func:`anyup.eval.datasets.fidelity_pair`) and ``scale`` times smaller,
    both encoded (cached)."""
    from anyup.eval.datasets import fidelity_pair

    multiple = int(getattr(getattr(encoder, "info", None), "multiple", 1) or 1)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    full, small, names = [], [], []
    for i in range(n):
        item = dataset[i]
        lo, hi = fidelity_pair(item["image"], factor=scale, multiple=multiple, short_side=size)
        full.append(to_uint8(hi))
        small.append(to_uint8(lo))
        names.append(str(item.get("name", i)))
    hr = encode(encoder, full, cache, progress=progress, desc=f"{desc}: encode full")
    lr = encode(encoder, small, cache, progress=progress, desc=f"{desc}: encode small")
    return [FidelitySample(nm, im, h, l) for nm, im, h, l in zip(names, full, hr, lr)]
