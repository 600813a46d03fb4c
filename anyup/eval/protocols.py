"""Named, versioned evaluation protocols: every number in a report says which one produced it.

A :class:`Protocol` fixes everything that changes a probe's result (image size, optimiser,
learning rate and schedule, epochs, batch size, seeds, loss weights, the boundary band width,
the fidelity set-up, ...). Its :attr:`Protocol.hash` is the first 12 hex digits of the sha256
of its canonical JSON, so two runs with the same name and hash used identical settings, and any
edit (``protocol.replace(epochs=3)``) changes the hash.

Presets (:func:`get_protocol`):

* ``jafar`` -- semantic segmentation as in JAFAR (Couairon et al., 2025) and the AnyUp paper:
  448 px (short side resized, centre crop), a 1x1 conv probe on 448x448 upsampled features,
  cross-entropy, AdamW lr 5e-4, weight decay 1e-5, 20 epochs, batch 2, cosine annealing,
  random horizontal flips.
* ``probe3d`` -- depth and surface normals as in Probe3D (El Banani et al., CVPR 2024):
  480x480 centre crop, AdamW lr 5e-4, 10 epochs with 1.5 warm-up epochs and cosine decay to
  1 % of the lr, batch 8; depth as 256 linear bins over (1e-3, 10] m trained with
  10 x SigLoss (scale-invariant log loss, lambda 0.85) + 0.5 x multi-scale gradient loss;
  normals with the uncertainty-aware angular loss (a 4th output channel for the concentration).
  (Probe3D itself uses a DPT head; like AnyUp we keep the 1x1 probe and its losses/metrics.)
* ``offline`` -- a CPU-sized protocol for this repository's offline suite: 224 px, 32 training
  and 16 evaluation images, 4 epochs (at least 32 steps) at lr 1e-2, two seeds, no flips, each training step on every
  2nd row and column of the 224x224 upsampled map (random phase; evaluation on all pixels);
  the same losses and metrics as above (16 depth bins, plain angular loss).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PROTOCOLS", "Protocol", "get_protocol", "list_protocols", "parse_overrides"]

SCHEDULES = ("constant", "cosine", "cosine_warmup")


@dataclass(frozen=True)
class Protocol:
    """Every setting that influences a probe or fidelity number (see module docstring)."""

    name: str
    version: int = 1  # bump when a preset's meaning changes
    # data
    image_size: int = 224  # short side resized to this, then centre-cropped to a square (labels: nearest)
    max_train_images: int | None = None  # first N of the train split (None = all)
    max_eval_images: int | None = None  # first N of the evaluation split (None = all)
    hflip: bool = False  # random horizontal flips during probe training (encoder run on flipped image)
    # optimisation of the 1x1 probe
    optimizer: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 20
    min_steps: int = 0  # tiny training sets train for more epochs until this many optimiser steps
    batch_size: int = 2
    schedule: str = "cosine"  # one of SCHEDULES; stepped per batch
    warmup_epochs: float = 0.0  # for cosine_warmup
    min_lr_factor: float = 0.0  # cosine floor as a fraction of lr
    seeds: tuple[int, ...] = (0,)  # one probe per seed (init, data order, flips)
    train_pixel_stride: int = 1  # >1: each step trains on every k-th row/column (random phase); eval uses all pixels
    # segmentation
    boundary_width: int = 3  # half-width (pixels at image_size) of the band around GT class edges
    # depth (Probe3D)
    depth_bins: int = 256  # linear bins over [min_depth, max_depth]; 1 = direct sigmoid regression
    min_depth: float = 1e-3
    max_depth: float = 10.0
    depth_sig_weight: float = 10.0
    depth_sig_lambda: float = 0.85
    depth_grad_weight: float = 0.5
    # normals (Probe3D)
    normals_uncertainty: bool = True  # uncertainty-aware angular loss (4 outputs) instead of plain angular
    # label-free fidelity
    fidelity_image_size: int = 448  # full image short side; reference features come from it
    fidelity_scale: int = 2  # the low-res input comes from the image downscaled by this factor
    fidelity_edge_quantile: float = 0.8  # top 20% feature-change pixels are "edges"
    fidelity_max_images: int | None = None
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        checks = [
            (self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.min_steps >= 0, f"min_steps must be >= 0, got {self.min_steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.train_pixel_stride >= 1, f"train_pixel_stride must be >= 1, got {self.train_pixel_stride}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.optimizer in ("adamw", "sgd"), f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (len(self.seeds) >= 1, "seeds must hold at least one seed"),
            (self.boundary_width >= 0, f"boundary_width must be >= 0, got {self.boundary_width}"),
            (self.depth_bins >= 1, f"depth_bins must be >= 1, got {self.depth_bins}"),
            (
                0 < self.min_depth < self.max_depth,
                f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}",
            ),
            (self.fidelity_scale >= 2, f"fidelity_scale must be >= 2, got {self.fidelity_scale}"),
            (
                0 <= self.fidelity_edge_quantile < 1,
                f"fidelity_edge_quantile must be in [0, 1), got {self.fidelity_edge_quantile}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"protocol {self.name!r}: {msg}")
        # normalise sequences so equal protocols hash equally whatever was passed
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-able values (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace, ``notes`` left out (it does not change results)."""
        d = self.to_dict()
        d.pop("notes", None)
        return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def hash(self) -> str:
        """First 12 hex digits of the sha256 of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:12]

    @property
    def tag(self) -> str:
        """``name@hash``, as written into reports."""
        return f"{self.name}@{self.hash}"

    def replace(self, **changes: Any) -> Protocol:
        """A copy with ``changes`` applied (unknown field names raise ValueError)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown protocol field(s) {unknown}; allowed: {sorted(names)}")
        return dataclasses.replace(self, **changes)


PROTOCOLS: dict[str, Protocol] = {
    "jafar": Protocol(
        name="jafar",
        version=1,
        image_size=448,
        hflip=True,
        optimizer="adamw",
        lr=5e-4,
        weight_decay=1e-5,
        epochs=20,
        batch_size=2,
        schedule="cosine",
        seeds=(0,),
        boundary_width=3,
        notes="JAFAR segmentation linear probe (448 px, 1x1 conv on 448x448 upsampled features)",
    ),
    "probe3d": Protocol(
        name="probe3d",
        version=1,
        image_size=480,
        hflip=False,
        optimizer="adamw",
        lr=5e-4,
        weight_decay=1e-2,
        epochs=10,
        batch_size=8,
        schedule="cosine_warmup",
        warmup_epochs=1.5,
        min_lr_factor=0.01,
        seeds=(8,),
        depth_bins=256,
        min_depth=1e-3,
        max_depth=10.0,
        depth_sig_weight=10.0,
        depth_sig_lambda=0.85,
        depth_grad_weight=0.5,
        normals_uncertainty=True,
        notes="Probe3D depth/normals losses, metrics and schedule with a 1x1 probe (AdamW default weight decay)",
    ),
    "offline": Protocol(
        name="offline",
        version=1,
        image_size=224,
        max_train_images=32,
        max_eval_images=16,
        hflip=False,
        optimizer="adamw",
        lr=1e-2,
        weight_decay=1e-5,
        epochs=4,
        min_steps=32,
        batch_size=4,
        schedule="cosine",
        seeds=(0, 1),
        train_pixel_stride=2,
        boundary_width=2,
        depth_bins=16,
        depth_sig_weight=10.0,
        depth_grad_weight=0.5,
        normals_uncertainty=False,
        fidelity_image_size=224,
        fidelity_scale=2,
        fidelity_max_images=12,
        notes="CPU-sized protocol for the offline suite (higher lr to converge in few epochs)",
    ),
}


def list_protocols() -> list[str]:
    """Preset names accepted by :func:`get_protocol`."""
    return list(PROTOCOLS)


def get_protocol(name: str, **overrides: Any) -> Protocol:
    """The preset ``name`` with optional field ``overrides`` (the hash reflects them)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {list(PROTOCOLS)}")
    p = PROTOCOLS[name]
    return p.replace(**overrides) if overrides else p


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``["epochs=3", "seeds=0,1", "hflip=false"]`` into typed protocol overrides.

    Values are read by the package's one override parser (:func:`anyup._config.parse_value` then
    :func:`anyup._config.coerce` to the field's type).
    """
    from anyup._config import coerce, parse_value, split_assignment

    out: dict[str, Any] = {}
    hints = typing.get_type_hints(Protocol)
    allowed = sorted(f.name for f in dataclasses.fields(Protocol) if f.name != "name")
    for item in items or []:
        key, raw = split_assignment(item, "KEY=VALUE")
        if key not in allowed:
            raise ValueError(f"unknown protocol field {key!r}; allowed: {allowed}")
        try:
            out[key] = coerce(raw if hints[key] is str else parse_value(raw), hints[key], key)
        except ValueError as err:
            raise ValueError(f"bad value {raw.strip()!r} for protocol field {key!r}: {err}") from None
    return out
