"""Time and working memory of AnyUp: ours vs the dense reference, the old engine, bilinear, the GEMM floor.

One run, one machine, every method in its own subprocess on the same random image, features and
weights (float32, 1 image, features at 1/14 of the side, C channels):

* ``ours``: ``model(image, feats)`` under ``torch.no_grad()`` (the engine picks its plan from the cap);
* ``dense``: the reference computation (``benchmarks/dense_reference.py``: whole maps, dense mask);
* ``old``: the engine as it was before (``--old-src PATH``: a checkout of commit 35740a5, e.g.
  ``git worktree add /tmp/anyup-old 35740a5``);
* ``bilinear``: ``F.interpolate``;
* ``floor``: the method's multiply-adds (1x1 convs, the 3x3 query conv, projections, logits and
  value products inside the windows, the feature unification's filters) timed as large square GEMMs on this machine
  (best of five timings);
* ``ours_compiled``: ``AnyUpConfig(compile=True)`` (Inductor-fused element-wise chunk kernels),
  timed after one full-size call that compiles them (its time is reported as ``first_call_s``);
* ``ours_soft``: ``AnyUpConfig(window_edge="soft")`` (the log-coverage logit bias, a float mask);
* ``ours_bf16``: bfloat16 inputs (computed in float32 on the CPU, output in bfloat16);
* ``ours_warm``: ``ours`` timed as the floor is, the best of three calls, after one untimed
  full-size call (a caller that upsamples many images of one size; ``ours`` is the first full-size
  call of a fresh process); no working memory (the process peak is already set by then);
* ``ours_grad`` / ``dense_grad``: forward + backward of ``out.square().mean()`` w.r.t. the image
  and the parameters (checkpointed engine vs the dense reference);
* ``paired``: ``floor``, ``ours``, ``ours_bf16`` and ``ours_1worker`` (``cpu_workers=1``: the
  encoders' chunks one at a time, :mod:`anyup.engine.workers`) in *one* process, interleaved:
  ``--rounds`` rounds, each timing every one of them once (order rotated per round), after one
  untimed full-size call of each. On a shared VM whose speed drifts by tens of percent within
  minutes, the ratio of two timings taken seconds apart is the one that means something: it
  reports the per-round ratios ours / floor, bf16 / float32 and one worker / ours, their
  medians, and the CPU steal time (``/proc/stat``) over the rounds.

    python benchmarks/memory_speed.py --sizes 448 --channels 384 --old-src /tmp/anyup-old
    python benchmarks/memory_speed.py --sizes 2048 --channels 128 --methods ours old bilinear floor --old-src /tmp/anyup-old
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import fmt_mib, fmt_s, measure, out_dir, run_worker, write_atomic  # noqa: E402

PATCH = 14  # default; --patch 16 gives 128² features at 2048²
METHODS = (
    "bilinear",
    "floor",
    "ours",
    "ours_compiled",
    "ours_soft",
    "ours_bf16",
    "ours_warm",
    "dense",
    "old",
    "ours_grad",
    "dense_grad",
    "paired",
)
DENSE_LIMIT_BYTES = 22 << 30  # beyond this the dense reference would not fit this 24 GB machine


def _bytes(text: str | None) -> int | None:
    """The old engine takes bytes only: '2GiB' -> 2147483648."""
    if text is None:
        return None
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for unit, scale in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * scale)
    return int(text)


def stage_flops(size: int, low: int, c: int, d: int = 128, ratio: float = 0.1) -> dict[str, float]:
    """Multiply-adds (x2) of one call by engine stage: ``encoders`` (the per-pixel 1x1 convs),
    ``keys`` (the feature unification's filters; the low-res blocks are negligible), ``decode``
    (the 3x3 query conv, the query projection, logits and value products inside the windows)."""
    from anyup.engine import Window

    px = size * size
    convs = px * (2 * 3 * d + 14 * 2 * d * d)  # image first layer + 14 DxD 1x1 convs
    conv3 = px * 9 * 2 * d * d  # the 3x3 query conv at the output size
    proj = px * 2 * d * d  # query projection
    cells = Window.build((size, size), (low, low), ratio).mean_cells()
    attn = px * cells * 2 * (d + c)  # logits (all heads) + value product, inside the windows
    unify = low * low * c * d * 25 * 2  # feature unification: every channel against 128 5x5 filters
    return {"encoders": float(convs), "keys": float(unify), "decode": float(conv3 + proj + attn)}


def method_flops(size: int, low: int, c: int, d: int = 128, ratio: float = 0.1) -> float:
    return sum(stage_flops(size, low, c, d, ratio).values())


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from ``/proc/stat`` ((0, 0) where there is none)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except OSError:
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def floor_timer(size: int, low: int, channels: int) -> tuple[Callable[[], float], float]:
    """``(once, flops)``: ``once()`` times the method's multiply-adds (:func:`method_flops`) as
    2048² GEMMs and returns the seconds they take at that rate (the GEMM warmed up here)."""
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    flops = method_flops(size, low, channels)
    reps = max(1, round(flops / (2 * n**3)))

    def once() -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        return (time.perf_counter() - t0) * flops / (reps * 2 * n**3)

    return once, flops


def paired(size: int, channels: int, rounds: int, patch: int = PATCH) -> dict:
    """floor / ours / ours_bf16 interleaved in this process (see the module docstring)."""
    import statistics

    import torch

    import anyup

    low = size // patch
    floor, _ = floor_timer(size, low, channels)
    torch.manual_seed(0)
    model = anyup.AnyUp().eval()
    image, feats = torch.randn(1, 3, size, size), torch.randn(1, channels, low, low)
    half = (image.bfloat16(), feats.bfloat16())

    def timed(args, **kw) -> float:
        t0 = time.perf_counter()
        model(*args, **kw)
        return time.perf_counter() - t0

    calls = {
        "floor": floor,
        "ours": lambda: timed((image, feats)),
        "ours_bf16": lambda: timed(half),
        "ours_1worker": lambda: timed((image, feats), cpu_workers=1),  # the encoders' chunks one at a time
    }
    with torch.no_grad():
        first = {k: fn() for k, fn in calls.items()}  # untimed warm-up, recorded
        steal0, total0 = cpu_times()
        times: dict[str, list[float]] = {k: [] for k in calls}
        names = list(calls)
        for r in range(rounds):
            for k in names[r % len(names) :] + names[: r % len(names)]:
                times[k].append(calls[k]())
        steal1, total1 = cpu_times()
    ratio = [o / f for o, f in zip(times["ours"], times["floor"], strict=True)]
    bf16 = [h / o for h, o in zip(times["ours_bf16"], times["ours"], strict=True)]
    one = [w / o for w, o in zip(times["ours_1worker"], times["ours"], strict=True)]
    from anyup.engine import EngineOptions, plan_for

    return {
        "method": "paired",
        "size": size,
        "first_call_s": first,
        "seconds_by_round": times,
        "ours_vs_floor": ratio,
        "ours_vs_floor_median": statistics.median(ratio),
        "best_ours_vs_best_floor": min(times["ours"]) / min(times["floor"]),
        "bf16_vs_f32": bf16,
        "bf16_vs_f32_median": statistics.median(bf16),
        "workers": plan_for(model, image, feats, (size, size), EngineOptions()).workers,
        "one_worker_vs_ours": one,
        "one_worker_vs_ours_median": statistics.median(one),
        "steal_share": (steal1 - steal0) / max(total1 - total0, 1),
    }


def paired_lines(r: dict) -> list[str]:
    """Markdown bullets for a ``paired`` result."""
    if "ours_vs_floor" not in r:
        return [f"* paired: {r.get('note', 'no result')}"]
    t = r["seconds_by_round"]

    def row(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    return [
        f"* paired, {len(t['ours'])} interleaved rounds in one process (seconds by round): floor {row(t['floor'])}; "
        f"ours {row(t['ours'])}; ours_bf16 {row(t['ours_bf16'])}",
        f"* ours / floor by round: {row(r['ours_vs_floor'])}: **median {r['ours_vs_floor_median']:.2f}×** "
        f"(best / best {r['best_ours_vs_best_floor']:.2f}×)",
        f"* bf16 / float32 by round: {row(r['bf16_vs_f32'])}: **median {r['bf16_vs_f32_median']:.2f}×**",
        *(
            [
                f"* ours runs {r['workers']} worker thread(s); one worker (`cpu_workers=1`) / ours by round: "
                f"{row(r['one_worker_vs_ours'])}: **median {r['one_worker_vs_ours_median']:.2f}×**"
            ]
            if "one_worker_vs_ours" in r
            else []
        ),
        f"* CPU steal time over the rounds: {100 * r['steal_share']:.1f} % of all CPU time",
    ]


def worker(method: str, size: int, channels: int, max_memory: str | None, patch: int = PATCH, rounds: int = 5) -> dict:
    import torch
    import torch.nn.functional as F

    if method == "paired":
        return paired(size, channels, rounds, patch)
    low = size // patch
    if method == "floor":
        once, flops = floor_timer(size, low, channels)
        # the best of five timings: the floor is what the machine can do (single timings varied 0.9-1.6 s at 448²)
        return {
            "method": method,
            "size": size,
            "seconds": min(once() for _ in range(5)),
            "working_bytes": None,
            "gflop": flops / 1e9,
        }
    if method == "old":
        old = os.environ.get("ANYUP_OLD_SRC")
        if not old:
            return {"method": method, "size": size, "note": "no --old-src"}
        sys.path.insert(0, old)
        for k in [k for k in sys.modules if k == "anyup" or k.startswith("anyup.")]:
            del sys.modules[k]
    import anyup

    if method == "old":
        assert anyup.__file__.startswith(os.environ["ANYUP_OLD_SRC"]), anyup.__file__
    if method.startswith("dense"):
        from benchmarks.dense_reference import dense_forward

    torch.manual_seed(0)
    model = anyup.AnyUp().eval()
    if method == "ours_compiled":
        model.config.compile = True
    if method == "ours_soft":
        model.config.window_edge = "soft"
    image = torch.randn(1, 3, size, size)
    feats = torch.randn(1, channels, low, low)
    dtype = torch.bfloat16 if method == "ours_bf16" else torch.float32
    image, feats = image.to(dtype), feats.to(dtype)
    out_bytes = channels * size * size * feats.element_size()

    def call(img, fts):
        if method in ("ours", "ours_compiled", "ours_soft", "ours_bf16", "ours_warm", "old"):
            return model(img, fts, max_memory=_bytes(max_memory) if method == "old" else max_memory)
        if method == "dense":
            return dense_forward(model, img, fts)
        if method == "bilinear":
            return F.interpolate(fts, size=img.shape[-2:], mode="bilinear", align_corners=False)
        raise ValueError(method)

    if method in ("ours_grad", "dense_grad"):
        fn = (
            (lambda i, f: model(i, f, max_memory=max_memory))
            if method == "ours_grad"
            else (lambda i, f: dense_forward(model, i, f))
        )

        def step(img, fts):
            img = img.clone().requires_grad_(True)
            out = fn(img, fts)
            out.square().mean().backward()
            return img.grad

        step(image[..., :56, :56], feats[..., :4, :4])
        r = measure(lambda: step(image, feats), 0)
        return {"method": method, "size": size, **r}
    with torch.no_grad():
        call(image[..., :56, :56], feats[..., :4, :4])  # warm-up on a small input (every method alike)
        extra = {}
        if method == "ours_compiled":  # compile the full-size chunk kernels before timing
            t0 = time.perf_counter()
            call(image, feats)
            extra["first_call_s"] = time.perf_counter() - t0
        if method == "ours_warm":  # best of three after one full-size call, as the floor's best of five
            call(image, feats)
            best = min(measure(lambda: call(image, feats), out_bytes)["seconds"] for _ in range(3))
            return {"method": method, "size": size, "seconds": best, "working_bytes": None}
        r = measure(lambda: call(image, feats), out_bytes)
    return {"method": method, "size": size, **r, **extra}


def dense_estimate(size: int, grad: bool = False, patch: int = PATCH) -> int:
    n_q, n_k = size * size, (size // patch) ** 2
    return n_q * n_k * (1 + 4 * 4 * 2) * (3 if grad else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[448])
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--patch", type=int, default=PATCH, help="output side / feature side")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--max-memory", default=None, help="cap for ours (bytes or '2GB'; default automatic)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the paired method")
    ap.add_argument("--old-src", default=None, help="checkout of the old engine (commit 35740a5)")
    ap.add_argument(
        "--out", default=None, help="results folder (default: a new benchmarks/results/memory_speed-<time>)"
    )
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(
            json.dumps(
                worker(args.worker[0], int(args.worker[1]), args.channels, args.max_memory, args.patch, args.rounds)
            )
        )
        return
    import torch

    folder = out_dir(args.out, "memory_speed")
    rows = []
    for size in args.sizes:
        for method in args.methods:
            if (
                method.startswith("dense")
                and dense_estimate(size, method == "dense_grad", args.patch) > DENSE_LIMIT_BYTES
            ):
                rows.append({"method": method, "size": size, "note": "out of memory"})
                continue
            extra = ["--channels", str(args.channels), "--patch", str(args.patch), "--rounds", str(args.rounds)] + (
                ["--max-memory", str(args.max_memory)] if args.max_memory else []
            )
            r = run_worker(Path(__file__), [method, str(size), *extra], env={"ANYUP_OLD_SRC": args.old_src or ""})
            rows.append({"method": method, "size": size, **r})
            sys.stderr.write(f"{method:>10} {size:>5}: {r}\n")
    by = {(r["method"], r["size"]): r for r in rows}
    lines = [
        f"float32 unless noted, C = {args.channels}, features at 1/{args.patch} of the side; CPU ({os.cpu_count()} cores, "
        f"torch {torch.__version__}, {platform.machine()}), one run of `python benchmarks/memory_speed.py "
        f"{' '.join(sys.argv[1:])}`. Working memory: peak RSS growth minus the output.",
    ]
    if any(m != "paired" for m in args.methods):
        lines += [
            "",
            "| output | method | seconds | working MiB | time vs ours | memory vs ours |",
            "|---|---|---|---|---|---|",
        ]
    for size in args.sizes:
        ours = by.get(("ours", size), {})
        for method in args.methods:
            if method == "paired":
                continue
            r = by.get((method, size), {})
            t, m = r.get("seconds"), r.get("working_bytes")
            tr = f"{t / ours['seconds']:.2f}×" if t and ours.get("seconds") else "—"
            mr = f"{m / max(ours['working_bytes'], 1):.1f}×" if m is not None and ours.get("working_bytes") else "—"
            lines.append(
                f"| {size}² | {method} | {fmt_s(t)} | {fmt_mib(m)} | {tr} | {mr} |"
                + (f" {r['note']}" if r.get("note") else "")
            )
    if "paired" in args.methods:
        for size in args.sizes:
            lines += ["", f"{size}²:", *paired_lines(by.get(("paired", size), {}))]
    md = "\n".join(lines) + "\n"
    write_atomic(folder / "memory_speed.md", md)
    write_atomic(folder / "memory_speed.json", json.dumps(rows, indent=1))
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
