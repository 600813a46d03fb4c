"""Training configuration: nested dataclasses, YAML files, ``a.b=value`` overrides and presets.

Every number of the recipe is a field here. A configuration is resolved in three layers:

1. a preset (:data:`PRESETS`, e.g. ``"paper"``, ``"cpu_offline"``) or the dataclass defaults;
2. an optional YAML file, merged on top (only the keys it names change);
3. command-line overrides ``section.field=value`` (values parsed as YAML: ``1e-4``, ``[a, b]``, ``null``).

>>> cfg = resolve_config(preset="cpu_offline", overrides=["optim.lr=1e-4", "steps=10"])
>>> cfg.optim.lr, cfg.steps, cfg.encoders[0].name
(0.0001, 10, 'efficientnet_lite0')
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anyup._config import coerce, from_dict, parse_value, split_assignment
from anyup._deprecation import deprecated_aliases


@dataclass
class TrainEncoderSpec:
    """One frozen encoder the upsampler is trained on (``anyup.encoders.create`` arguments)."""

    name: str = "dinov2_vits14"  # an anyup.encoders name (DINOv2 ViT-S/14 = timm vit_small_patch14_dinov2.lvd142m)
    weight: float = 1.0  # relative probability of being drawn for a step (multi-backbone training)
    layer: int | str | None = None  # one layer/stage of the encoder (None: its default output)
    weights: str | None = None  # local weights file, passed to create(weights=...)
    pretrained: bool = True  # False: random init (a random-init encoder's features are still spatially structured)
    # Random-init encoders only: the size of a seeded pool of random initialisations; each step that
    # draws this encoder uses one of them (drawn from (seed, step)), so the upsampler cannot fit one
    # network's weights. Instance 0 is the one validation uses.
    pool: int = 1

    @property
    def label(self) -> str:
        """Short unique name used in logs and metric columns."""
        return self.name if self.layer is None else f"{self.name}@{self.layer}"


@dataclass
class DataConfig:
    """Training images and the geometry of the recipe.

    The image is resized (short side) and centre-cropped to ``hr_factor * input_size`` pixels; the
    whole image resized to ``input_size`` gives the low-res features; ``crops_per_image`` crops of
    ``input_size`` pixels, aligned to the encoder grid, give the targets.
    """

    root: list[str] = field(default_factory=list)  # folders (searched recursively) or .txt file lists
    input_size: int = 224  # S: side of the low-res input image; a multiple of every encoder's stride
    hr_factor: int = 2  # the high-res image has hr_factor * S pixels per side
    crops_per_image: int = 4
    # Targets: "crops" (the paper: encoder features of ``crops_per_image`` grid-aligned crops of the
    # high-res image) or "full" (encoder features of the whole high-res image; for CNNs, whose crop
    # features are dominated by the crop's zero-padded borders at small sizes).
    target: str = "crops"
    # Several upsampling ratios (only with target="full"): each step draws F from this list among
    # those the step's encoder allows, and the low-res input becomes ``hr_factor * input_size / F``
    # pixels (the high-res image keeps its size), so one run trains 2x, 4x and 8x. Empty: hr_factor.
    hr_factors: list[int] = field(default_factory=list)
    min_cells: int = 4  # a ratio is allowed for an encoder when its low-res map has >= min_cells cells per side
    min_size: int | None = None  # minimum short side of a usable image; None: hr_factor * input_size
    batch_size: int = 4  # images per process per micro-step
    num_workers: int = 2  # DataLoader worker processes (0: load in the main process)
    cache_dir: str | None = None  # where the image-size index is cached; None: the run directory
    index_threads: int = 8  # threads reading image headers when the size index is built


@dataclass
class AugmentConfig:
    """Augmentation: a random resized crop and flip of the source photo (geometry, applied before
    the recipe's images are made, so targets and inputs stay aligned), then photometric
    augmentation of the guidance image (pixel-aligned)."""

    # Random resized crop: a square of crop_scale (fraction of the short side, drawn uniformly) at
    # a uniform position, resized to the high-res size. (1, 1): the paper's centre crop.
    crop_scale: tuple[float, float] = (1.0, 1.0)
    flip_p: float = 0.0  # probability of a horizontal flip
    jitter_p: float = 0.8
    brightness: float = 0.4  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # hue rotation drawn from [-hue, hue] turns
    grayscale_p: float = 0.2
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 95)
    noise_p: float = 0.3
    noise_std: tuple[float, float] = (0.0, 0.05)  # in [0, 1] intensity units


@dataclass
class LossConfig:
    """Weights of the three loss terms and the constants of CosMSE."""

    crop_weight: float = 1.0  # CosMSE(prediction window, encoder features of the crop)
    consistency_weight: float = 0.1  # CosMSE(anyup(aug image), stopgrad(anyup(image))) at S pixels
    lowres_weight: float = 0.1  # CosMSE(area_downsample(prediction), low-res features)
    minmax_eps: float = 1e-6  # added to (max - min) in the min-max normalisation
    cos_eps: float = 1e-8  # norm floor of the cosine similarity


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    accum_steps: int = 1  # micro-steps per optimiser step (gradient accumulation)
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    precision: str = "auto"  # "auto" (bf16 autocast on GPU, fp32 on CPU), "bf16" or "fp32"
    # Learning-rate schedule, a pure function of the step (so resuming is exact): "constant" (the
    # paper's recipe) or "cosine": constant until ``decay_start``, then cosine down to
    # ``lr * min_lr_ratio`` at ``steps``.
    schedule: str = "constant"
    decay_start: int = 0
    min_lr_ratio: float = 0.0
    # Exponential moving average of the weights (anyup.train.ema), updated after every optimiser
    # step; the run validates and exports the average (model.safetensors) and also exports its last
    # weights (model_raw.safetensors). 0: off (the paper's recipe).
    ema_decay: float = 0.0

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based) in a run of ``total_steps`` steps."""
        if self.schedule == "constant" or step < self.decay_start:
            return self.lr
        span = max(1, total_steps - self.decay_start)
        t = min(1.0, (step - self.decay_start) / span)
        ratio = self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.lr * ratio


@dataclass
class ValConfig:
    """Periodic label-free validation: feature fidelity on held-out images, PCA pictures."""

    root: list[str] = field(default_factory=list)  # held-out images; empty: hold out from data.root
    num_images: int = 16  # images held out from the training list when ``root`` is empty
    every: int = 1000  # steps between validations (0: only at the end)
    at_start: bool = True  # also validate the starting point (step 0) of a fresh run
    batch_size: int = 4
    num_samples: int = 4  # images shown in samples/step_XXXXXXX.png (0: no pictures)


@dataclass
class LogConfig:
    every: int = 10  # steps between rows of metrics.csv
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed
    progress: bool = True  # tqdm progress bar on rank 0


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps between checkpoints (always one at the end)
    keep_every: int | None = None  # additionally keep checkpoints/step_XXXXXXX.pt every N steps


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``run_dir/config.yaml``."""

    run_dir: str = "runs/anyup"
    steps: int = 100_000  # optimiser steps
    seed: int = 0
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK if available, else cpu), "cpu", "cuda", "cuda:1"
    num_threads: int | None = None  # torch CPU threads per process (None: torch's default)
    deterministic: bool = False  # GPU: deterministic kernels (bit-identical resumes; CPU always is)
    init: str | None = None  # None: random init; a published weights name or a .pth/.safetensors path
    # AnyUpConfig fields. max_memory is fixed (not "automatic") so AnyUp's tiling plan, and with it
    # every bit of the result, does not depend on the free memory of the moment (bit-identical resumes).
    model: dict[str, Any] = field(default_factory=lambda: {"max_memory": 8 * 2**30})
    encoders: list[TrainEncoderSpec] = field(default_factory=lambda: [TrainEncoderSpec()])
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    val: ValConfig = field(default_factory=ValConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        d, o = self.data, self.optim
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(
            self.num_threads is None or self.num_threads >= 1,
            f"num_threads must be >= 1 or null, got {self.num_threads}",
        )
        _check(len(self.encoders) >= 1, "encoders must list at least one encoder")
        _check(all(e.weight > 0 for e in self.encoders), "every encoders[i].weight must be > 0")
        _check(d.input_size >= 1, f"data.input_size must be >= 1, got {d.input_size}")
        _check(d.hr_factor >= 2, f"data.hr_factor must be >= 2, got {d.hr_factor}")
        _check(d.crops_per_image >= 1, f"data.crops_per_image must be >= 1, got {d.crops_per_image}")
        _check(d.target in ("crops", "full"), f"data.target must be 'crops' or 'full', got {d.target!r}")
        _check(d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}")
        _check(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
        _check(o.accum_steps >= 1, f"optim.accum_steps must be >= 1, got {o.accum_steps}")
        _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
        _check(
            o.schedule in ("constant", "cosine"), f"optim.schedule must be 'constant' or 'cosine', got {o.schedule!r}"
        )
        _check(
            0 <= o.decay_start < self.steps or o.schedule == "constant",
            f"optim.decay_start must be in [0, steps={self.steps}), got {o.decay_start}",
        )
        _check(0.0 <= o.min_lr_ratio <= 1.0, f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
        _check(0.0 <= o.ema_decay < 1.0, f"optim.ema_decay must be in [0, 1) (0: no average), got {o.ema_decay}")
        _check(
            o.precision in ("auto", "bf16", "fp32"),
            f"optim.precision must be 'auto', 'bf16' or 'fp32', got {o.precision!r}",
        )
        _check(self.checkpoint.every >= 1, f"checkpoint.every must be >= 1, got {self.checkpoint.every}")
        _check(self.log.every >= 1, f"log.every must be >= 1, got {self.log.every}")
        _check(self.val.every >= 0, f"val.every must be >= 0, got {self.val.every}")
        for name in ("jitter_p", "grayscale_p", "blur_p", "jpeg_p", "noise_p"):
            p = getattr(self.augment, name)
            _check(0.0 <= p <= 1.0, f"augment.{name} must be in [0, 1], got {p}")
        q_lo, q_hi = self.augment.jpeg_quality
        _check(1 <= q_lo <= q_hi <= 100, f"augment.jpeg_quality must satisfy 1 <= lo <= hi <= 100, got {(q_lo, q_hi)}")
        s_lo, s_hi = self.augment.crop_scale
        _check(0.0 < s_lo <= s_hi <= 1.0, f"augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {(s_lo, s_hi)}")
        _check(0.0 <= self.augment.flip_p <= 1.0, f"augment.flip_p must be in [0, 1], got {self.augment.flip_p}")
        for f in d.hr_factors:
            _check(f >= 2, f"every data.hr_factors entry must be >= 2, got {d.hr_factors}")
            hr = d.hr_factor * d.input_size
            _check(hr % f == 0, f"data.hr_factors entry {f} must divide hr_factor * input_size = {hr}")
        _check(
            not d.hr_factors or d.target == "full",
            f"data.hr_factors needs data.target='full' (targets of the whole high-res image), got {d.target!r}",
        )
        _check(d.min_cells >= 1, f"data.min_cells must be >= 1, got {d.min_cells}")
        for e in self.encoders:
            _check(e.pool >= 1, f"encoders[{e.label}].pool must be >= 1, got {e.pool}")
            _check(
                e.pool == 1 or not e.pretrained,
                f"encoders[{e.label}].pool > 1 needs pretrained: false (a pool of random initialisations)",
            )
        labels = [e.label for e in self.encoders]
        _check(len(set(labels)) == len(labels), f"encoders must be distinct, got {labels}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass


def _plain(value: Any) -> Any:
    """Tuples to lists (YAML-friendly), recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_FROM_STR: dict[type, Callable[[str], Any]] = {TrainEncoderSpec: lambda name: {"name": name}}  # "encoders=[x, y]"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` (the package's one parser, :func:`anyup._config.coerce`)."""
    return coerce(value, tp, where, _FROM_STR)


def _from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    return from_dict(cls, data, where, _FROM_STR)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from a (possibly partial) nested dict; unknown keys raise."""
    cfg = _from_dict(TrainConfig, data)
    cfg.validate()
    return cfg


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` -> ``(["optim", "lr"], 1e-4)``; the value is parsed as YAML (:func:`anyup._config.parse_value`)."""
    key, raw = split_assignment(text, "section.field=value (e.g. optim.lr=1e-4)")
    keys = [k for k in key.split(".") if k]
    if not keys:
        raise ValueError(f"override {text!r} has an empty key")
    return keys, parse_value(raw)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict (new dict returned)."""
    out = _merge({}, data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ValueError(f"override {text!r}: {k!r} is not a section")
                node[k] = child
            node = child
        node[keys[-1]] = value
    return out


# ----------------------------------------------------------------------------------------------
# presets


def _paper() -> TrainConfig:
    """The recipe of the published ``anyup_paper`` weights (DINOv2 ViT-S/14, 100k steps)."""
    return TrainConfig(run_dir="runs/anyup_paper", encoders=[TrainEncoderSpec("dinov2_vits14")])


def _multi_backbone() -> TrainConfig:
    """The recipe of ``anyup_multi_backbone``: a random ViT per step among five."""
    # anyup.encoders names of timm's vit_small_patch14_dinov2.lvd142m, vit_small_patch14_reg4_dinov2.lvd142m,
    # vit_base_patch16_clip_224.openai, vit_base_patch16_siglip_224.webli, vit_base_patch16_224.augreg2_in21k_ft_in1k
    names = ["dinov2_vits14", "dinov2_vits14_reg", "clip_vitb16", "siglip_vitb16", "vit_b16"]
    return TrainConfig(run_dir="runs/anyup_multi_backbone", encoders=[TrainEncoderSpec(n) for n in names])


def _cpu_offline() -> TrainConfig:
    """A run that fits a CPU, with an encoder whose weights ship offline (EfficientNet-Lite0, stride 16).

    224 px images, crops of 112 px: low-res features 7x7, predictions on a 14x14 grid.
    """
    return TrainConfig(
        run_dir="runs/anyup_cpu_offline",
        steps=2000,
        encoders=[TrainEncoderSpec("efficientnet_lite0")],
        data=DataConfig(input_size=112, crops_per_image=2, batch_size=2, num_workers=1),
        val=ValConfig(num_images=8, every=100, batch_size=4, num_samples=3),
        log=LogConfig(every=5),
        checkpoint=CheckpointConfig(every=25),
    )


def _cpu_offline_multi() -> TrainConfig:
    """Multi-backbone CPU run over every offline encoder: EfficientNet-Lite0 stages, CRAFT's and HED's VGG16.

    128 px inputs, 256 px high-res images (128 is a multiple of every stride from 4 to 32), targets
    = the encoder's features of the whole 256 px image (``data.target="full"``: at these sizes a
    128 px crop's CNN features are dominated by its zero-padded borders), cosine decay after step
    435. The shipped ``anyup_offline`` weights come from this recipe (their first 525 steps used
    crop targets and a constant lr; see the model card in the README).
    """
    cfg = _cpu_offline()
    cfg.run_dir = "runs/anyup_cpu_offline_multi"
    cfg.steps = 1600
    cfg.data.input_size = 128
    cfg.data.target = "full"
    cfg.optim.schedule = "cosine"
    cfg.optim.decay_start = 435
    cfg.optim.min_lr_ratio = 0.05
    layers = {
        "efficientnet_lite0": ["stage2", "stage3", "stage4", "stage6"],  # strides 8, 16, 16, 32
        "vgg16_bn_craft": ["conv3_3", "conv4_3", "conv5_2"],  # strides 4, 8, 16
        "vgg16_hed": ["conv3_3", "conv4_3", "conv5_3"],  # strides 4, 8, 16
    }
    cfg.encoders = [TrainEncoderSpec(name, layer=layer) for name, names in layers.items() for layer in names]
    return cfg


def _cpu_offline_v2() -> TrainConfig:
    """The offline CNNs plus pools of random-init ViTs (patch 14 and 16), ConvNeXt and ResNet, at 2x/4x/8x.

    Every offline encoder layer of ``cpu_offline_multi`` (weight 1 each) and four random-init
    families (3 seeded initialisations each; together ~25 % of the steps). Each step draws an
    upsampling ratio among 2, 4 and 8 that leaves the encoder at least 4 low-res cells (256 px
    high-res image, 128/64/32 px inputs), random resized crops (60-100 % of the short side) and
    flips. Fine-tuning: lr 1e-4, cosine decay after step 40 to 5 % at step 90 (what a session on
    the shared 2-core machine affords: ~30 s per step at nice 10 under load).
    """
    cfg = _cpu_offline_multi()
    cfg.run_dir = "runs/anyup_cpu_offline_v2"
    cfg.steps = 90
    cfg.optim.lr = 1e-4
    cfg.optim.decay_start = 40
    cfg.val.at_start = False  # fine-tuning: the starting point is the init's own evaluation (train-eval)
    cfg.data.hr_factors = [2, 4, 8]
    cfg.data.num_workers = 1
    cfg.augment.crop_scale = (0.6, 1.0)
    cfg.augment.flip_p = 0.5
    cfg.val.num_samples = 1
    cfg.val.every = 0  # only at the end
    cfg.checkpoint.every = 10
    cfg.encoders += [
        TrainEncoderSpec("vit_s16", pretrained=False, pool=3),  # patch 16
        TrainEncoderSpec("dinov2_vits14", pretrained=False, pool=3),  # patch 14: inputs resized to multiples of 14
        TrainEncoderSpec("convnext_tiny", layer="stage1", weight=0.5, pretrained=False, pool=3),  # stride 8
        TrainEncoderSpec("resnet50", layer="layer2", weight=0.5, pretrained=False, pool=3),  # stride 8
    ]
    return cfg


def _cpu_offline_v3() -> TrainConfig:
    """``cpu_offline_v2`` trained with the soft window edge, 1200 steps: the recipe of the v3 weights.

    ``model.window_edge = "soft"`` (each cell's logit + log(coverage), :mod:`anyup.engine.window`:
    no grid-locked blocks), fine-tuning from the v1 weights (``init``; the v1 file is
    ``git show f806a7c:anyup/weights_data/anyup_offline.safetensors``), lr 1e-4 constant for 300 steps,
    then cosine to 5 % at step 1200; a checkpoint kept every 300 steps. About 3 s per step with one
    thread on this project's 2-core CPU (~1 h).
    """
    cfg = _cpu_offline_v2()
    cfg.run_dir = "runs/anyup_cpu_offline_v3"
    cfg.model = {**cfg.model, "window_edge": "soft"}
    cfg.steps = 1200
    cfg.optim.decay_start = 300
    cfg.checkpoint.keep_every = 300
    return cfg


def _gpu() -> TrainConfig:
    """A GPU run of the same mixture at the paper's sizes: 448 px images, 224 px inputs, bf16 autocast.

    Batch 16, 2x/4x/8x ratios, random resized crops and flips, random-init encoder pools of 8;
    ``device: auto`` takes ``cuda`` when there is one (and falls back to the CPU otherwise).
    """
    cfg = _cpu_offline_v2()
    cfg.run_dir = "runs/anyup_gpu"
    cfg.steps = 20000
    cfg.device = "auto"
    cfg.optim.lr = 2e-4
    cfg.optim.precision = "bf16"
    cfg.optim.decay_start = 15000
    cfg.val.at_start = True
    cfg.data.input_size = 224
    cfg.data.batch_size = 16
    cfg.data.num_workers = 8
    cfg.val.every = 1000
    cfg.val.num_images = 16
    cfg.val.batch_size = 16
    cfg.log.every = 20
    cfg.checkpoint.every = 500
    for e in cfg.encoders:
        if not e.pretrained:
            e.pool = 8
    return cfg


def _cpu_offline_v4() -> TrainConfig:
    """``cpu_offline_v3`` at 224 px inputs (448 px images, 2x and 4x), gradient clipping and a weight average.

    Gradient clipping (``optim.grad_clip = 1``, against typical norms of 0.2-0.5): on un-normalised
    CNN features (HED's VGG, CRAFT's) CosMSE's per-pixel min-max normalisation divides by the
    target's channel range, and a target pixel whose channels are all (nearly) equal (a dead ReLU
    pixel) makes a rare step with a loss of ~10^4-10^5 and a gradient norm up to ~10^6 (3 in 700
    steps of the v5 run; ``docs/scripts/cosmse_spikes.py``). Unclipped, one such step kicks every weight by ~30 learning rates and inflates AdamW's
    second moments for the rest of the run. ``optim.ema_decay = 0.99``: the exported weights are
    the average of about the last 100 steps. 600 steps, cosine from the start, ~4.7 s per step on
    this project's 2-core CPU (~47 min). Fine-tuning: start it with ``--init`` (the shipped weights).
    """
    cfg = _cpu_offline_v3()
    cfg.run_dir = "runs/anyup_cpu_offline_v4"
    cfg.steps = 600
    cfg.data.input_size = 224
    cfg.data.hr_factors = [2, 4]
    cfg.optim.decay_start = 0
    cfg.optim.grad_clip = 1.0
    cfg.optim.ema_decay = 0.99
    cfg.checkpoint.keep_every = 200
    return cfg


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "paper": _paper,
    "multi_backbone": _multi_backbone,
    "cpu_offline": _cpu_offline,
    "cpu_offline_multi": _cpu_offline_multi,
    "cpu_offline_v2": _cpu_offline_v2,
    "cpu_offline_v3": _cpu_offline_v3,
    "cpu_offline_v4": _cpu_offline_v4,
    "gpu": _gpu,
}


def get_preset(name: str) -> TrainConfig:
    """A fresh copy of a named preset (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------------------------
# YAML


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - pyyaml is in the train extra
        raise ImportError('training configs need PyYAML: pip install "anyup[train]"') from err
    return yaml


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {str(path)!r}")
    data = _yaml().safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def save_yaml(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML atomically (temp file in the same folder + ``os.replace``)."""
    from anyup._atomic import atomic_write_text

    atomic_write_text(path, _yaml().safe_dump(cfg.to_dict(), sort_keys=False))


def resolve_config(
    preset: str | None = None,
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> TrainConfig:
    """Preset (or defaults) <- YAML file <- ``a.b=value`` overrides, validated.

    A YAML file may name its own base with a top-level ``preset: NAME`` key.
    """
    data: dict[str, Any] = {}
    file_data: dict[str, Any] = load_yaml(path) if path is not None else {}
    base = file_data.pop("preset", None)
    if preset is not None and base is not None and preset != base:
        raise ValueError(f"preset {preset!r} given but config file {str(path)!r} says preset {base!r}")
    name = preset or base
    if name is not None:
        data = get_preset(name).to_dict()
    data = _merge(data, file_data)
    data = apply_overrides(data, overrides)
    return config_from_dict(data)


# Renamed in 0.2.0 (it clashed with anyup.encoders.EncoderSpec, the registry entry); the old name warns
# for one release.
__getattr__ = deprecated_aliases(__name__, {"EncoderSpec": ("TrainEncoderSpec", TrainEncoderSpec)})
