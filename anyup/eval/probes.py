"""Linear (1x1 conv) probes on frozen upsampled features: losses, training and evaluation.

The probe sees features upsampled to the target resolution (``protocol.image_size``), one batch
at a time: the low-resolution encoder features come from :mod:`anyup.eval.features` (cached on
disk), and :class:`UpsampledFeatures` upsamples them on the fly, keeping as many upsampled maps
in memory as a byte budget allows (they are deterministic, so a cache hit gives the very same
tensor and results do not depend on the budget).

Tasks and heads (all a single ``nn.Conv2d(C, K, 1)``):

* ``seg``: ``K = num_classes`` logits, cross-entropy with ``ignore_index``;
* ``depth``: Probe3D's bin head, ``K = depth_bins`` scores -> ``relu + 0.1`` normalised into
  weights over linearly spaced depths in ``[min_depth, max_depth]`` (or a sigmoid-scaled single
  output when ``depth_bins == 1``); loss ``w_sig * SigLoss + w_grad * gradient loss``;
* ``normals``: 3 outputs (or 4 with the uncertainty channel), angular loss.

Training is deterministic for a given seed: the seed fixes the probe's initialisation, the data
order and the flips.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from anyup.eval.metrics import DepthMeter, NormalsMeter, SegmentationMeter
from anyup.eval.protocols import Protocol

logger = logging.getLogger(__name__)

__all__ = [
    "ProbeSample",
    "UpsampledFeatures",
    "angular_loss",
    "build_probe",
    "decode_depth",
    "evaluate_probe",
    "evaluate_probes",
    "gradient_loss",
    "probe_outputs",
    "sig_loss",
    "train_probe",
    "train_probes",
]

TASKS = ("seg", "depth", "normals")
# Upsampler call signature: (image (B,3,H,W) ImageNet-normalised, features (B,C,h,w), (H', W')) -> (B,C,H',W')
UpsampleFn = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Data held in memory for probing
# --------------------------------------------------------------------------------------------


@dataclass
class ProbeSample:
    """One prepared image: everything a probe needs, compact enough to keep hundreds in memory.

    ``image`` is ``(3, S, S)`` uint8 RGB; ``features`` the encoder's ``(C, h, w)`` map of it
    (``features_flipped`` of the horizontally flipped image, when the protocol flips); labels
    are at ``S x S``: ``seg`` ``(S, S)`` int64 (or uint8 storage), ``depth`` ``(S, S)`` float,
    ``normals`` ``(3, S, S)`` float, ``*_valid`` bool.
    """

    name: str
    image: torch.Tensor
    features: torch.Tensor
    features_flipped: torch.Tensor | None = None
    seg: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    depth_valid: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    normals_valid: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


def image_float(sample_images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack uint8 ``(3, S, S)`` images into ``(B, 3, S, S)`` float in ``[0, 1]``."""
    return torch.stack([im.float() / 255.0 if im.dtype == torch.uint8 else im.float() for im in sample_images])


def _normalize(x01: torch.Tensor) -> torch.Tensor:
    from anyup.predictor import guide_from_rgb

    return guide_from_rgb(x01)


def _present(t: torch.Tensor | None, what: str) -> torch.Tensor:
    """``t``, or a clear error when the sample has no ``what`` (its dataset lacks that task)."""
    if t is None:
        raise ValueError(f"a probe sample has no {what!r}; its dataset does not provide this task")
    return t


def targets(
    samples: Sequence[ProbeSample], task: str, flips: Sequence[bool], subgrid: tuple[int, int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Batch the labels of ``task`` (flipped where ``flips``; normals' x component negated).

    ``subgrid=(k, oy, ox)`` keeps rows ``oy::k`` and columns ``ox::k`` of the (flipped) labels.
    """

    def stack(get: Callable[[ProbeSample], torch.Tensor]) -> torch.Tensor:
        out = []
        for s, fl in zip(samples, flips):
            t = get(s)
            t = t.flip(-1) if fl else t
            if subgrid is not None:
                t = t[..., subgrid[1] :: subgrid[0], subgrid[2] :: subgrid[0]]
            out.append(t)
        return torch.stack(out)

    if task == "seg":
        return {"seg": stack(lambda s: _present(s.seg, "seg").long())}
    if task == "depth":
        return {
            "depth": stack(lambda s: _present(s.depth, "depth").float()),
            "valid": stack(lambda s: _present(s.depth_valid, "depth_valid").bool()),
        }
    if task == "normals":
        n = stack(lambda s: _present(s.normals, "normals").float())  # (B, 3, S, S)
        sign = torch.tensor([-1.0 if fl else 1.0 for fl in flips]).view(-1, 1, 1)
        n = torch.cat([n[:, :1] * sign.view(-1, 1, 1, 1), n[:, 1:]], dim=1)
        return {"normals": n, "valid": stack(lambda s: _present(s.normals_valid, "normals_valid").bool())}
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


class UpsampledFeatures:
    """Upsampled features per batch, with an in-memory cache bounded by ``budget_bytes``.

    Args:
        upsample: ``up(image_norm, features, (H, W))``; ``None`` means "probe at low resolution"
            (the raw features are returned; see ``lowres`` in :func:`train_probe`).
        samples: the prepared samples.
        budget_bytes: how much memory cached upsampled maps may use (0 disables caching).
        batch_size: how many images to upsample per call of ``upsample``.
    """

    def __init__(
        self,
        upsample: UpsampleFn | None,
        samples: Sequence[ProbeSample],
        budget_bytes: int = 2 << 30,
        batch_size: int = 4,
    ) -> None:
        self.upsample = upsample
        self.samples = samples
        self.budget = int(budget_bytes)
        self.batch_size = max(1, int(batch_size))
        self._cache: dict[tuple[int, bool], torch.Tensor] = {}
        self._used = 0
        self.calls = 0  # number of upsampled maps computed (for tests and logging)

    def _compute(self, keys: list[tuple[int, bool]]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            feats, imgs = [], []
            for i, fl in chunk:
                s = self.samples[i]
                if fl:
                    if s.features_flipped is None:
                        raise ValueError(f"sample {s.name!r} has no features of the flipped image")
                    feats.append(s.features_flipped.float())
                    imgs.append(s.image.flip(-1))
                else:
                    feats.append(s.features.float())
                    imgs.append(s.image)
            f = torch.stack(feats)  # (b, C, h, w)
            if self.upsample is None:
                up = f
            else:
                size = self.samples[chunk[0][0]].size
                with torch.no_grad():
                    up = self.upsample(_normalize(image_float(imgs)), f, size)  # (b, C, S, S)
                up = up.float()
                self.calls += len(chunk)
            out.extend(up.unbind(0))
        return out

    def get(
        self, indices: Sequence[int], flips: Sequence[bool] | None = None, subgrid: tuple[int, int, int] | None = None
    ) -> torch.Tensor:
        """``(B, C, H, W)`` features of samples ``indices`` (flipped images where ``flips``).

        ``subgrid=(k, oy, ox)`` returns only rows ``oy::k`` and columns ``ox::k`` (sliced before
        batching, so only the kept pixels are copied).
        """
        flips = list(flips) if flips is not None else [False] * len(indices)
        keys = [(int(i), bool(fl)) for i, fl in zip(indices, flips)]
        missing = [k for k in dict.fromkeys(keys) if k not in self._cache]
        computed = dict(zip(missing, self._compute(missing))) if missing else {}
        result = []
        for k in keys:
            t = self._cache.get(k)
            if t is None:
                t = computed[k]
                nbytes = t.numel() * t.element_size()
                if self._used + nbytes <= self.budget:
                    self._cache[k] = t
                    self._used += nbytes
            if subgrid is not None:
                step, oy, ox = subgrid
                t = t[..., oy::step, ox::step]
            result.append(t)
        return torch.stack(result)

    def clear(self) -> None:
        self._cache.clear()
        self._used = 0


# --------------------------------------------------------------------------------------------
# Heads and losses
# --------------------------------------------------------------------------------------------


def probe_outputs(task: str, protocol: Protocol, num_classes: int = 0) -> int:
    """Number of output channels of the 1x1 probe for ``task``."""
    if task == "seg":
        if num_classes < 1:
            raise ValueError(f"segmentation probe needs num_classes >= 1, got {num_classes}")
        return num_classes
    if task == "depth":
        return protocol.depth_bins
    if task == "normals":
        return 4 if protocol.normals_uncertainty else 3
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


def build_probe(in_channels: int, out_channels: int, seed: int) -> nn.Conv2d:
    """A 1x1 conv probe initialised from ``seed`` (PyTorch's default init, seeded locally)."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        probe = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    finally:
        torch.random.set_rng_state(gen_state)
    return probe


def decode_depth(out: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """Probe output ``(B, K, H, W)`` -> depth ``(B, H, W)`` in ``[min_depth, max_depth]``.

    ``K > 1``: Probe3D/AdaBins "linear" bin weights ``(relu(x) + 0.1) / sum`` over linearly
    spaced bin centres; ``K == 1``: ``min + sigmoid(x) * (max - min)``.
    """
    lo, hi = protocol.min_depth, protocol.max_depth
    if out.shape[1] == 1:
        return lo + torch.sigmoid(out[:, 0]) * (hi - lo)
    bins = torch.linspace(lo, hi, out.shape[1], dtype=out.dtype, device=out.device)
    w = F.relu(out) + 0.1
    w = w / w.sum(1, keepdim=True)
    return torch.einsum("bkhw,k->bhw", w, bins)


def sig_loss(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, lam: float = 0.85, eps: float = 1e-3
) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014; AdaBins/DINOv2/Probe3D "SigLoss").

    ``sqrt(mean(g^2) - lam * mean(g)^2)`` with ``g = log(pred + eps) - log(gt + eps)`` over the
    valid pixels of the whole batch. ``pred, gt``: ``(B, H, W)``; ``valid``: ``(B, H, W)`` bool.
    """
    valid = valid & (gt > 0)
    if not valid.any():
        return pred.sum() * 0.0
    g = torch.log(pred[valid] + eps) - torch.log(gt[valid] + eps)
    return (g.pow(2).mean() - lam * g.mean().pow(2)).clamp(min=1e-12).sqrt()


def gradient_loss(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, strides: Sequence[int] = (1, 2, 4, 6), eps: float = 1e-3
) -> torch.Tensor:
    """Multi-scale gradient matching of log depth (MegaDepth; as intended in Probe3D/DINOv2).

    At each stride the log-depth difference map is compared with itself two pixels away along
    rows and columns (only where both pixels are valid), normalised by the valid pixel count.
    """
    total = pred.sum() * 0.0
    for s in strides:
        p, g, v = pred[:, ::s, ::s], gt[:, ::s, ::s], (valid & (gt > 0))[:, ::s, ::s]
        n = v.sum()
        if n == 0:
            continue
        d = (torch.log(p + eps) - torch.log(g + eps)) * v
        vv = v[:, :-2, :] & v[:, 2:, :]
        vh = v[:, :, :-2] & v[:, :, 2:]
        gv = (d[:, :-2, :] - d[:, 2:, :]).abs() * vv
        gh = (d[:, :, :-2] - d[:, :, 2:]).abs() * vh
        total = total + (gv.sum() + gh.sum()) / n
    return total


def angular_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Mean angle (radians) over valid pixels; with 4 channels, the uncertainty-aware form (Bae et al. 2021).

    ``pred``: ``(B, 3|4, H, W)``; ``gt``: ``(B, 3, H, W)``; ``valid``: ``(B, H, W)`` bool.
    The 4th channel is a concentration ``kappa = elu(x) + 1.01`` and the loss per pixel is
    ``log(1 + exp(-kappa*pi)) - log(kappa^2 + 1) + kappa * angle``.
    """
    p3 = pred[:, :3]
    cos = (p3 * gt).sum(1) / (p3.norm(dim=1) * gt.norm(dim=1)).clamp(min=1e-8)  # (B, H, W)
    cos = cos.clamp(-1 + eps, 1 - eps)
    ang = torch.acos(cos)  # (B, H, W)
    if pred.shape[1] == 4:
        kappa = F.elu(pred[:, 3]) + 1.01
        per_px = torch.log1p(torch.exp(-kappa * math.pi)) - torch.log(kappa.pow(2) + 1) + kappa * ang
    else:
        per_px = ang
    if not valid.any():
        return per_px.sum() * 0.0
    return per_px[valid].mean()


def task_loss(
    task: str, out: torch.Tensor, tgt: dict[str, torch.Tensor], protocol: Protocol, ignore_index: int
) -> torch.Tensor:
    """The protocol's training loss of ``task`` for probe output ``out`` ``(B, K, H, W)``."""
    if task == "seg":
        return F.cross_entropy(out, tgt["seg"], ignore_index=ignore_index)
    if task == "depth":
        depth = decode_depth(out, protocol)
        gt = tgt["depth"].clamp(max=protocol.max_depth)
        valid = tgt["valid"] & (tgt["depth"] <= protocol.max_depth)
        loss = protocol.depth_sig_weight * sig_loss(depth, gt, valid, protocol.depth_sig_lambda)
        if protocol.depth_grad_weight:
            loss = loss + protocol.depth_grad_weight * gradient_loss(depth, gt, valid)
        return loss
    if task == "normals":
        return angular_loss(out, tgt["normals"], tgt["valid"])
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def _lr_factor(protocol: Protocol, step: int, total: int, steps_per_epoch: int) -> float:
    if protocol.schedule == "constant":
        return 1.0
    lo = protocol.min_lr_factor
    if protocol.schedule == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    warm = protocol.warmup_epochs * steps_per_epoch
    if step < warm:
        return lo + (1 - lo) * step / warm
    rel = (step - warm) / max(total - warm, 1)
    return lo + (1 - lo) * math.cos(0.5 * math.pi * min(rel, 1.0))


def _downsample_targets(tgt: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in tgt.items():
        x = v.unsqueeze(1) if v.ndim == 3 else v
        dtype = x.dtype
        y = F.interpolate(x.double(), size=size, mode="nearest-exact").to(dtype)
        out[k] = y[:, 0] if v.ndim == 3 else y
    return out


def _check_tasks(tasks: Sequence[str], lowres: str | None) -> None:
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"unknown or no task(s) {list(tasks)}; choose from {TASKS}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct, got {list(tasks)}")
    if lowres not in (None, "logits", "labels"):
        raise ValueError(f"lowres must be None, 'logits' or 'labels', got {lowres!r}")


def _joint_forward(heads: dict[str, nn.Conv2d], feats: torch.Tensor) -> dict[str, torch.Tensor]:
    """All heads as one 1x1 conv (one pass over the features), split back per task."""
    weight = torch.cat([h.weight for h in heads.values()])  # (sum K, C, 1, 1)
    bias = torch.cat([cast(torch.Tensor, h.bias) for h in heads.values()])  # probe heads have a bias
    out = F.conv2d(feats, weight, bias)  # (B, sum K, H, W)
    return dict(zip(heads, out.split([h.out_channels for h in heads.values()], dim=1)))


def train_probes(
    tasks: Sequence[str],
    data: UpsampledFeatures,
    protocol: Protocol,
    seed: int,
    *,
    num_classes: int = 0,
    ignore_index: int = 255,
    lowres: str | None = None,
    progress: bool = False,
    desc: str = "probe",
) -> dict[str, nn.Conv2d]:
    """Train one 1x1 probe per task on ``data`` with ``protocol`` and ``seed``; returns them in eval mode.

    The probes share the data order, flips and pixel sub-grids (all drawn from ``seed``) and
    one pass over the features per step; their parameters, losses and AdamW states are
    separate, so each probe is the one :func:`train_probe` trains alone (up to float rounding
    of the merged matrix product).

    Args:
        tasks: subset of ``("seg", "depth", "normals")``.
        data: upsampled features of the training samples (``data.upsample is None`` with
            ``lowres`` set trains on the raw low-res features).
        lowres: ``None`` (features at target size), ``"logits"`` (probe at low resolution, logits
            bilinearly upsampled to the target size for the loss) or ``"labels"`` (probe and
            loss at low resolution; labels downsampled with nearest neighbour).
    """
    _check_tasks(tasks, lowres)
    n = len(data.samples)
    if n == 0:
        raise ValueError("no training samples")
    in_ch = int(data.samples[0].features.shape[0])
    heads = {t: build_probe(in_ch, probe_outputs(t, protocol, num_classes), seed) for t in tasks}
    params = [p for h in heads.values() for p in h.parameters()]
    if protocol.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=protocol.lr, betas=protocol.betas, weight_decay=protocol.weight_decay
        )
    else:
        opt = torch.optim.SGD(params, lr=protocol.lr, momentum=0.9, weight_decay=protocol.weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    bs = protocol.batch_size
    k = protocol.train_pixel_stride
    steps_per_epoch = math.ceil(n / bs)
    epochs = max(protocol.epochs, math.ceil(protocol.min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    step = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    for _epoch in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        flips_all = (torch.rand(n, generator=gen) < 0.5).tolist() if protocol.hflip else [False] * n
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            flips = [flips_all[i] for i in idx]
            samples = [data.samples[i] for i in idx]
            size = samples[0].size
            subgrid = None
            if k > 1 and lowres != "labels":
                # a random-phase k x k sub-grid of the target-size pixels (the probe is per pixel)
                oy, ox = (int(v) for v in torch.randint(0, k, (2,), generator=gen))
                subgrid = (k, oy, ox)
            tgts = {t: targets(samples, t, flips, subgrid) for t in tasks}
            feats = data.get(idx, flips, subgrid if lowres is None else None)  # (B, C, H', W')
            if lowres == "labels":
                tgts = {t: _downsample_targets(d, (feats.shape[-2], feats.shape[-1])) for t, d in tgts.items()}
            for group in opt.param_groups:
                group["lr"] = protocol.lr * _lr_factor(protocol, step, total, steps_per_epoch)
            outs = _joint_forward(heads, feats)
            loss = feats.new_zeros(())
            for t, out in outs.items():
                if lowres == "logits":
                    out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
                    if subgrid is not None:
                        out = out[..., subgrid[1] :: k, subgrid[2] :: k]
                loss = loss + task_loss(t, out, tgts[t], protocol, ignore_index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    if bar is not None:
        bar.close()
    for h in heads.values():
        h.eval()
    return heads


def train_probe(task: str, data: UpsampledFeatures, protocol: Protocol, seed: int, **kwargs) -> nn.Conv2d:
    """Train a single probe (see :func:`train_probes` for the arguments)."""
    return train_probes([task], data, protocol, seed, **kwargs)[task]


def _meter(
    task: str, protocol: Protocol, num_classes: int, ignore_index: int
) -> SegmentationMeter | DepthMeter | NormalsMeter:
    if task == "seg":
        return SegmentationMeter(num_classes, ignore_index, boundary_width=protocol.boundary_width)
    if task == "depth":
        return DepthMeter(aligned=True)
    return NormalsMeter()


@torch.no_grad()
def evaluate_probes(
    heads: Mapping[str, nn.Module],
    data: UpsampledFeatures,
    protocol: Protocol,
    *,
    num_classes: int = 0,
    ignore_index: int = 255,
    batch_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per task of the probes ``heads`` (task -> probe) on ``data``, in one pass.

    A probe whose output is smaller than the labels (a low-res probe applied to low-res
    features) has its logits bilinearly upsampled to the label size first. Metric names:
    :mod:`anyup.eval.metrics`.
    """
    _check_tasks(list(heads), None)
    meters: dict[str, Any] = {t: _meter(t, protocol, num_classes, ignore_index) for t in heads}
    bs = batch_size or max(1, protocol.batch_size)
    n = len(data.samples)
    for start in range(0, n, bs):
        idx = list(range(start, min(n, start + bs)))
        samples = [data.samples[i] for i in idx]
        feats = data.get(idx)
        size = samples[0].size
        for t, head in heads.items():
            out = head(feats)
            if out.shape[-2:] != size:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            tgt = targets(samples, t, [False] * len(idx))
            if t == "seg":
                meters[t].update(out.argmax(1), tgt["seg"])
            elif t == "depth":
                meters[t].update(
                    decode_depth(out, protocol), tgt["depth"], tgt["valid"] & (tgt["depth"] <= protocol.max_depth)
                )
            else:
                meters[t].update(out[:, :3], tgt["normals"], tgt["valid"])
    return {t: m.compute() for t, m in meters.items()}


def evaluate_probe(
    task: str, probe: nn.Module, data: UpsampledFeatures, protocol: Protocol, **kwargs
) -> dict[str, float]:
    """Metrics of a single probe (see :func:`evaluate_probes`)."""
    return evaluate_probes({task: probe}, data, protocol, **kwargs)[task]
