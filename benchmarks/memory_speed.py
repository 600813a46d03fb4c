"""Time and peak working memory of AnyUp (ours) vs a dense-mask implementation vs bilinear.

Methods, each on the same random image/features and the same weights:

* ``ours``: the library's forward (window-tiled attention, GEMM 1x1 convs, buffer reuse).
* ``ours_refk``: the same tiling with the reference implementation's kernels
  (``anyup.layers.blocks.reference_kernels``), to show how much of the speed-up is the tiling.
* ``dense``: the reference computation: reference kernels and a dense ``(H'*W', h*w)`` mask.
* ``bilinear``: ``F.interpolate``.

Every measurement runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own. Working
memory = peak RSS during the call minus RSS just before it (model, inputs loaded), minus the
output tensor. All numbers of one table come from one run of this script on one machine.

    python benchmarks/memory_speed.py --out benchmarks/results            # full table (224..2048)
    python benchmarks/memory_speed.py --sizes 224 448 --out /tmp/bench    # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATCH = 14
CHANNELS = 384
DENSE_LIMIT_BYTES = 14 << 30  # the dense mask + attention logits beyond this would not fit this machine


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(method: str, size: int, max_memory: int | None) -> dict:
    import torch
    import torch.nn.functional as F

    import anyup
    from anyup.layers.blocks import reference_kernels

    torch.manual_seed(0)
    low = size // PATCH
    model = anyup.AnyUp().eval()
    image = torch.randn(1, 3, size, size)
    feats = torch.randn(1, CHANNELS, low, low)
    out_bytes = CHANNELS * size * size * 4
    refk = reference_kernels() if method in ("ours_refk", "dense") else contextlib.nullcontext()

    def call(img, fts):
        if method in ("ours", "ours_refk"):
            return model(img, fts, max_memory=max_memory)
        if method == "dense":
            return model.forward_dense(img, fts)
        if method == "bilinear":
            return F.interpolate(fts, size=img.shape[-2:], mode="bilinear", align_corners=False)
        raise ValueError(method)

    with torch.no_grad(), refk:
        call(image[..., :56, :56], feats[..., :4, :4])  # warm-up on a small input (every method alike)
        before = _rss_bytes()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        out = call(image, feats)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert out.shape == (1, CHANNELS, size, size) and torch.isfinite(out).all()
    working = max(peak, peak_before) - before - out_bytes
    return {"method": method, "size": size, "low": low, "seconds": seconds, "working_bytes": max(working, 0)}


def dense_estimate(size: int) -> int:
    n_q, n_k = size * size, (size // PATCH) ** 2
    return n_q * n_k * (1 + 4 * 4 * 2)  # bool mask + 4 heads of float32 logits and weights


METHODS = ("bilinear", "ours", "ours_refk", "dense")


def run(sizes: list[int], out_dir: Path, max_memory: int | None, methods: tuple[str, ...] = METHODS) -> list[dict]:
    rows = []
    for size in sizes:
        for method in methods:
            if method == "dense" and dense_estimate(size) > DENSE_LIMIT_BYTES:
                rows.append({"method": method, "size": size, "low": size // PATCH, "seconds": None,
                             "working_bytes": None, "note": f"out of memory (needs > {dense_estimate(size) / 2**30:.0f} GiB)"})
                continue
            cmd = [sys.executable, __file__, "--worker", method, str(size)]
            if max_memory:
                cmd += ["--max-memory", str(max_memory)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                note = "failed: " + (res.stderr.strip().splitlines() or ["?"])[-1][:80]
                rows.append({"method": method, "size": size, "low": size // PATCH, "seconds": None, "working_bytes": None, "note": note})
            else:
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            sys.stderr.write(f"{method:>8} {size:>5}: {r.get('seconds')} s, {r.get('working_bytes')} B {r.get('note', '')}\n")
    write_report(rows, out_dir)
    return rows


def _fmt_mb(b):
    return "—" if b is None else f"{b / 2**20:,.0f}"


def write_report(rows: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    by = {(r["method"], r["size"]): r for r in rows}
    sizes = sorted({r["size"] for r in rows})
    import torch

    lines = [
        f"Output {CHANNELS} channels, features at 1/{PATCH} of the output side; CPU, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {platform.machine()}; one run of "
        "`python benchmarks/memory_speed.py`. Working memory = peak RSS minus inputs and output.",
        "",
        "`ours (ref. kernels)` is our tiling with the reference's convolution kernels and allocations; "
        "`dense` is the reference computation (reference kernels, dense mask). The last column is the part "
        "of the speed-up that comes from the tiling alone.",
        "",
        "| output | features | bilinear s | ours s | ours (ref. kernels) s | dense s | ours MiB | dense MiB "
        "| dense/ours memory | dense/ours time | dense/ours (ref. kernels) time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sizes:
        b, o, d = (by.get((m, s), {}) for m in ("bilinear", "ours", "dense"))
        k = by.get(("ours_refk", s), {})
        def sec(r):
            return "—" if r.get("seconds") is None else f"{r['seconds']:.2f}"
        mem_ratio = time_ratio = tiling_ratio = d.get("note", "—")
        if d.get("seconds") is not None and o.get("seconds") is not None:
            mem_ratio = f"{d['working_bytes'] / max(o['working_bytes'], 1):.1f}×"
            time_ratio = f"{d['seconds'] / o['seconds']:.1f}×"
            if k.get("seconds") is not None:
                tiling_ratio = f"{d['seconds'] / k['seconds']:.1f}×"
        lines.append(
            f"| {s}² | {s // PATCH}² | {sec(b)} | {sec(o)} | {sec(k)} | {sec(d)} | {_fmt_mb(o.get('working_bytes'))} | "
            f"{_fmt_mb(d.get('working_bytes'))} | {mem_ratio} | {time_ratio} | {tiling_ratio} |"
        )
    md = "\n".join(lines) + "\n"
    (out_dir / "memory_speed.md").write_text(md)
    (out_dir / "memory_speed.json").write_text(json.dumps(rows, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, style in (("bilinear", "k:"), ("ours", "b-o"), ("ours_refk", "c--^"), ("dense", "r-s")):
        pts = [(s, by[(method, s)]) for s in sizes if by.get((method, s), {}).get("seconds") is not None]
        axes[0].plot([s for s, _ in pts], [r["seconds"] for _, r in pts], style, label=method)
        axes[1].plot([s for s, _ in pts], [max(r["working_bytes"], 1) / 2**20 for _, r in pts], style, label=method)
    for ax, title in zip(axes, ("time (s)", "working memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("output side (px)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out_dir / "memory_speed.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 672, 896, 1344, 2048])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--max-memory", type=int, default=None, help="working-memory cap for ours (bytes)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.max_memory)))
        return
    run(args.sizes, args.out, args.max_memory, tuple(args.methods))
    sys.stdout.write((args.out / "memory_speed.md").read_text())


if __name__ == "__main__":
    main()
