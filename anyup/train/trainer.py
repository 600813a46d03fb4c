"""The training loop: ``train(config) -> Path`` of the exported ``model.safetensors``.

One script for one CPU, one GPU, or many GPUs/machines under ``torchrun`` (DistributedDataParallel,
NCCL on GPU, gloo on CPU). Rank 0 logs, validates and saves. Every random decision is a pure
function of ``(seed, step)`` or ``(seed, epoch, position)``, and the checkpoint stores the data
position, so a run killed at any step and started again with the same command ends bit-identical
to an uninterrupted one (on the same hardware and thread count).

Per optimiser step (``accum_steps`` micro-batches of ``batch_size`` images on each rank):

1. draw an encoder (multi-backbone recipes: weighted, the same on every rank);
2. low-res features ``encoder(image_S)`` of shape ``(B, C, S/s, S/s)``;
3. ``K`` crops of ``S`` pixels of the ``F*S`` image at offsets that are multiples of the stride ``s``,
   their features are the targets ``(B*K, C, S/s, S/s)``;
4. :class:`~anyup.train.losses.RecipeLoss` (prediction on the ``F*S/s`` grid, three CosMSE terms);
5. AdamW step (optional gradient clipping).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from anyup._atomic import hold_folder_lock
from anyup.encoders.base import Encoder, feature_map
from anyup.model import ARCH_FIELDS, AnyUp
from anyup.train.checkpoint import (
    RESUME_KEYS,
    atomic_write,
    capture_rng_state,
    export_safetensors,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from anyup.train.config import TrainConfig, TrainEncoderSpec, config_from_dict, load_yaml, save_yaml
from anyup.train.data import (
    DataPosition,
    RecipeDataset,
    SizeIndex,
    StepSampler,
    collect_images,
    derive_seed,
    fit_to_multiple,
    generator_for,
    load_eval_images,
    make_loader,
    split_holdout,
)
from anyup.train.ema import WeightAverage
from anyup.train.losses import RecipeLoss, crop_boxes, extract_crops
from anyup.train.metrics import MetricsWriter

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]
LAST_CHECKPOINT = "checkpoints/last.pt"
MODEL_FILE = "model.safetensors"
RAW_MODEL_FILE = "model_raw.safetensors"  # the last weights of a run that exports their average (optim.ema_decay)
DEFAULT_MAX_MEMORY = 8 * 2**30


# ----------------------------------------------------------------------------------------------
# distributed context


@dataclass
class DistContext:
    """Rank, world size and device of this process; ``owns_group`` if we initialised the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str) -> DistContext:
        """Read torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and join the group."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        else:
            dev = torch.device(device)
            if dev.type == "cuda" and dev.index is None:
                dev = torch.device(f"cuda:{local}")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {device!r} requested but CUDA is not available")
            torch.cuda.set_device(dev)
        owns = False
        if dist.is_available() and dist.is_initialized():
            world, rank = dist.get_world_size(), dist.get_rank()
        elif world > 1:
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
            owns = True
        return cls(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_mean(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def teardown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# building blocks


def build_encoder(spec: TrainEncoderSpec, device: torch.device, seed: int = 0, instance: int = 0) -> Encoder:
    """``anyup.encoders.create`` for one :class:`TrainEncoderSpec`, frozen, on ``device``.

    Random-init encoders (``pretrained: false``) are seeded by ``seed``, the spec and ``instance``
    (the index in the spec's pool), so every rank (and a later evaluation) builds the same one.
    """
    try:
        from anyup.encoders import create
    except ImportError as err:
        raise ImportError(f'training needs anyup.encoders ({err}); pip install "anyup[encoders]"') from err
    with torch.random.fork_rng(devices=[]):
        parts = (seed, 0xE4C, *spec.label.encode()) + ((instance,) if instance else ())  # instance 0: as before pools
        torch.manual_seed(derive_seed(*parts))
        enc = create(spec.name, weights=spec.weights, pretrained=spec.pretrained, layers=spec.layer, device=str(device))
    enc.requires_grad_(False)
    return enc.eval()


def build_model(cfg: TrainConfig, device: torch.device) -> AnyUp:
    """AnyUp from scratch (``cfg.model`` fields) or from published weights / a file (``cfg.init``)."""
    import anyup
    from anyup.model import AnyUpConfig

    fields = {"max_memory": DEFAULT_MAX_MEMORY, **cfg.model}  # never "automatic": see TrainConfig.model
    try:
        arch = AnyUpConfig(**fields)
    except TypeError as err:
        raise ValueError(f"model: {err}; allowed fields: {list(AnyUpConfig.__dataclass_fields__)}") from err
    if cfg.init is None:
        with torch.random.fork_rng(devices=[]):  # the initialisation is a function of the seed alone
            torch.manual_seed(derive_seed(cfg.seed, 0x1A17))
            model = AnyUp(arch)
    else:
        model = anyup.load(cfg.init, config=arch)
    return model.to(device).train()


def freeze_unused_parameters(model: nn.Module) -> list[str]:
    """Stop gradients for parameters the forward pass never uses (e.g. unused attention projections).

    Needed for DistributedDataParallel without ``find_unused_parameters``. Uses a private generator,
    so the global RNG is untouched. Returns the frozen names.
    """
    g = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    image = torch.randn(1, 3, 16, 16, generator=g).to(device)
    feats = torch.randn(1, 3, 4, 4, generator=g).to(device)
    model.zero_grad(set_to_none=True)
    model(image, feats, output_size=(8, 8)).square().mean().backward()
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    return frozen


def choose_encoder(specs: list[TrainEncoderSpec], seed: int, step: int) -> int:
    """Index of the encoder used at ``step`` (weighted draw; identical on every rank)."""
    if len(specs) == 1:
        return 0
    w = torch.tensor([s.weight for s in specs], dtype=torch.float64)
    return int(torch.multinomial(w, 1, generator=generator_for(seed, 0xE2C, step)).item())


def choose_instance(spec: TrainEncoderSpec, seed: int, step: int) -> int:
    """Index in ``spec``'s pool of random initialisations used at ``step`` (0 when there is no pool)."""
    if spec.pool <= 1:
        return 0
    return int(torch.randint(spec.pool, (), generator=generator_for(seed, 0x9001, step)))


def allowed_factors(cfg: TrainConfig, stride: int) -> list[int]:
    """The upsampling ratios ``data.hr_factors`` allows for an encoder of ``stride`` (``[hr_factor]`` without)."""
    d = cfg.data
    if not d.hr_factors:
        return [d.hr_factor]
    hr = d.hr_factor * d.input_size
    ok = [f for f in d.hr_factors if (hr // f) // stride >= d.min_cells]
    return ok or [min(d.hr_factors)]


def choose_factor(cfg: TrainConfig, stride: int, step: int) -> int:
    """The upsampling ratio of ``step`` (uniform among :func:`allowed_factors`; identical on every rank)."""
    factors = allowed_factors(cfg, stride)
    if len(factors) == 1:
        return factors[0]
    return factors[int(torch.randint(len(factors), (), generator=generator_for(cfg.seed, 0xFAC, step)))]


def _features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return feature_map(encoder(x), 0, f"encoder {type(encoder).__name__}")


@torch.no_grad()
def recipe_targets(
    encoder: nn.Module,
    image: torch.Tensor,
    image_hr: torch.Tensor,
    crop_u: torch.Tensor,
    stride: int,
    target: str = "crops",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Low-res features, crop targets and crop offsets (in high-res grid cells) for one micro-batch.

    Args:
        encoder: frozen, ``(B, 3, H, W)`` in [0, 1] -> ``(B, C, H/s, W/s)``.
        image: ``(B, 3, S, S)``; image_hr: ``(B, 3, F*S, F*S)``; crop_u: ``(B, K, 2)`` in [0, 1).
        stride: the encoder's stride ``s``.

    Returns:
        ``lowres (B, C, S/s, S/s)``, ``targets (B*K, C, S/s, S/s)``, ``cells (B, K, 2)`` int64; with
        ``target="full"``: ``targets (B, C, F*S/s, F*S/s)`` (the whole high-res image) and ``cells=None``.
    """
    s = image.shape[-1]
    if target == "full":  # inputs that are not a multiple of the encoder's (ViT patch 14) are resized to one
        multiple = int(getattr(getattr(encoder, "info", None), "multiple", 1))
        lowres = _features(encoder, fit_to_multiple(image, multiple))  # (B, C, h, w)
        return lowres, _features(encoder, fit_to_multiple(image_hr, multiple)), None  # (B, C, F*h, F*w)
    lowres = _features(encoder, image)  # (B, C, h, w)
    boxes = crop_boxes(crop_u, image_hr.shape[-1], s, stride)  # (B, K, 2) pixels
    crops = extract_crops(image_hr, boxes, s)  # (B*K, 3, S, S)
    targets = _features(encoder, crops)  # (B*K, C, h, w)
    return lowres, targets, boxes // stride


def _autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    precision = cfg.optim.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _metric_columns(specs: list[TrainEncoderSpec]) -> list[str]:
    cols = [
        "epoch",
        "loss",
        "loss_crop",
        "loss_consistency",
        "loss_lowres",
        "grad_norm",
        "lr",
        "images_per_s",
        "elapsed_s",
        "skipped_images",
        "encoder",
    ]
    for s in specs:
        cols += [f"val_cos_anyup/{s.label}", f"val_cos_bilinear/{s.label}"]
    if len(specs) > 1:
        cols += ["val_cos_anyup/mean", "val_cos_bilinear/mean"]
    return cols


def _diff_configs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff_configs(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


# ----------------------------------------------------------------------------------------------
# the run


class Trainer:
    """One training run in ``cfg.run_dir`` (resumes from ``checkpoints/last.pt`` when present)."""

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: DistContext,
        on_step: StepCallback | None = None,
        encoders: dict[str, nn.Module] | None = None,
    ) -> None:
        self.cfg = cfg
        self.custom_encoders = dict(encoders or {})
        self.ctx = ctx
        self.on_step = on_step
        self.run_dir = Path(cfg.run_dir)
        self.device = ctx.device

    # -- setup -------------------------------------------------------------------------------
    def _log(self, msg: str, *args: Any) -> None:
        if self.ctx.is_main:
            logger.info(msg, *args)

    def _prepare_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        files = collect_images(d.root)
        min_size = d.min_size if d.min_size is not None else d.hr_factor * d.input_size
        index = SizeIndex(d.cache_dir or self.run_dir, threads=d.index_threads)
        if self.ctx.is_main:
            kept, report = index.filter(files, min_size, progress=cfg.log.progress)
        self.ctx.barrier()
        if not self.ctx.is_main:  # the index is cached now: every rank filters identically
            kept, report = SizeIndex(d.cache_dir or self.run_dir).filter(files, min_size)
        self._log(
            "%d images under %s: %d usable, %d smaller than %d px, %d unreadable%s",
            len(files), d.root, report.kept, report.too_small, min_size, report.unreadable,
            f" (e.g. {report.unreadable_examples})" if report.unreadable else "",
        )  # fmt: skip
        if cfg.val.root:
            train_files, val_files = kept, collect_images(cfg.val.root)
        else:
            train_files, val_files = split_holdout(kept, cfg.val.num_images, cfg.seed)
        self.data_report = report
        self.dataset = RecipeDataset(train_files, d.input_size, d.hr_factor, d.crops_per_image, cfg.augment, cfg.seed)
        self.sampler = StepSampler(len(train_files), d.batch_size, self.ctx.world_size, cfg.optim.accum_steps, cfg.seed)
        self.val_files = val_files
        self.val_images: torch.Tensor | None = None

    def _prepare_encoders(self) -> None:
        d = self.cfg.data
        # anyup Encoders, or the caller's modules: anything with .info (stride, multiple) -> typed Any where stored
        self.encoders: list[Any] = [
            self.custom_encoders[s.label].to(self.device).eval().requires_grad_(False)
            if s.label in self.custom_encoders
            else build_encoder(s, self.device, self.cfg.seed)
            for s in self.cfg.encoders
        ]
        unused = sorted(set(self.custom_encoders) - {s.label for s in self.cfg.encoders})
        if unused:
            raise ValueError(
                f"encoders given for {unused} but the config's encoders are {[s.label for s in self.cfg.encoders]}"
            )
        hr = d.hr_factor * d.input_size
        self._pool_cache: dict[tuple[int, int], Any] = {}
        for spec, enc in zip(self.cfg.encoders, self.encoders):
            stride, multiple = int(enc.info.stride), int(enc.info.multiple)
            if d.target == "full" and (d.input_size % multiple or hr % multiple):
                self._log("%s: inputs are resized to multiples of %d (whole-image targets)", spec.label, multiple)
                continue
            if d.input_size % multiple or d.input_size % stride:
                raise ValueError(
                    f"data.input_size={d.input_size} must be a multiple of encoder {spec.label!r}'s stride "
                    f"{stride} and input multiple {multiple}"
                )
            if hr % multiple:
                raise ValueError(
                    f"data.hr_factor * data.input_size = {hr} is not a multiple of {multiple} ({spec.label})"
                )

    def _prepare_model(self) -> None:
        o = self.cfg.optim
        self.model = build_model(self.cfg, self.device)
        frozen = freeze_unused_parameters(self.model)
        if frozen:
            self._log("parameters the forward pass never uses (kept, not trained): %s", frozen)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.ema = WeightAverage(self.model, o.ema_decay) if o.ema_decay > 0 else None
        self.loss_fn = RecipeLoss(self.model, self.cfg.loss)
        if self.ctx.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module: nn.Module = nn.parallel.DistributedDataParallel(self.loss_fn, device_ids=ids)
        else:
            self.step_module = self.loss_fn

    def _resume(self) -> None:
        self.step = 0
        self.position = DataPosition()
        self.skipped = 0
        ckpt_path = self.run_dir / LAST_CHECKPOINT
        if not ckpt_path.is_file():
            return
        state = load_checkpoint(ckpt_path, required=RESUME_KEYS)
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        if self.ema is not None:
            if isinstance(state.get("ema"), dict):
                self.ema.load_state_dict(state["ema"])
            else:  # a run started without the average: it starts now, from the checkpoint's weights
                self.ema = WeightAverage(self.model, self.cfg.optim.ema_decay)
                logger.warning(
                    "the checkpoint has no weight average (optim.ema_decay was 0): it starts at step %d", self.step
                )
        self.position = DataPosition(int(state["data"]["epoch"]), int(state["data"]["index"]))
        self.skipped = int(state.get("skipped_images", 0))
        if state["data"].get("num_images") not in (None, len(self.dataset)):
            logger.warning(
                "the training set changed since the checkpoint (%s -> %d images): the run continues but is "
                "no longer reproducible",
                state["data"].get("num_images"),
                len(self.dataset),
            )
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank])
        else:
            logger.warning("checkpoint has RNG states of %d ranks, running with %d", len(rng), self.ctx.world_size)
            torch.manual_seed(derive_seed(self.cfg.seed, self.ctx.rank, self.step))
        diffs = _diff_configs(state.get("config", {}), self.cfg.to_dict())
        if diffs:
            self._log("config changed since the checkpoint: %s", "; ".join(diffs))
        self._log(
            "resumed from %s at step %d (epoch %d, index %d)",
            ckpt_path,
            self.step,
            self.position.epoch,
            self.position.index,
        )

    # -- saving ------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        rng = self.ctx.gather_objects(capture_rng_state())
        if self.ctx.is_main:
            state = {
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "data": {"epoch": self.position.epoch, "index": self.position.index, "num_images": len(self.dataset)},
                "rng": rng,
                "skipped_images": self.skipped,
                "config": self.cfg.to_dict(),
            }
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()
            path = save_checkpoint(self.run_dir / LAST_CHECKPOINT, state)
            keep = self.cfg.checkpoint.keep_every
            if keep and self.step % keep == 0:
                atomic_write(self.run_dir / "checkpoints" / f"step_{self.step:07d}.pt", partial(shutil.copyfile, path))
        self.ctx.barrier()

    def export(self) -> Path:
        path = self.run_dir / MODEL_FILE
        if self.ctx.is_main:
            arch = {k: v for k, v in self.model.config.to_dict().items() if k in ARCH_FIELDS}
            meta = {
                "format": "anyup",
                "anyup_config": arch,
                "step": self.step,
                "encoders": [s.label for s in self.cfg.encoders],
                "init": self.cfg.init or "random",
            }
            if self.ema is None:
                export_safetensors(self.model, path, meta)
            else:
                raw = self.run_dir / RAW_MODEL_FILE
                export_safetensors(self.model, raw, {**meta, "weights": "last"})
                with self.ema.applied(self.model):
                    export_safetensors(self.model, path, {**meta, "weights": "ema", "ema_decay": self.ema.decay})
                self._log("exported the last weights to %s", raw)
            self._log("exported %s (step %d)", path, self.step)
        self.ctx.barrier()
        return path

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Feature fidelity on the held-out images for every encoder; PCA pictures (rank 0 only)."""
        from anyup.train.validate import feature_fidelity, save_pca_samples

        cfg, d = self.cfg, self.cfg.data
        if not self.val_files:
            return {}
        if self.val_images is None:
            self.val_images, self.val_files = load_eval_images(self.val_files, d.hr_factor * d.input_size)
        was_training = self.model.training
        self.model.eval()
        out: dict[str, float] = {}
        stack = contextlib.ExitStack()
        try:
            if self.ema is not None:  # the weights the run exports
                stack.enter_context(self.ema.applied(self.model))
            for spec, enc in zip(cfg.encoders, self.encoders):
                r = feature_fidelity(self.model, enc, self.val_images, d.input_size, cfg.val.batch_size, self.device)
                out[f"val_cos_anyup/{spec.label}"] = r["anyup"]
                out[f"val_cos_bilinear/{spec.label}"] = r["bilinear"]
            if len(cfg.encoders) > 1:
                for k in ("anyup", "bilinear"):
                    vals = [out[f"val_cos_{k}/{s.label}"] for s in cfg.encoders]
                    out[f"val_cos_{k}/mean"] = sum(vals) / len(vals)
            if cfg.val.num_samples > 0:
                save_pca_samples(
                    self.run_dir / "samples" / f"step_{self.step:07d}.png",
                    self.model,
                    self.encoders[0],
                    self.val_images[: cfg.val.num_samples],
                    d.input_size,
                    device=self.device,
                    title=f"{cfg.encoders[0].label}, step {self.step}",
                )
        finally:
            stack.close()
            self.model.train(was_training)
        labels = [s.label for s in cfg.encoders] + (["mean"] if len(cfg.encoders) > 1 else [])
        summary = ", ".join(
            f"{lab} {out[f'val_cos_anyup/{lab}']:.4f} (bilinear {out[f'val_cos_bilinear/{lab}']:.4f})" for lab in labels
        )
        self._log("step %d validation (cosine to full-size features): %s", self.step, summary)
        return out

    # -- the loop ----------------------------------------------------------------------------
    def encoder_at(self, enc_idx: int, step: int) -> Any:
        """The encoder of ``step``: the spec's instance 0, or one of its pool of random initialisations."""
        spec = self.cfg.encoders[enc_idx]
        k = choose_instance(spec, self.cfg.seed, step)
        if k == 0:
            return self.encoders[enc_idx]
        key = (enc_idx, k)
        if key not in self._pool_cache:
            if len(self._pool_cache) >= 8:  # bounded memory; building a random ResNet-50 takes seconds, so keep most
                self._pool_cache.pop(next(iter(self._pool_cache)))
            self._pool_cache[key] = build_encoder(spec, self.device, self.cfg.seed, instance=k)
        return self._pool_cache[key]

    def _micro_step(self, batch: dict[str, torch.Tensor], enc_idx: int, sync: bool) -> dict[str, float]:
        from anyup.train.data import downsample

        dev, d = self.device, self.cfg.data
        enc = self.encoder_at(enc_idx, self.step)
        image = batch["image"].to(dev, non_blocking=True)
        image_hr = batch["image_hr"].to(dev, non_blocking=True)
        image_aug = batch["image_aug"].to(dev, non_blocking=True)
        factor = choose_factor(self.cfg, int(enc.info.stride), self.step)
        size = image_hr.shape[-1] // factor  # low-res input side for this step's ratio
        if size != image.shape[-1]:
            image, image_aug = downsample(image, size), downsample(image_aug, size)  # (B, 3, size, size)
        h = size // int(enc.info.stride)
        grid: tuple[int, int] = (factor * h, factor * h)
        with _autocast(self.cfg, dev):
            lowres, targets, cells = recipe_targets(
                enc, image, image_hr, batch["crop_u"], int(enc.info.stride), d.target
            )
            if cells is None:
                grid = (int(targets.shape[-2]), int(targets.shape[-1]))  # whole-image targets: the target's grid
            ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if not sync and isinstance(self.step_module, nn.parallel.DistributedDataParallel):
                ctx = self.step_module.no_sync()
            with ctx:
                losses = self.step_module(image, image_aug, lowres, targets, cells, grid)
                (losses["loss"] / self.cfg.optim.accum_steps).backward()
        return {k: float(v.detach()) for k, v in losses.items()}

    def run(self) -> Path:
        cfg = self.cfg
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            hold_folder_lock(self.run_dir)  # a second trainer on this folder fails at once; stale temps removed
        self.ctx.barrier()
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(derive_seed(cfg.seed, self.ctx.rank))
        self._prepare_data()
        self._prepare_encoders()
        self._prepare_model()
        self._resume()
        if self.ctx.is_main:
            save_yaml(cfg, self.run_dir / "config.yaml")
        if self.step >= cfg.steps:
            self._log("run already finished at step %d (steps=%d)", self.step, cfg.steps)
            if not (self.run_dir / MODEL_FILE).is_file():
                return self.export()
            return self.run_dir / MODEL_FILE

        metrics = (
            MetricsWriter(
                self.run_dir, _metric_columns(cfg.encoders), cfg.log.tensorboard, resume_step=self.step or None
            )
            if self.ctx.is_main
            else None
        )
        if self.step == 0 and cfg.val.at_start:  # the untrained starting point of the curves
            if metrics is not None and self.val_files:  # metrics: rank 0 only
                metrics.log(0, {"epoch": 0, **self.validate()})
            self.ctx.barrier()
        loader = make_loader(self.dataset, self.sampler, self.position, self.ctx.rank, cfg.data.num_workers)
        batches = iter(loader)
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.steps, initial=self.step, desc="train", disable=not (cfg.log.progress and self.ctx.is_main),
            dynamic_ncols=True,
        )  # fmt: skip
        start_time = last_time = time.perf_counter()
        sums: dict[str, float] = {}
        n_sum = 0
        images_per_step = self.sampler.per_step
        try:
            while self.step < cfg.steps:
                enc_idx = choose_encoder(cfg.encoders, cfg.seed, self.step)
                lr = cfg.optim.lr_at(self.step, cfg.steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                micro_losses = []
                for micro in range(cfg.optim.accum_steps):
                    batch = next(batches)
                    self.skipped += int(batch["skipped"].sum())
                    micro_losses.append(self._micro_step(batch, enc_idx, sync=micro == cfg.optim.accum_steps - 1))
                max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(self.model)
                self.step += 1
                self.position = self.sampler.advance(self.position)

                for k in micro_losses[0]:
                    sums[k] = sums.get(k, 0.0) + sum(ml[k] for ml in micro_losses) / len(micro_losses)
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
                n_sum += 1
                bar.update(1)
                last = self.step == cfg.steps
                values: dict[str, Any] = {}
                if self.step % cfg.log.every == 0 or last:
                    keys = sorted(sums)
                    means = self.ctx.all_mean([sums[k] / n_sum for k in keys] + [float(self.skipped)])
                    now = time.perf_counter()
                    ips = n_sum * images_per_step / max(now - last_time, 1e-9)
                    last_time = now
                    m = dict(zip(keys, means[:-1]))
                    values.update(
                        epoch=self.position.epoch,
                        loss=m["loss"],
                        loss_crop=m["crop"],
                        loss_consistency=m["consistency"],
                        loss_lowres=m["lowres"],
                        grad_norm=m["grad_norm"],
                        lr=self.optimizer.param_groups[0]["lr"],
                        images_per_s=ips,
                        elapsed_s=now - start_time,
                        skipped_images=round(means[-1] * self.ctx.world_size),
                        encoder=cfg.encoders[enc_idx].label,
                    )
                    bar.set_postfix(loss=f"{m['loss']:.4f}", img_s=f"{ips:.1f}")
                    sums, n_sum = {}, 0
                if (cfg.val.every and self.step % cfg.val.every == 0) or last:
                    if self.ctx.is_main:
                        values.update(self.validate())
                    self.ctx.barrier()
                if values and metrics is not None:
                    metrics.log(self.step, values)
                if self.step % cfg.checkpoint.every == 0 or last:
                    self._checkpoint()
                if self.on_step is not None:
                    self.on_step(self.step, {k: v for k, v in values.items() if isinstance(v, (int, float))})
        finally:
            bar.close()
            del batches, loader
            if metrics is not None:
                metrics.close()
        if self.skipped:
            self._log("%d unreadable training images were skipped while loading", self.skipped)
        return self.export()


def train(
    config: TrainConfig | dict[str, Any] | str | os.PathLike,
    *,
    on_step: StepCallback | None = None,
    encoders: dict[str, nn.Module] | None = None,
) -> Path:
    """Train AnyUp with the recipe of the paper; return the path of the exported ``model.safetensors``.

    Args:
        config: a :class:`TrainConfig`, a (partial) nested dict, or a YAML file path.
        on_step: optional ``callback(step, metrics)`` called on every rank after each optimiser step
            (after any checkpoint of that step); raising from it stops the run (it stays resumable).
        encoders: optional ready-made encoders by label (``TrainEncoderSpec.label``) used instead of
            ``anyup.encoders.create``; each maps RGB ``(B, 3, H, W)`` in [0, 1] to ``(B, C, H/s, W/s)``
            and has ``.info.stride`` and ``.info.multiple``.

    Running again with the same ``run_dir`` resumes from ``checkpoints/last.pt``.
    """
    if isinstance(config, (str, os.PathLike)):
        config = config_from_dict(load_yaml(config))
    elif isinstance(config, dict):
        config = config_from_dict(config)
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, dict or YAML path, got {type(config).__name__}")
    config.validate()
    ctx = DistContext.setup(config.device)
    try:
        return Trainer(config, ctx, on_step, encoders).run()
    finally:
        ctx.teardown()
