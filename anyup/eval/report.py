"""Results tables: the CSV every evaluation writes, its markdown summary and its plots.

``results.csv`` has exactly the columns :data:`COLUMNS` (one row per number; ``seed`` is empty
for numbers that involve no training, such as label-free fidelity). ``results.md`` groups the
rows per dataset, encoder and task into ``mean ± std`` over seeds, names the protocol(s) with
their hashes, the package versions and the date, and compares AnyUp with bilinear
interpolation. Plots are PNGs drawn with matplotlib's Agg backend. Every file is written to a
temporary name in the output folder and moved into place (never half-written).
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from anyup._atomic import atomic_write, atomic_write_text

__all__ = [
    "COLUMNS",
    "ResultRow",
    "atomic_write_text",
    "higher_is_better",
    "read_csv",
    "summarize",
    "versions",
    "write_csv",
    "write_markdown",
    "write_plots",
]

COLUMNS: tuple[str, ...] = ("dataset", "encoder", "method", "task", "metric", "value", "seed")

# Metrics where a smaller value is better; everything else is "higher is better".
LOWER_IS_BETTER_PREFIXES: tuple[str, ...] = (
    "rmse",
    "abs_rel",
    "log_rmse",
    "mean_angle",
    "median_angle",
    "rmse_angle",
    "loss",
)
# Counts and other numbers without a "better" direction.
NEUTRAL_METRICS: tuple[str, ...] = ("pixels",)
# The headline metric per task (plots and the AnyUp-vs-bilinear summary).
MAIN_METRICS: dict[str, tuple[str, ...]] = {
    "seg": ("miou", "boundary_miou", "pixel_acc"),
    "depth": ("rmse", "delta1", "abs_rel", "rmse_aligned", "delta1_aligned"),
    "normals": ("mean_angle", "median_angle", "within_11.25", "rmse_angle"),
    "fidelity": ("cos", "cos_edges"),
}


@dataclass(frozen=True)
class ResultRow:
    dataset: str
    encoder: str
    method: str
    task: str
    metric: str
    value: float
    seed: int | None = None


def higher_is_better(metric: str) -> bool:
    return not metric.startswith(LOWER_IS_BETTER_PREFIXES)


def write_csv(rows: Iterable[ResultRow], path: str | os.PathLike) -> None:
    """Write rows with header :data:`COLUMNS` (values with 6 significant digits, ``seed`` empty if None)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        d, e, m, t, k, v, s = astuple(r)
        w.writerow([d, e, m, t, k, f"{float(v):.6g}", "" if s is None else int(s)])
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike) -> list[ResultRow]:
    """Read a ``results.csv`` back (checks the header)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = tuple(next(reader))
        if header != COLUMNS:
            raise ValueError(f"{path}: expected columns {COLUMNS}, got {header}")
        return [ResultRow(d, e, m, t, k, float(v), int(s) if s != "" else None) for d, e, m, t, k, v, s in reader]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)  # sample std over seeds
    return mean, math.sqrt(var)


def summarize(rows: Iterable[ResultRow]) -> dict[tuple[str, str, str, str, str], tuple[float, float, int]]:
    """``(dataset, encoder, task, metric, method) -> (mean, std, n)`` over seeds."""
    groups: dict[tuple[str, str, str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        groups[(r.dataset, r.encoder, r.task, r.metric, r.method)].append(float(r.value))
    return {k: (*_mean_std(v), len(v)) for k, v in groups.items()}


def versions() -> dict[str, str]:
    """Versions of the packages and interpreter that produced a result."""
    import numpy
    import torch

    import anyup

    out = {
        "anyup": anyup.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:
        pass
    return out


def _fmt(mean: float, std: float, n: int, metric: str) -> str:
    if math.isnan(mean):
        return "n/a"
    scale = 100.0 if _is_fraction(metric) else 1.0
    digits = 2 if scale == 100.0 else 4
    s = f"{mean * scale:.{digits}f}"
    if n > 1:
        s += f" ± {std * scale:.{digits}f}"
    return s


def _is_fraction(metric: str) -> bool:
    return metric.startswith(("miou", "pixel_acc", "boundary", "delta", "within")) or metric.endswith("_acc")


def _method_order(methods: Iterable[str]) -> list[str]:
    """Registered methods in registration order (baselines first, then AnyUp, then peers), then the rest by name."""
    from anyup.baselines import list_methods

    preferred = list_methods()
    return sorted(set(methods), key=lambda m: (preferred.index(m) if m in preferred else len(preferred), m))


def comparison(
    rows: Iterable[ResultRow], method: str = "anyup", baseline: str = "bilinear"
) -> list[tuple[str, str, str, str, float, float, float, float, str]]:
    """For every (dataset, encoder, task, headline metric) with both methods: who is better.

    Returns tuples ``(dataset, encoder, task, metric, mean_method, std_method, mean_base, std_base,
    verdict)`` where verdict is ``"better"``, ``"worse"`` or ``"tie"`` (difference within the
    larger of the two seed standard deviations, or exactly equal).
    """
    s = summarize(rows)
    out = []
    keys = sorted({k[:4] for k in s})
    for d, e, t, m in keys:
        if m not in MAIN_METRICS.get(t.split("/")[0], ()) and t.split("/")[0] in MAIN_METRICS:
            continue
        a, b = s.get((d, e, t, m, method)), s.get((d, e, t, m, baseline))
        if a is None or b is None or math.isnan(a[0]) or math.isnan(b[0]):
            continue
        diff = a[0] - b[0]
        tol = max(a[1], b[1])
        if abs(diff) <= tol or diff == 0:
            verdict = "tie"
        else:
            verdict = "better" if (diff > 0) == higher_is_better(m) else "worse"
        out.append((d, e, t, m, a[0], a[1], b[0], b[1], verdict))
    return out


def write_markdown(rows: Sequence[ResultRow], path: str | os.PathLike, meta: dict[str, Any]) -> str:
    """Write ``results.md``: header (protocols with hashes, versions, date, command), tables, comparison.

    ``meta`` keys used: ``title``, ``protocols`` (``{task: Protocol}``), ``versions``, ``date``,
    ``command``, ``elapsed_s``, ``skipped`` (list of ``(what, reason)``), ``notes`` (list of str).
    Returns the markdown text.
    """
    lines: list[str] = [f"# {meta.get('title', 'anyup evaluation')}", ""]
    protocols = meta.get("protocols") or {}
    if protocols:
        lines.append(
            "Protocols: "
            + ", ".join(f"{task}: `{p.name}` v{p.version} (hash `{p.hash}`)" for task, p in protocols.items())
        )
    if meta.get("versions"):
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    if meta.get("date"):
        lines.append(f"Date: {meta['date']}")
    if meta.get("command"):
        lines.append(f"Command: `{meta['command']}`")
    if meta.get("elapsed_s") is not None:
        lines.append(f"Wall time: {meta['elapsed_s'] / 60:.1f} min")
    lines += [
        "",
        "Fractions (mIoU, accuracies, delta, within-angle) in %, angles in degrees, depth in the "
        "dataset's unit; `mean ± std` over probe seeds (std is the sample std; fidelity has no seed).",
        "",
    ]
    s = summarize(rows)
    by_table: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for d, e, t, _m, meth in s:
        by_table[(d, e, t)].add(meth)
    for d, e, t in sorted(by_table):
        methods = _method_order(by_table[(d, e, t)])
        metrics = sorted(
            {k[3] for k in s if k[:3] == (d, e, t)},
            key=lambda m: (
                MAIN_METRICS.get(t.split("/")[0], ()).index(m) if m in MAIN_METRICS.get(t.split("/")[0], ()) else 99,
                m,
            ),
        )
        lines.append(f"## {d} / {e} / {t}")
        lines.append("")
        lines.append("| metric | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---|" * len(methods))
        for m in metrics:
            arrow = "" if m in NEUTRAL_METRICS else ("↑" if higher_is_better(m) else "↓")
            cells = []
            for meth in methods:
                v = s.get((d, e, t, m, meth))
                cells.append(_fmt(*v, m) if v else "")
            lines.append(f"| {m} {arrow}".rstrip() + " | " + " | ".join(cells) + " |")
        lines.append("")
    comp = comparison(rows)
    if comp:
        lines += [
            "## AnyUp vs bilinear",
            "",
            "| dataset | encoder | task | metric | anyup | bilinear | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for d, e, t, m, am, asd, bm, bsd, verdict in comp:
            lines.append(
                f"| {d} | {e} | {t} | {m} | {_fmt(am, asd, 2 if asd else 1, m)} | "
                f"{_fmt(bm, bsd, 2 if bsd else 1, m)} | {verdict} |"
            )
        counts: defaultdict[str, int] = defaultdict(int)
        for c in comp:
            counts[c[-1]] += 1
        lines += [
            "",
            f"AnyUp better in {counts['better']}, tie in {counts['tie']}, worse in {counts['worse']} "
            "of these comparisons (tie = difference within one seed std).",
            "",
        ]
    skipped = meta.get("skipped") or []
    if skipped:
        lines += ["## Skipped", ""]
        lines += [f"- {what}: {reason}" for what, reason in skipped]
        lines.append("")
    for note in meta.get("notes") or []:
        lines.append(note)
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write_text(path, text)
    return text


def _savefig(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError('plots need matplotlib: pip install "anyup[eval]"') from err
    return plt


def write_plots(rows: Sequence[ResultRow], out_dir: str | os.PathLike) -> list[Path]:
    """One grouped bar chart per (dataset, task): headline metric, bars per method, groups per encoder."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summarize(rows)
    written: list[Path] = []
    for d, t in sorted({(k[0], k[2]) for k in s}):
        candidates = MAIN_METRICS.get(t.split("/")[0], ())
        present = {k[3] for k in s if k[0] == d and k[2] == t}
        metric = next((m for m in candidates if m in present), sorted(present)[0] if present else None)
        if metric is None:
            continue
        encoders = sorted({k[1] for k in s if k[0] == d and k[2] == t and k[3] == metric})
        methods = _method_order({k[4] for k in s if k[0] == d and k[2] == t and k[3] == metric})
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.5 * len(methods) * len(encoders)), 3.2))
        width = 0.8 / max(len(methods), 1)
        for j, meth in enumerate(methods):
            xs, ys, es = [], [], []
            for i, e in enumerate(encoders):
                v = s.get((d, e, t, metric, meth))
                if v is None or math.isnan(v[0]):
                    continue
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(v[0])
                es.append(v[1] if v[2] > 1 else 0.0)
            ax.bar(xs, ys, width=width, yerr=es, capsize=2, label=meth)
        ax.set_xticks(range(len(encoders)))
        ax.set_xticklabels(encoders, fontsize=8)
        ax.set_ylabel(f"{metric} ({'higher' if higher_is_better(metric) else 'lower'} is better)")
        ax.set_title(f"{d} / {t}", fontsize=10)
        vals = [s[k][0] for k in s if k[0] == d and k[2] == t and k[3] == metric and not math.isnan(s[k][0])]
        if vals:
            lo, hi = min(vals), max(vals)
            pad = (hi - lo) * 0.3 + 1e-6
            ax.set_ylim(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(axis="y", alpha=0.3)
        safe = f"{d}_{t}".replace("/", "-").replace(" ", "_")
        path = out_dir / f"{safe}.png"
        _savefig(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def write_line_plot(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    errors: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """A simple line plot (one line per series), written atomically as PNG."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for name, ys in series.items():
        err = (errors or {}).get(name)
        ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=2, label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _savefig(fig, path)
    plt.close(fig)
    return path
