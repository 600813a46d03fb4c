"""Real-depth ridge probe per scene and layer: does an upsampler make a frozen CNN's features predict depth better?

For each Middlebury scene (:class:`anyup.eval.datasets.depth.MiddleburyStereo`: scikit-image's
motorcycle, opencv-doc's aloe; real photos, real disparity, never used in training, see
``anyup/train/photo_split.json``) and each encoder layer:

1. the photo is resized to ``short`` pixels on its short side (both sides multiples of 32), the
   encoder runs on it (or on it downscaled by ``input_scale``), and each method upsamples the
   features to every pixel of that image (ratio = the layer's stride / ``input_scale``: 4-32x at
   the default 1, what users run; 8-64x at 0.5);
2. a **closed-form ridge regression** (features standardised on the training pixels, unpenalised
   bias, penalty chosen on the training pixels alone) maps each pixel's feature vector to its log
   relative depth (``log(median(disparity) / disparity)``, 0 = the scene's median depth; the log
   keeps the few far pixels of near-zero disparity from dominating the error);
3. **spatial split**: the image is tiled in ``block`` x ``block`` squares coloured like a
   checkerboard; fold 1 fits on the black squares and tests on the white ones, fold 2 the other
   way round, and pixels within ``guard`` pixels of a square's border are left out of both (so a
   test pixel's nearest training pixel is at least ``2 * guard`` away). The RMSE is over all test
   pixels of both folds with valid depth. ``split="halves"`` (``--split halves``) fits on the left
   half and tests on the right one, then the other way round (``guard`` px each side of the midline
   left out): the harder extrapolation of the offline suite's Middlebury probe.

A method's **gain** is bilinear's RMSE minus its RMSE (positive = better than bilinear); the
``constant`` column is the RMSE of predicting the training pixels' mean (a probe above it has
learned nothing). Nothing is trained but the probe, so the numbers are deterministic for given
weights.

Command line (prints a Markdown table, ``--out`` writes the rows as JSON; ``anyup eval depth-probe``
takes the same flags)::

    python -m anyup.eval.depth_probe --reference "shipped=anyup_offline" \\
        --reference "published multi_backbone=../shared/weights/anyup_multi_backbone.pth" --out probe.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from anyup.train.heldout import Upsample

logger = logging.getLogger(__name__)


def default_layers() -> list[str]:
    """Every offline CNN layer the shipped weights were trained on: the held-out fidelity's seen layers.

    Imported on use, so that registering ``anyup eval depth-probe`` does not load the training package."""
    from anyup.train.heldout import SEEN

    return list(SEEN)


RIDGE_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # penalties per training pixel tried by the inner split
SPLITS = ("checkerboard", "halves")  # how each scene's pixels are split into the two folds


@dataclass
class DepthProbeConfig:
    short: int = 224  # short side of the probed image (pixels); the long side keeps the aspect ratio
    input_scale: float = 1.0  # the encoder sees the probed image resized by this (0.5: twice the ratio)
    multiple: int = 32  # both sides rounded to a multiple of this (every layer's stride divides it)
    block: int = 32  # checkerboard square side (pixels)
    guard: int = 4  # pixels at each square's border left out of fitting and testing
    split: str = "checkerboard"  # or "halves": left half vs right half (guard px each side of the midline)
    ridge: tuple[float, ...] = RIDGE_GRID  # penalties per training pixel (lambda = ridge * N), chosen per fold
    scenes: tuple[str, ...] = ("motorcycle", "aloe")
    layers: list[str] = field(default_factory=default_layers)

    def __post_init__(self) -> None:
        for name in ("short", "multiple", "block"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"DepthProbeConfig.{name} must be a positive int, got {v!r}")
        if not 0 < self.input_scale <= 1:
            raise ValueError(f"DepthProbeConfig.input_scale must be in (0, 1], got {self.input_scale}")
        if not 0 <= self.guard < self.block // 2:
            raise ValueError(f"DepthProbeConfig.guard must be in [0, block/2 = {self.block // 2}), got {self.guard}")
        if self.split not in SPLITS:
            raise ValueError(f"DepthProbeConfig.split must be one of {SPLITS}, got {self.split!r}")
        if not self.ridge or min(self.ridge) <= 0:
            raise ValueError(f"DepthProbeConfig.ridge must be penalties > 0, got {self.ridge}")


def checkerboard_folds(h: int, w: int, block: int, guard: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint (H, W) bool masks: the black and the white squares, less ``guard`` px at each border."""
    y = torch.arange(h)[:, None]
    x = torch.arange(w)[None, :]
    colour = ((y // block) + (x // block)) % 2 == 0  # (H, W)
    inner = (
        ((y % block) >= guard) & ((y % block) < block - guard) & ((x % block) >= guard) & ((x % block) < block - guard)
    )
    return colour & inner, ~colour & inner


def halves_folds(h: int, w: int, guard: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint (H, W) bool masks: the left and the right half, less ``guard`` px each side of the midline.

    Harder than the checkerboard: a test pixel's training pixels are far away, and the two halves
    of a scene may hold different things (as in the offline suite's Middlebury probe).
    """
    x = torch.arange(w)[None, :].expand(h, w)
    mid = w // 2
    return x < mid - guard, x >= mid + guard


def probe_folds(h: int, w: int, config: DepthProbeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The two folds of ``config.split`` for an (H, W) scene."""
    if config.split == "halves":
        return halves_folds(h, w, config.guard)
    return checkerboard_folds(h, w, config.block, config.guard)


class _Ridge:
    """Ridge regressions of ``y`` (N,) on standardised ``x`` (N, C) for many penalties, from one eigendecomposition."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std, self.n = mean, std, x.shape[0]
        z = (x.double() - mean) / std  # (N, C)
        self.y_mean = y.double().mean()
        evals, self.evecs = torch.linalg.eigh(z.T @ z)  # (C,), (C, C)
        self.evals = evals.clamp_min(0)
        self.zty = self.evecs.T @ (z.T @ (y.double() - self.y_mean))  # (C,) in the eigenbasis

    def coef(self, ridge: float) -> torch.Tensor:
        return self.evecs @ (self.zty / (self.evals + ridge * self.n))  # (C,)

    def predict(self, x: torch.Tensor, ridge: float) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std) @ self.coef(ridge) + self.y_mean  # (M,)


def ridge_fit(
    x: torch.Tensor, y: torch.Tensor, ridge: float | Sequence[float] = RIDGE_GRID, groups: torch.Tensor | None = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """Closed-form ridge from ``x`` (N, C) to ``y`` (N,); returns ``(predict(x (M, C)) -> (M,), penalty)``.

    Features are standardised with the training mean and std (constant channels get std 1); the
    bias is not penalised; ``lambda = penalty * N``; float64. With several penalties, ``groups``
    ((N,) bool) splits the training pixels in two: each half is fitted and scored on the other,
    and the penalty with the lowest summed squared error is refitted on all pixels.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"ridge_fit: x must be (N, C) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    grid = [float(ridge)] if isinstance(ridge, (int, float)) else [float(r) for r in ridge]
    if not grid or min(grid) <= 0:
        raise ValueError(f"ridge_fit: penalties must be > 0, got {grid}")
    x64 = x.double()
    mean, std = x64.mean(0), x64.std(0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    best = grid[0]
    if len(grid) > 1:
        if groups is None or groups.shape != y.shape or groups.all() or not groups.any():
            raise ValueError("ridge_fit: choosing among penalties needs `groups`, an (N,) bool mask with both values")
        err = dict.fromkeys(grid, 0.0)
        for a in (groups, ~groups):
            fit = _Ridge(x64[a], y[a], mean, std)
            for r in grid:
                err[r] += float(((fit.predict(x64[~a], r) - y[~a].double()) ** 2).sum())
        best = min(grid, key=lambda r: err[r])
    fit = _Ridge(x64, y, mean, std)
    return (lambda q: fit.predict(q, best)), best


def probe_rmse(features: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, config: DepthProbeConfig) -> float:
    """Two-fold ridge RMSE of ``features`` (C, H, W) against ``target`` (H, W) where ``valid``.

    The folds are ``config.split``'s (:func:`probe_folds`: checkerboard squares, or the two halves).

    The penalty of each fold is chosen on its training squares alone (rows of squares of even vs
    odd index: see :func:`ridge_fit`).
    """
    c, h, w = features.shape
    if target.shape != (h, w) or valid.shape != (h, w):
        raise ValueError(
            f"probe_rmse: features {tuple(features.shape)} vs target {tuple(target.shape)} / valid {tuple(valid.shape)}"
        )
    x = features.reshape(c, -1).T  # (H*W, C)
    yv, ok = target.reshape(-1), valid.reshape(-1)
    row_parity = ((torch.arange(h)[:, None] // config.block) % 2 == 0).expand(h, w).reshape(-1)  # (H*W,)
    folds = [m.reshape(-1) for m in probe_folds(h, w, config)]
    sq, n = 0.0, 0
    for train, test in ((folds[0], folds[1]), (folds[1], folds[0])):
        tr, te = train & ok, test & ok
        if tr.sum() < 2 * c or te.sum() == 0:
            raise ValueError(
                f"probe_rmse: too few valid pixels ({int(tr.sum())} to fit {c} channels, {int(te.sum())} to test)"
            )
        predict, _ = ridge_fit(x[tr], yv[tr], config.ridge, groups=row_parity[tr])
        err = predict(x[te]) - yv[te].double()
        sq += float((err**2).sum())
        n += int(te.sum())
    return (sq / n) ** 0.5


def _round_to(n: float, multiple: int) -> int:
    """``n`` rounded to the nearest positive multiple of ``multiple``."""
    return max(multiple, round(n / multiple) * multiple)


def scene_at(sample: dict, config: DepthProbeConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image (3, H, W) in [0, 1], log relative depth (H, W), valid (H, W) bool)`` resized for the probe.

    Depth is averaged over the valid source pixels of each output pixel (area weights), so invalid
    pixels never leak in; an output pixel is valid where more than half of its area was.
    """
    image, depth, valid = sample["image"], sample["depth"].float(), sample["depth_valid"]
    h0, w0 = image.shape[-2:]
    s = config.short / min(h0, w0)
    size = (_round_to(h0 * s, config.multiple), _round_to(w0 * s, config.multiple))
    img = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    v = valid.float()[None, None]
    area = F.interpolate(v, size=size, mode="area")[0, 0]  # (H, W) valid fraction
    num = F.interpolate((depth * valid)[None, None], size=size, mode="area")[0, 0]
    d = torch.where(area > 0, num / area.clamp_min(1e-12), torch.zeros_like(num))
    ok = area > 0.5
    return img.clamp(0, 1), torch.where(ok, d.clamp_min(1e-12).log(), torch.zeros_like(d)), ok


@torch.no_grad()
def run_probe(
    methods: dict[str, Upsample], config: DepthProbeConfig | None = None, encoders: dict | None = None
) -> list[dict]:
    """Rows ``{"scene", "encoder", "ratio", "size", "constant", method: RMSE, ...}``, one per scene and layer.

    ``methods``: name -> ``f(image (1, 3, H, W) in [0, 1], features (1, C, h, w), (H, W))``; must
    include ``"bilinear"`` (the reference of the gains). ``encoders``: label -> encoder, to reuse
    built ones (default: :func:`anyup.train.heldout.build` of each ``config.layers`` label).
    """
    from anyup.eval.datasets.depth import MiddleburyConfig, MiddleburyStereo
    from anyup.train.heldout import build
    from anyup.train.validate import _features

    cfg = config or DepthProbeConfig()
    if "bilinear" not in methods:
        raise ValueError(f"run_probe: methods must include 'bilinear' (the reference), got {sorted(methods)}")
    data = MiddleburyStereo(config=MiddleburyConfig(scenes=tuple(cfg.scenes)))
    scenes = [scene_at(data[i], cfg) + (data.items[i],) for i in range(len(data))]
    missing = sorted(set(cfg.scenes) - {s[-1] for s in scenes})
    # the probe on no features (the training mean): a property of the scene, the same for every layer
    constant = {name: probe_rmse(torch.zeros(1, *depth.shape), depth, valid, cfg) for _, depth, valid, name in scenes}
    if missing:
        raise FileNotFoundError(f"depth probe: scenes {missing} are not available here (apt-get install opencv-doc)")
    rows = []
    for label in cfg.layers:
        enc = (encoders or {}).get(label) or build(label)
        for img, depth, valid, name in scenes:
            size = (int(img.shape[-2]), int(img.shape[-1]))
            enc_in = img[None]
            if cfg.input_scale != 1:
                small = tuple(_round_to(n * cfg.input_scale, cfg.multiple) for n in size)
                enc_in = F.interpolate(enc_in, size=small, mode="bilinear", antialias=True, align_corners=False)
            low = _features(enc, enc_in.clamp(0, 1)).float()  # (1, C, h, w)
            row: dict = {"scene": name, "encoder": label, "ratio": size[0] // int(low.shape[-2]), "size": list(size)}
            row["constant"] = constant[name]
            for mname, up in methods.items():
                feats = up(img[None], low, size).float()[0]  # (C, H, W)
                row[mname] = probe_rmse(feats, depth, valid, cfg)
            rows.append(row)
            logger.info("%s %s: %s", name, label, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
    return rows


def summary(rows: Sequence[dict], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per method: ``mean_rmse``, ``mean_gain`` (bilinear RMSE - RMSE), ``wins`` (rows better than bilinear), ``rows``."""
    out = {}
    for m in methods:
        gains = [r["bilinear"] - r[m] for r in rows]
        out[m] = {
            "mean_rmse": sum(r[m] for r in rows) / len(rows),
            "mean_gain": sum(gains) / len(gains),
            "wins": float(sum(g > 0 for g in gains)),
            "rows": float(len(rows)),
        }
    return out


def markdown(rows: Sequence[dict], methods: Sequence[str]) -> str:
    """RMSE table (best per row in bold) plus mean RMSE, mean gain over bilinear and wins."""
    lines = [
        "| scene | encoder layer | ratio | constant | " + " | ".join(methods) + " |",
        "|---|---|---|---|" + "---|" * len(methods),
    ]
    for r in rows:
        best = min(r[m] for m in methods)
        cells = [f"**{r[m]:.4f}**" if r[m] == best else f"{r[m]:.4f}" for m in methods]
        lines.append(
            f"| {r['scene']} | {r['encoder']} | {r['ratio']} | {r['constant']:.4f} | " + " | ".join(cells) + " |"
        )
    s = summary(rows, methods)
    lines.append("| **mean RMSE** | | | | " + " | ".join(f"{s[m]['mean_rmse']:.4f}" for m in methods) + " |")
    lines.append(
        "| **mean gain over bilinear** | | | | " + " | ".join(f"{s[m]['mean_gain']:+.4f}" for m in methods) + " |"
    )
    lines.append(
        "| **rows better than bilinear** | | | | "
        + " | ".join(f"{int(s[m]['wins'])}/{int(s[m]['rows'])}" for m in methods)
        + " |"
    )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The probe's flags (``python -m anyup.eval.depth_probe`` and ``anyup eval depth-probe``)."""
    from anyup.cli._flags import ListAction, RenamedFlag

    # LABEL=WEIGHTS lists are --reference, as in `anyup train-eval` (--model is one NAME_OR_PATH everywhere)
    p.add_argument("--reference", dest="references", action=ListAction, split=False, default=[],
                   metavar="LABEL=WEIGHTS", help="AnyUp weights to compare, a registered name or a file "
                   "(repeat for more)")  # fmt: skip
    p.add_argument("--weights", dest="references", action=RenamedFlag, new="--reference", nargs="+",
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--soft-edge", nargs="+", default=[], metavar="LABEL",
                   help="also run these weights with the other window edge (hard <-> soft)")  # fmt: skip
    p.add_argument(
        "--layers", nargs="+", help="encoder layers, NAME@LAYER (default: the ten offline CNN layers of training)"
    )
    p.add_argument("--scenes", nargs="+", default=["motorcycle", "aloe"])
    p.add_argument("--short", type=int, default=DepthProbeConfig.short, help="short side of the probed image")
    p.add_argument("--input-scale", type=float, default=1.0, help="the encoder sees the image resized by this")
    p.add_argument("--split", choices=SPLITS, default=DepthProbeConfig.split,
                   help="fit on checkerboard squares and test on the others (default), or fit on one half "
                   "of each scene and test on the other")  # fmt: skip
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="print one table of earlier --out files (joined per scene, layer and ratio) and exit")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the probe for parsed :func:`add_arguments` flags; prints the Markdown table."""
    from anyup.train.heldout import merge_rows, methods_from, parse_weights

    if args.merge:
        rows = merge_rows([json.loads(f.read_text()) for f in args.merge], keys=("scene", "encoder", "ratio"))
        fields = ("scene", "encoder", "ratio", "size", "constant")
        print(markdown(rows, list(dict.fromkeys(k for r in rows for k in r if k not in fields))))  # the result
        return 0
    weights = parse_weights(args.references, args.soft_edge, flag="--reference")
    cfg = DepthProbeConfig(short=args.short, scenes=tuple(args.scenes), input_scale=args.input_scale, split=args.split)
    if args.layers:
        cfg.layers = list(args.layers)
    methods = methods_from(weights, args.soft_edge)
    rows = run_probe(methods, cfg)
    if args.out:
        from anyup._atomic import atomic_write_text

        atomic_write_text(args.out, json.dumps(rows, indent=1))
    print(markdown(rows, list(methods)))  # the command's result
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anyup.eval.depth_probe", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
