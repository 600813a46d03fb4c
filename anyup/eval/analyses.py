"""The analyses behind ``anyup eval <analysis>``, one function each.

* :func:`probe_consistency` -- a probe trained on *low-resolution* features applied to
  AnyUp-upsampled versus bilinearly upsampled features. AnyUp outputs convex combinations of
  the input vectors, so it stays in the encoder's feature space and the probe should transfer.
* :func:`window_sensitivity` -- sweep AnyUp's ``window_ratio`` with label-free fidelity and a
  fixed segmentation probe.
* :func:`cross_encoder` -- the same AnyUp weights over every encoder that can be built here.
* :func:`attention_at_boundaries` -- where output pixels next to ground-truth class edges look
  in the low-resolution grid: the attention mass on cells of the pixel's own class, versus the
  implicit weights of bilinear interpolation; PNGs of the maps.
* :func:`fidelity` -- label-free feature fidelity only (a thin wrapper over the runner).

Each writes ``results.csv`` (columns :data:`anyup.eval.report.COLUMNS`), ``results.md`` and
PNG plots into its output folder and returns the rows.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from anyup.eval.features import FeatureCache, default_cache_dir, prepare_samples
from anyup.eval.metrics import bilinear_weights, boundary_band
from anyup.eval.probes import UpsampledFeatures, _normalize, _present, evaluate_probe, image_float, train_probe
from anyup.eval.protocols import Protocol, get_protocol
from anyup.eval.report import ResultRow, versions, write_csv, write_line_plot, write_markdown, write_plots
from anyup.eval.runner import (
    RunOptions,
    create_encoder,
    fidelity_metrics,
    fidelity_samples,
    load_splits,
    make_upsampler,
    run,
)

if TYPE_CHECKING:
    from anyup.model import AnyUp

logger = logging.getLogger(__name__)

__all__ = [
    "AnalysisOptions",
    "attention_at_boundaries",
    "cross_encoder",
    "fidelity",
    "load_anyup",
    "probe_consistency",
    "window_sensitivity",
]

DEFAULT_RATIOS: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2, 0.4)


@dataclass
class AnalysisOptions:
    """Shared settings of the analyses (CLI flags map onto these)."""

    out: Path
    dataset: str = "synthetic"  # labelled dataset for probes / attention
    fidelity_dataset: str = "photos"
    encoder: str = "efficientnet_lite0"
    anyup_weights: str | None = "anyup_multi_backbone"  # name or path; None = random init (tests)
    protocol: str = "offline"
    overrides: dict[str, Any] = field(default_factory=dict)
    roots: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None  # None: default_cache_dir()
    use_cache: bool = True
    pretrained: bool = True  # encoder weights
    task: str = "seg"
    progress: bool = True
    command: str = ""


def load_anyup(weights: str | None) -> AnyUp:
    """AnyUp with ``weights`` (registered name or file), or random init for ``None``."""
    import anyup

    if weights is None:
        logger.warning("AnyUp with random weights (anyup_weights=None): numbers say nothing about the method")
        torch.manual_seed(0)
        return anyup.AnyUp(anyup.AnyUpConfig()).eval()
    return anyup.load(weights)


def _anyup_fn(model: torch.nn.Module) -> Callable:
    def up(image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        with torch.no_grad():
            return model(image, features, size)

    return up


def _cache(options: AnalysisOptions) -> FeatureCache:
    return FeatureCache((options.cache_dir or default_cache_dir()) if options.use_cache else None)


def _encoder(options: AnalysisOptions) -> Any:
    return create_encoder(options.encoder, options.pretrained)


def _finish(
    rows: list[ResultRow],
    options: AnalysisOptions,
    title: str,
    protocols: dict[str, Protocol],
    t0: float,
    notes: Sequence[str] = (),
    plots: bool = True,
) -> None:
    out = Path(options.out)
    write_csv(rows, out / "results.csv")
    meta = {
        "title": title,
        "protocols": protocols,
        "versions": versions(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": options.command,
        "elapsed_s": time.perf_counter() - t0,
        "notes": list(notes),
    }
    write_markdown(rows, out / "results.md", meta)
    if plots:
        write_plots(rows, out)


def _prepare(options: AnalysisOptions, protocol: Protocol, encoder: Any, cache: FeatureCache) -> tuple[list, list, Any]:
    train_ds, eval_ds, _ = load_splits(options.dataset, options.roots)
    if options.task not in tuple(train_ds.tasks):
        raise ValueError(f"dataset {options.dataset!r} has no {options.task!r} labels (tasks: {train_ds.tasks})")
    train = prepare_samples(
        train_ds,
        encoder,
        protocol.image_size,
        cache,
        max_images=protocol.max_train_images,
        flips=protocol.hflip,
        tasks=[options.task],
        progress=options.progress,
        desc="train",
    )
    evals = prepare_samples(
        eval_ds,
        encoder,
        protocol.image_size,
        cache,
        max_images=protocol.max_eval_images,
        tasks=[options.task],
        progress=options.progress,
        desc="eval",
    )
    return train, evals, train_ds


# --------------------------------------------------------------------------------------------
# Probe consistency
# --------------------------------------------------------------------------------------------


def probe_consistency(options: AnalysisOptions, methods: Sequence[str] = ("bilinear", "anyup")) -> list[ResultRow]:
    """Low-res probes applied to upsampled features, next to probes trained on each method's own features.

    Rows use ``task`` ``"<task>/lowres_logits_probe"`` (probe trained on the raw low-res features
    with its logits bilinearly upsampled for the loss), ``"<task>/lowres_labels_probe"`` (probe
    trained at low resolution on nearest-downsampled labels) and ``"<task>/native_probe"``
    (probe trained on that method's upsampled features; the reference).
    """
    t0 = time.perf_counter()
    protocol = get_protocol(options.protocol, **options.overrides)
    encoder = _encoder(options)
    cache = _cache(options)
    train, evals, ds = _prepare(options, protocol, encoder, cache)
    kw = {"num_classes": int(getattr(ds, "num_classes", 0)), "ignore_index": int(getattr(ds, "ignore_index", 255))}
    task = options.task
    ups: dict[str, Callable] = {}
    for m in methods:
        ups[m] = _anyup_fn(load_anyup(options.anyup_weights)) if m == "anyup" else make_upsampler(m, encoder)
    low_train = UpsampledFeatures(None, train)
    evals_up = {m: UpsampledFeatures(up, evals) for m, up in ups.items()}
    train_up = {m: UpsampledFeatures(up, train) for m, up in ups.items()}  # shared by the seeds
    rows: list[ResultRow] = []
    for seed in protocol.seeds:
        for variant in ("logits", "labels"):
            probe = train_probe(
                task,
                low_train,
                protocol,
                seed,
                lowres=variant,
                progress=options.progress,
                desc=f"low-res probe ({variant}) s{seed}",
                **kw,
            )
            for m, ev in evals_up.items():
                for k, v in evaluate_probe(task, probe, ev, protocol, **kw).items():
                    rows.append(
                        ResultRow(options.dataset, options.encoder, m, f"{task}/lowres_{variant}_probe", k, v, seed)
                    )
        for m in ups:
            probe = train_probe(
                task, train_up[m], protocol, seed, progress=options.progress, desc=f"{m} probe s{seed}", **kw
            )
            for k, v in evaluate_probe(task, probe, evals_up[m], protocol, **kw).items():
                rows.append(ResultRow(options.dataset, options.encoder, m, f"{task}/native_probe", k, v, seed))
    note = (
        "A probe trained on low-res features transfers to an upsampler's output when its score on that output is "
        "close to the score of a probe trained on that output (native_probe)."
    )
    _finish(rows, options, "Probe consistency: low-res probes on upsampled features", {task: protocol}, t0, [note])
    return rows


# --------------------------------------------------------------------------------------------
# Window-size sensitivity
# --------------------------------------------------------------------------------------------


def window_sensitivity(
    options: AnalysisOptions, ratios: Sequence[float] = DEFAULT_RATIOS, probe: bool = True
) -> list[ResultRow]:
    """Fidelity (and a segmentation probe) of AnyUp for each ``window_ratio``; bilinear as reference.

    Methods are named ``anyup[r=<ratio>]``. Plots ``window_<metric>.png`` of metric vs ratio.
    """
    t0 = time.perf_counter()
    protocol = get_protocol(options.protocol, **options.overrides)
    encoder = _encoder(options)
    cache = _cache(options)
    model = load_anyup(options.anyup_weights)
    original = float(model.window_ratio)
    bilinear = make_upsampler("bilinear")
    from anyup.eval import datasets as D

    fid_ds = D.create(
        options.fidelity_dataset, root=options.roots.get(options.fidelity_dataset) or options.roots.get("*")
    )
    fsamples = fidelity_samples(fid_ds, encoder, protocol, cache, options.progress)
    train = evals = None
    kw: dict[str, int] = {}
    if probe:
        train, evals, ds = _prepare(options, protocol, encoder, cache)
        kw = {"num_classes": int(getattr(ds, "num_classes", 0)), "ignore_index": int(getattr(ds, "ignore_index", 255))}
    rows: list[ResultRow] = []
    methods: list[tuple[str, Callable, float | None]] = [("bilinear", bilinear, None)]
    methods += [(f"anyup[r={r:g}]", _anyup_fn(model), float(r)) for r in ratios]
    try:
        for name, up, r in methods:
            if r is not None:
                model.window_ratio = r
            for k, v in fidelity_metrics(fsamples, up, protocol.fidelity_edge_quantile).items():
                rows.append(ResultRow(options.fidelity_dataset, options.encoder, name, "fidelity", k, v, None))
            if probe:
                assert train is not None and evals is not None  # prepared above when probe
                tr, ev = UpsampledFeatures(up, train), UpsampledFeatures(up, evals)
                for seed in protocol.seeds:
                    p = train_probe(
                        options.task, tr, protocol, seed, progress=options.progress, desc=f"{name} s{seed}", **kw
                    )
                    for k, v in evaluate_probe(options.task, p, ev, protocol, **kw).items():
                        rows.append(ResultRow(options.dataset, options.encoder, name, options.task, k, v, seed))
    finally:
        model.window_ratio = original
    _finish(
        rows, options, "AnyUp window-size sensitivity", {"fidelity": protocol, options.task: protocol}, t0, plots=False
    )
    _ratio_plots(rows, ratios, Path(options.out))
    return rows


def _ratio_plots(rows: Sequence[ResultRow], ratios: Sequence[float], out: Path) -> None:
    from anyup.eval.report import summarize

    s = summarize(rows)
    for d, e, t, metric in sorted({k[:4] for k in s}):
        if metric not in ("cos", "cos_edges", "miou", "boundary_miou", "rmse", "mean_angle"):
            continue
        ys = [s.get((d, e, t, metric, f"anyup[r={r:g}]"), (math.nan, 0.0, 0)) for r in ratios]
        series = {"anyup": [y[0] for y in ys]}
        errors = {"anyup": [y[1] for y in ys]}
        base = s.get((d, e, t, metric, "bilinear"))
        if base:
            series["bilinear"] = [base[0]] * len(ratios)
            errors["bilinear"] = [0.0] * len(ratios)
        write_line_plot(
            list(ratios),
            series,
            out / f"window_{d}_{t}_{metric}.png".replace("/", "-"),
            xlabel="window_ratio",
            ylabel=metric,
            title=f"{d} / {e} / {t}",
            logx=True,
            errors=errors,
        )


# --------------------------------------------------------------------------------------------
# Cross-encoder generalisation and plain fidelity (runner wrappers)
# --------------------------------------------------------------------------------------------


_SHARED_RUN_FIELDS = (
    "out",
    "protocol",
    "overrides",
    "roots",
    "cache_dir",
    "use_cache",
    "pretrained",
    "progress",
    "command",
)


def _run_options(options: AnalysisOptions, **fields: Any) -> RunOptions:
    """The runner's options for an analysis: the shared settings of ``options`` plus ``fields``."""
    shared = {name: getattr(options, name) for name in _SHARED_RUN_FIELDS}
    return RunOptions(suite="offline", **shared, **fields)


def cross_encoder(
    options: AnalysisOptions, encoders: Sequence[str] | None = None, methods: Sequence[str] = ("bilinear", "anyup")
) -> list[ResultRow]:
    """The same AnyUp weights on every encoder (those that cannot be built here are skipped with the reason)."""
    from anyup import encoders as E

    names = list(encoders) if encoders else E.list_encoders()
    return run(
        _run_options(
            options,
            datasets=[options.dataset, options.fidelity_dataset],
            encoders=names,
            methods=list(methods),
            tasks=[options.task, "fidelity"],
            probe_encoders=names,
            title="Cross-encoder generalisation (same AnyUp weights)",
        )
    )


def fidelity(
    options: AnalysisOptions,
    datasets: Sequence[str] | None = None,
    encoders: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> list[ResultRow]:
    """Label-free feature fidelity of every method (a runner call with ``tasks=["fidelity"]``)."""
    return run(
        _run_options(
            options,
            datasets=list(datasets or [options.fidelity_dataset]),
            encoders=list(encoders or [options.encoder]),
            methods=list(methods) if methods else None,
            tasks=["fidelity"],
            title="Label-free feature fidelity",
        )
    )


# --------------------------------------------------------------------------------------------
# Attention maps at class boundaries
# --------------------------------------------------------------------------------------------


def class_fractions(
    seg: torch.Tensor, num_classes: int, grid: tuple[int, int], ignore_index: int = 255
) -> torch.Tensor:
    """Share of each class among the valid pixels under every low-res cell: ``(K, h, w)``.

    ``seg``: ``(H, W)`` int64 at image resolution; cells are ``adaptive_avg_pool`` footprints.
    Cells without a valid pixel get all zeros.
    """
    valid = seg != ignore_index
    onehot = F.one_hot(seg.clamp(0, num_classes - 1) * valid, num_classes).permute(2, 0, 1).float()  # (K, H, W)
    onehot = onehot * valid.float()
    num = F.adaptive_avg_pool2d(onehot[None], grid)[0]  # (K, h, w)
    den = F.adaptive_avg_pool2d(valid.float()[None, None], grid)[0]  # (1, h, w)
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))


def pick_boundary_pixels(
    seg: torch.Tensor, count: int, width: int, generator: torch.Generator, ignore_index: int = 255, margin: int = 0
) -> list[tuple[int, int]]:
    """``count`` distinct pixels within ``width`` of a class edge (not ignored), drawn with ``generator``."""
    band = boundary_band(seg, width) & (seg != ignore_index)
    if margin:
        band[:margin] = band[-margin:] = False
        band[:, :margin] = band[:, -margin:] = False
    ys, xs = torch.nonzero(band, as_tuple=True)
    if ys.numel() == 0:
        return []
    perm = torch.randperm(ys.numel(), generator=generator)[:count]
    return [(int(ys[i]), int(xs[i])) for i in perm]


def attention_at_boundaries(
    options: AnalysisOptions,
    images: int = 8,
    pixels_per_image: int = 16,
    band_width: int = 2,
    png_images: int = 3,
    seed: int = 0,
) -> list[ResultRow]:
    """Attention mass on the query pixel's own class near GT boundaries: AnyUp vs bilinear weights.

    For each sampled pixel ``p`` (class ``c``, within ``band_width`` px of a class edge) and a
    weight map ``w`` over the low-res grid, ``same_class_mass = sum_cells w(cell) * share of
    class c under the cell``. Rows (task ``attention``): ``same_class_mass`` for ``anyup`` and
    ``bilinear`` (mean over pixels) and ``anyup_wins`` (share of pixels where AnyUp puts more
    mass on the own class than bilinear does). PNGs ``attention_<k>.png`` show the image, the
    labels, and both weight maps for a few pixels.
    """
    t0 = time.perf_counter()
    protocol = get_protocol(options.protocol, **options.overrides)
    encoder = _encoder(options)
    cache = _cache(options)
    model = load_anyup(options.anyup_weights)
    _, eval_ds, _ = load_splits(options.dataset, options.roots)
    if "seg" not in tuple(eval_ds.tasks):
        raise ValueError(f"dataset {options.dataset!r} has no segmentation labels (tasks: {eval_ds.tasks})")
    samples = prepare_samples(
        eval_ds,
        encoder,
        protocol.image_size,
        cache,
        max_images=images,
        tasks=["seg"],
        progress=options.progress,
        desc="attention",
    )
    k = int(eval_ds.num_classes)
    ignore = int(getattr(eval_ds, "ignore_index", 255))
    gen = torch.Generator().manual_seed(seed)
    same_any: list[float] = []
    same_bil: list[float] = []
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    for n, s in enumerate(samples):
        seg = _present(s.seg, "seg")
        size = s.size
        h, w = s.features.shape[-2:]
        pts = pick_boundary_pixels(seg, pixels_per_image, band_width, gen, ignore)
        if not pts:
            continue
        img = _normalize(image_float([s.image]))
        att = model.attention_weights(img, s.features[None].float(), size, pixels=pts)[0].float()  # (P, h, w)
        frac = class_fractions(seg, k, (h, w), ignore)  # (K, h, w)
        bil = torch.stack([bilinear_weights((h, w), size, y, x) for y, x in pts])  # (P, h, w)
        for i, (y, x) in enumerate(pts):
            c = int(seg[y, x])
            same_any.append(float((att[i] * frac[c]).sum()))
            same_bil.append(float((bil[i] * frac[c]).sum()))
        if n < png_images:
            _attention_png(out / f"attention_{n}.png", s, pts[:4], att[:4], bil[:4])
    rows: list[ResultRow] = []
    if same_any:
        wins = sum(a > b for a, b in zip(same_any, same_bil)) / len(same_any)
        rows += [
            ResultRow(
                options.dataset,
                options.encoder,
                "anyup",
                "attention",
                "same_class_mass",
                sum(same_any) / len(same_any),
                None,
            ),
            ResultRow(
                options.dataset,
                options.encoder,
                "bilinear",
                "attention",
                "same_class_mass",
                sum(same_bil) / len(same_bil),
                None,
            ),
            ResultRow(options.dataset, options.encoder, "anyup", "attention", "anyup_wins", wins, None),
            ResultRow(options.dataset, options.encoder, "anyup", "attention", "pixels", float(len(same_any)), None),
        ]
    note = (
        f"Pixels within {band_width} px of a class edge at {protocol.image_size} px; same_class_mass = attention "
        "weight on low-res cells times the share of the pixel's own class under each cell."
    )
    _finish(rows, options, "Attention at class boundaries", {"attention": protocol}, t0, [note], plots=False)
    return rows


def _attention_png(
    path: Path, sample: Any, pts: Sequence[tuple[int, int]], att: torch.Tensor, bil: torch.Tensor
) -> None:
    from anyup.eval.report import _pyplot, _savefig

    plt = _pyplot()
    img = sample.image.permute(1, 2, 0).numpy()
    size = sample.size
    fig, axes = plt.subplots(len(pts), 4, figsize=(9.6, 2.5 * len(pts)), squeeze=False)
    for i, (y, x) in enumerate(pts):
        up_a = F.interpolate(att[i][None, None], size=size, mode="nearest")[0, 0].numpy()
        up_b = F.interpolate(bil[i][None, None], size=size, mode="nearest")[0, 0].numpy()
        panels = [(img, "image"), (sample.seg.numpy(), "labels"), (up_a, "AnyUp attention"), (up_b, "bilinear weights")]
        for j, (data, title) in enumerate(panels):
            ax = axes[i][j]
            if j == 1:
                ax.imshow(data, cmap="tab20", interpolation="nearest", vmin=0, vmax=20)
            elif j >= 2:
                ax.imshow(img, alpha=1.0)
                ax.imshow(data, cmap="magma", alpha=0.65, interpolation="nearest")
            else:
                ax.imshow(data)
            ax.plot([x], [y], marker="+", color="cyan", ms=10, mew=2)
            ax.set_title(title if i == 0 else "", fontsize=8)
            ax.axis("off")
    _savefig(fig, path)
    plt.close(fig)
