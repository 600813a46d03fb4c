"""Held-out evaluation of upsampler weights on the recorded held-out photos: fidelity per layer and ratio,
the cell-border artifact, and PCA pictures.

* **Fidelity** (label-free, as in training validation): the held-out photo at ``hr`` pixels, its
  low-res input at ``hr / F`` pixels, the encoder's features of that input upsampled ``F`` times
  and compared (per-pixel cosine, mean over pixels and photos) with the encoder's own features of
  the ``hr`` image. Ratios whose low-res map has fewer than ``min_cells`` cells are skipped.
* **Artifact**: features of the ``artifact_size`` photo upsampled to every pixel (16x for stride
  16), :func:`anyup.eval.artifacts.cell_border_energy` on the flattest 30 % of the image, mean over
  photos.

Methods are ``bilinear``, ``jbu`` (:mod:`anyup.baselines`) and any AnyUp weights (a registered
name or a file) given as ``LABEL=WEIGHTS``.

Command line::

    python -m anyup.train.heldout runs/issue14/photos/val --weights ours=anyup/weights_data/anyup_offline.safetensors \
        "published multi_backbone=../shared/weights/anyup_multi_backbone.pth" --out runs/issue14/heldout.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from anyup.encoders.base import Encoder
from anyup.predictor import guide_from_rgb, run_anyup
from anyup.train.config import TrainEncoderSpec
from anyup.train.data import collect_images, downsample, load_eval_images
from anyup.train.validate import _features, pca_basis, pca_image

logger = logging.getLogger(__name__)

Upsample = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]

# Seen in training (the cpu_offline_multi / cpu_offline_v2 CNN layers), unseen layers of the same
# networks, and random-init ViTs with seeds no training run used ("seed" 1000 + i, see below).
SEEN = [
    "efficientnet_lite0@stage2", "efficientnet_lite0@stage3", "efficientnet_lite0@stage4", "efficientnet_lite0@stage6",
    "vgg16_bn_craft@conv3_3", "vgg16_bn_craft@conv4_3", "vgg16_bn_craft@conv5_2",
    "vgg16_hed@conv3_3", "vgg16_hed@conv4_3", "vgg16_hed@conv5_3",
]  # fmt: skip
UNSEEN = ["efficientnet_lite0@stage1", "efficientnet_lite0@stage5", "vgg16_bn_craft@conv2_2", "vgg16_hed@conv2_2"]
RANDOM = ["random:vit_s16", "random:dinov2_vits14", "random:vit_b16"]
UNSEEN_SEED = 1000  # random-init encoders are built with this seed: no training pool instance uses it


@dataclass
class HeldoutConfig:
    hr: int = 256  # side of the held-out photos (target resolution)
    factors: tuple[int, ...] = (2, 4, 8)
    min_cells: int = 4
    artifact_size: int = 224  # guidance side for the artifact measure (upsampled to every pixel)
    artifact_encoders: tuple[str, ...] = ("efficientnet_lite0@stage4", "vgg16_hed@conv4_3", "random:vit_s16")
    encoders: list[str] = field(default_factory=lambda: SEEN + UNSEEN + RANDOM)


def build(label: str) -> Encoder:
    """``name@layer`` (pretrained, offline) or ``random:name[@layer]`` (random init, seed :data:`UNSEEN_SEED`)."""
    from anyup.train.trainer import build_encoder

    random = label.startswith("random:")
    name, _, layer = label.removeprefix("random:").partition("@")
    spec = TrainEncoderSpec(name, layer=layer or None, pretrained=not random)
    return build_encoder(spec, torch.device("cpu"), seed=UNSEEN_SEED if random else 0)


def methods_from(weights: dict[str, str], soft_edge: Sequence[str] = ()) -> dict[str, Upsample]:
    """bilinear, JBU and each ``label -> AnyUp weights`` as ``f(image [0,1], features, size)``.

    Labels in ``soft_edge`` also get a ``LABEL soft edge`` entry (``LABEL hard edge`` for weights
    trained soft): the same weights run with the other ``window_edge`` (:mod:`anyup.engine.window`).
    """
    import anyup
    import anyup.baselines as B

    jbu = B.create("jbu")
    out: dict[str, Upsample] = {
        "bilinear": lambda img, f, size: F.interpolate(f, size=size, mode="bilinear", align_corners=False),
        "jbu": lambda img, f, size: jbu(guide_from_rgb(img), f, size),
    }
    for label, w in weights.items():
        model = anyup.load(w)
        out[label] = _anyup_method(model)
        if label in soft_edge:
            other = copy.deepcopy(model)  # same weights, the other edge
            other.config = replace(model.config, window_edge="hard" if model.config.window_edge == "soft" else "soft")
            out[f"{label} {other.config.window_edge} edge"] = _anyup_method(other)
    return out


def _anyup_method(model: torch.nn.Module) -> Upsample:
    """``f(image [0,1], features, size)`` running ``model``."""

    def up(img: torch.Tensor, f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return run_anyup(model, img, f, size)

    return up


@torch.no_grad()
def fidelity(methods: dict[str, Upsample], encoder, images_hr: torch.Tensor, factor: int) -> dict[str, float]:
    """Mean per-pixel cosine to the encoder's ``hr`` features, per method (``images_hr`` (N, 3, hr, hr))."""
    size = images_hr.shape[-1] // factor
    sums = dict.fromkeys(methods, 0.0)
    for hr in images_hr.split(2):
        lr_image = downsample(hr, size)  # (b, 3, size, size)
        low = _features(encoder, lr_image).float()  # (b, C, h, w)
        target = _features(encoder, hr).float()  # (b, C, H, W)
        for name, up in methods.items():
            pred = up(lr_image, low, (int(target.shape[-2]), int(target.shape[-1]))).float()
            sums[name] += F.cosine_similarity(pred, target, dim=1).mean(dim=(1, 2)).sum().item()
    return {k: v / images_hr.shape[0] for k, v in sums.items()}


@torch.no_grad()
def artifact(methods: dict[str, Upsample], encoder, images: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
    """Mean cell-border energy ratio and grid-phase peak ratio at full pixel resolution per method.

    ``images`` (N, 3, S, S) in [0, 1]. Returns ``(border ratio, peak ratio)`` dicts by method.
    """
    from anyup.eval.artifacts import cell_border_energy

    border, peak = dict.fromkeys(methods, 0.0), dict.fromkeys(methods, 0.0)
    for img in images:
        low = _features(encoder, img[None]).float()  # (1, C, h, w)
        for name, up in methods.items():
            pred = up(img[None], low, (int(img.shape[-2]), int(img.shape[-1]))).float()  # (1, C, S, S)
            r = cell_border_energy(pred[0], (int(low.shape[-2]), int(low.shape[-1])), img)
            border[name] += r.ratio
            peak[name] += r.peak_ratio
    n = images.shape[0]
    return {k: v / n for k, v in border.items()}, {k: v / n for k, v in peak.items()}


def evaluate(
    val_dir: str | os.PathLike,
    weights: dict[str, str],
    config: HeldoutConfig | None = None,
    soft_edge: Sequence[str] = (),
) -> list[dict]:
    """Rows ``{"kind", "encoder", "factor", method: value, ...}`` for fidelity and artifact."""
    cfg = config or HeldoutConfig()
    files = collect_images([val_dir])
    images_hr, used = load_eval_images(files, cfg.hr)  # (N, 3, hr, hr)
    logger.info("held-out photos: %s", [p.name for p in used])
    methods = methods_from(weights, soft_edge)
    rows = []
    for label in cfg.encoders:
        enc = build(label)
        stride = int(enc.info.stride)
        for f in cfg.factors:
            if (cfg.hr // f) // stride < cfg.min_cells:
                continue
            r = fidelity(methods, enc, images_hr, f)
            rows.append({"kind": "fidelity", "encoder": label, "factor": f, **r})
            logger.info("fidelity %s %dx: %s", label, f, {k: round(v, 4) for k, v in r.items()})
    small = downsample(images_hr, cfg.artifact_size) if cfg.artifact_size != cfg.hr else images_hr
    for label in cfg.artifact_encoders:
        enc = build(label)
        border, peak = artifact(methods, enc, small)
        rows.append({"kind": "artifact", "encoder": label, "factor": int(enc.info.stride), **border})
        rows.append({"kind": "artifact_peak", "encoder": label, "factor": int(enc.info.stride), **peak})
        logger.info("artifact %s: border %s peak %s", label, {k: round(v, 3) for k, v in border.items()},
                    {k: round(v, 3) for k, v in peak.items()})  # fmt: skip
    return rows


@torch.no_grad()
def pca_pictures(
    path: str | os.PathLike, val_dir: str | os.PathLike, weights: dict[str, str], encoder: str, size: int = 224,
    count: int = 2, tile: int = 224, names: Sequence[str] = (), soft_edge: Sequence[str] = (),
) -> Path:  # fmt: skip
    """One row per held-out photo: image | bilinear | JBU | each weights, all upsampled to every pixel.

    The three principal components of each row are fitted on the bilinear map of that photo, so
    colours are comparable across the row. Written atomically (PNG).
    """
    from PIL import Image, ImageDraw

    from anyup.train.checkpoint import atomic_write

    files = collect_images([val_dir])
    if names:
        files = [f for f in files if any(n in f.name for n in names)]
    images, _ = load_eval_images(files[:count], size)
    methods = methods_from(weights, soft_edge)
    enc = build(encoder)
    rows = []
    for img in images:
        low = _features(enc, img[None]).float()
        maps = {n: up(img[None], low, (size, size)).float()[0] for n, up in methods.items()}  # (C, S, S)
        basis = pca_basis(maps["bilinear"].reshape(maps["bilinear"].shape[0], -1).T)
        panels = [F.interpolate(img[None], size=(tile, tile), mode="bilinear")[0]]
        panels += [pca_image(m, basis, tile) for m in maps.values()]
        rows.append(torch.cat(panels, dim=2))
    grid = (torch.cat(rows, dim=1).clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.new("RGB", (grid.shape[1], grid.shape[0] + 16), "white")
    picture.paste(Image.fromarray(grid), (0, 16))
    draw = ImageDraw.Draw(picture)
    for i, name in enumerate(["image", *methods]):
        draw.text((i * tile + 4, 2), f"{name} ({encoder})" if i == 1 else name, fill="black")
    atomic_write(Path(path), lambda tmp: picture.save(tmp, format="PNG"))
    return Path(path)


def markdown(rows: Sequence[dict], methods: Sequence[str]) -> str:
    """Fidelity and artifact rows as two Markdown tables (best fidelity in bold)."""
    out = []
    fid = [r for r in rows if r["kind"] == "fidelity"]
    if fid:
        out.append("| encoder layer | ratio | " + " | ".join(methods) + " |")
        out.append("|---|---|" + "---|" * len(methods))
        for r in fid:
            best = max(r[m] for m in methods)
            cells = [f"**{r[m]:.4f}**" if r[m] == best else f"{r[m]:.4f}" for m in methods]
            out.append(f"| {r['encoder']} | {r['factor']}x | " + " | ".join(cells) + " |")
        for f in sorted({r["factor"] for r in fid}):
            sub = [r for r in fid if r["factor"] == f]
            means = [sum(r[m] for r in sub) / len(sub) for m in methods]
            out.append(f"| **mean ({len(sub)} layers)** | {f}x | " + " | ".join(f"{v:.4f}" for v in means) + " |")
    for kind, title in (("artifact", "cell-border energy ratio (1 = no grid)"),
                        ("artifact_peak", "grid-phase peak ratio (1 = no grid)")):  # fmt: skip
        art = [r for r in rows if r["kind"] == kind]
        if art:
            out.append("")
            out.append(f"| {title} | ratio to pixels | " + " | ".join(methods) + " |")
            out.append("|---|---|" + "---|" * len(methods))
            for r in art:
                out.append(f"| {r['encoder']} | {r['factor']}x | " + " | ".join(f"{r[m]:.3f}" for m in methods) + " |")
    return "\n".join(out)


def merge_rows(tables: Sequence[Sequence[dict]], keys: Sequence[str] = ("kind", "encoder", "factor")) -> list[dict]:
    """Rows of several runs joined on ``keys`` (later runs add methods).

    Only rows present in every table are kept, in the first table's order; a value measured twice
    must agree (the same protocol gives the same number, to 1e-6), else ``ValueError``.
    """

    def key(r: dict) -> tuple:
        return tuple(json.dumps(r[k]) for k in keys)

    index = [{key(r): r for r in t} for t in tables]
    out = []
    for r in tables[0]:
        if not all(key(r) in i for i in index):
            continue
        row = dict(r)
        for i in index[1:]:
            for m, v in i[key(r)].items():
                if m in row and m not in keys:
                    a = row[m]
                    same = abs(a - v) <= 1e-6 if isinstance(a, float) and isinstance(v, float) else a == v
                    if not same:
                        raise ValueError(f"merge: {m} on {key(r)} differs between runs ({a} vs {v})")
                row[m] = v
        out.append(row)
    return out


def parse_weights(items: Sequence[str], soft_edge: Sequence[str] = (), flag: str = "--weights") -> dict[str, str]:
    """``["LABEL=NAME_OR_PATH", ...]`` (given with ``flag``) -> ``{label: weights}``; every ``soft_edge`` label
    must be among them."""
    weights = {}
    for item in items:
        label, sep, value = item.partition("=")
        if not sep or not label or not value:
            raise SystemExit(f"{flag} {item!r} must look like LABEL=NAME_OR_PATH")
        weights[label] = value
    unknown = sorted(set(soft_edge) - set(weights))
    if unknown:
        raise SystemExit(f"--soft-edge {unknown}: not among the {flag} labels {sorted(weights)}")
    return weights


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anyup.train.heldout", description=__doc__.splitlines()[0])
    p.add_argument(
        "val_dir", type=Path, nargs="?", help="held-out photos (python -m anyup.train.photos OUT -> OUT/val)"
    )
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="print one table of earlier --out files (joined per layer and ratio) and exit")  # fmt: skip
    p.add_argument("--weights", nargs="+", default=[], metavar="LABEL=WEIGHTS", help="AnyUp weights to compare")
    p.add_argument("--encoders", nargs="+", help="encoder labels (default: seen, unseen and random-init layers)")
    p.add_argument("--soft-edge", nargs="+", default=[], metavar="LABEL",
                   help="also evaluate these weights with the other window edge (hard <-> soft)")  # fmt: skip
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--pca", type=Path, metavar="PNG", help="also draw PCA pictures (first two photos)")
    p.add_argument("--pca-encoder", default="efficientnet_lite0@stage4")
    p.add_argument("--pca-photos", nargs="+", default=["astronaut", "coffee"], help="parts of the photos' file names")
    p.add_argument("--no-eval", action="store_true", help="only draw the PCA pictures")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.merge:
        rows = merge_rows([json.loads(Path(f).read_text()) for f in args.merge])
        methods = list(dict.fromkeys(k for r in rows for k in r if k not in ("kind", "encoder", "factor")))
        print(markdown(rows, methods))  # the command's result
        return 0
    if args.val_dir is None:
        p.error("val_dir is required (unless --merge)")
    weights = parse_weights(args.weights, args.soft_edge)
    cfg = HeldoutConfig()
    if args.encoders:
        cfg.encoders = list(args.encoders)
    if not args.no_eval:
        rows = evaluate(args.val_dir, weights, cfg, args.soft_edge)
        if args.out:
            from anyup._atomic import atomic_write_text

            atomic_write_text(args.out, json.dumps(rows, indent=1))
        print(markdown(rows, [k for k in rows[0] if k not in ("kind", "encoder", "factor")]))  # the command's result
    if args.pca:
        picture = pca_pictures(args.pca, args.val_dir, weights, args.pca_encoder, names=args.pca_photos,
                               soft_edge=args.soft_edge)  # fmt: skip
        print(picture)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
