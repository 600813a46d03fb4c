"""Where the time of one call goes: the engine's stages, each against its own GEMM floor.

One process, float32, no autograd, the output allocated as ``model(image, feats)`` does (its
memory holds encoder maps until the decode, ``Plan.out_slots``). Each round times, in this order:

* ``encoders``: the per-pixel encoders and their GroupNorm statistics (``PixelEncoders.gather_statistics``);
* ``keys``: the key branch pooled to the feature grid, the feature unification, the aggregation;
* ``decode``: query bands, projections and the windowed attention, tile by tile into the output;
* the GEMM rate: 2048² square GEMMs (``memory_speed.floor_timer``), measured in the same round.

A stage's *floor* is its multiply-adds (``memory_speed.stage_flops``) at that round's GEMM rate;
the report gives each stage's median seconds, its median ratio to its floor, and its share of
the call. Rounds follow one untimed full-size call. The stages are the engine's own functions
(``anyup.engine.run.pixel_encoders``, ``low_res_keys``, ``decode``: what :func:`~anyup.engine.run.encode`
and :meth:`anyup.AnyUp.forward` run), so the sum is one call's time without the final dtype cast.

    python benchmarks/stages.py --size 448 --channels 384 --rounds 5
    python benchmarks/stages.py --size 2048 --channels 128 --patch 16 --max-memory 2GiB --rounds 1
    python benchmarks/stages.py --size 448 --channels 384 --rounds 7 --workers 1 2   # A/B in one process
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import out_dir, write_atomic  # noqa: E402
from benchmarks.memory_speed import PATCH, cpu_times, floor_timer, stage_flops  # noqa: E402

STAGES = ("encoders", "keys", "decode")


def one_call(model, image, feats, options) -> tuple[dict[str, float], str]:
    """Seconds per stage of one no-grad call, and the plan's mode."""
    import torch

    from anyup.engine.run import decode, low_res_keys, pixel_encoders, plan_for, resolve, workspace_slots

    b, c = feats.shape[:2]
    out_hw = tuple(image.shape[-2:])
    with torch.no_grad():
        t0 = time.perf_counter()
        out = torch.empty(b, c, *out_hw)
        plan = plan_for(model, image, feats, out_hw, options, False, workspace_slots(model, image, feats, out))
        enc = pixel_encoders(model, image, feats, plan, options, out if plan.out_slots else None)
        t1 = time.perf_counter()
        keys = low_res_keys(model, enc.image_keys(feats.shape[-2:]), feats, plan)  # (B, D, h, w)
        t2 = time.perf_counter()
        for tile in decode(model, enc, keys, feats, out_hw, plan, resolve(options.attention, feats.device)):
            out[:, :, tile.y0 : tile.y1, tile.x0 : tile.x1] = tile.data
        t3 = time.perf_counter()
    return {"encoders": t1 - t0, "keys": t2 - t1, "decode": t3 - t2}, plan.mode


def _summary(seconds: dict[str, list[float]], rates: list[float], flops: dict[str, float]) -> dict:
    rounds = len(rates)
    total_flops = sum(flops.values())
    total = [sum(seconds[k][r] for k in STAGES) for r in range(rounds)]
    stages = {}
    for k in STAGES:
        ratio = [s * rate / flops[k] for s, rate in zip(seconds[k], rates, strict=True)]
        stages[k] = {
            "gflop": flops[k] / 1e9,
            "seconds": seconds[k],
            "seconds_median": statistics.median(seconds[k]),
            "floor_seconds_median": statistics.median(flops[k] / r for r in rates),
            "vs_floor": ratio,
            "vs_floor_median": statistics.median(ratio),
            "share_median": statistics.median(s / t for s, t in zip(seconds[k], total, strict=True)),
        }
    call_ratio = [t * rate / total_flops for t, rate in zip(total, rates, strict=True)]
    return {"stages": stages, "call_seconds": total, "call_vs_floor_median": statistics.median(call_ratio)}


def run(
    size: int,
    channels: int,
    rounds: int,
    patch: int = PATCH,
    max_memory: str | None = None,
    workers: list[int | None] | None = None,
) -> dict:
    """Time the stages; with several ``workers`` settings (``cpu_workers``, None = automatic) each
    round times one call per setting, in rotated order, and the report compares them round by round."""
    import torch

    import anyup
    from anyup.engine import EngineOptions

    settings = workers or [None]
    low = size // patch
    torch.manual_seed(0)
    model = anyup.AnyUp().eval()
    image, feats = torch.randn(1, 3, size, size), torch.randn(1, channels, low, low)
    options = {w: EngineOptions(max_memory=max_memory, cpu_workers=w) for w in settings}
    flops = stage_flops(size, low, channels)
    gemm_once, total_flops = floor_timer(size, low, channels)
    for w in settings:
        one_call(model, image, feats, options[w])  # untimed: first-call allocations
    steal0, all0 = cpu_times()
    seconds: dict[int | None, dict[str, list[float]]] = {w: {k: [] for k in STAGES} for w in settings}
    rates: list[float] = []
    mode = ""
    used: dict[int | None, int] = {}
    for r in range(rounds):
        for i in range(len(settings)):
            w = settings[(r + i) % len(settings)]
            t, mode = one_call(model, image, feats, options[w])
            for k in STAGES:
                seconds[w][k].append(t[k])
        rates.append(total_flops / gemm_once())  # FLOP/s of large GEMMs, this round
    steal1, all1 = cpu_times()
    from anyup.engine import plan_for

    for w in settings:
        used[w] = plan_for(model, image, feats, (size, size), options[w]).workers
    first = _summary(seconds[settings[0]], rates, flops)
    result = {
        "size": size,
        "channels": channels,
        "torch": torch.__version__,
        "patch": patch,
        "max_memory": max_memory,
        "mode": mode,
        "rounds": rounds,
        "gemm_gflops": [r / 1e9 for r in rates],
        "workers": used[settings[0]],
        **first,
        "steal_share": (steal1 - steal0) / max(all1 - all0, 1),
    }
    if len(settings) > 1:
        base = seconds[settings[0]]
        subs = {w: first if w == settings[0] else _summary(seconds[w], rates, flops) for w in settings}
        result["by_workers"] = {str(used[w]): subs[w] for w in settings}

        def ratio(a: list[float], b: list[float]) -> float:  # median of the per-round ratios
            return statistics.median(x / y for x, y in zip(a, b, strict=True))

        result["speedup_vs_first"] = {
            str(used[w]): {
                **{k: ratio(base[k], seconds[w][k]) for k in STAGES},
                "call": ratio(first["call_seconds"], subs[w]["call_seconds"]),
            }
            for w in settings[1:]
        }
    return result


def _table(r: dict) -> list[str]:
    lines = [
        "| stage | GFLOP | floor s | seconds (median) | × its floor (median) | share of the call |",
        "|---|---|---|---|---|---|",
    ]
    for k, s in r["stages"].items():
        lines.append(
            f"| {k} | {s['gflop']:.1f} | {s['floor_seconds_median']:.2f} | {s['seconds_median']:.2f} | "
            f"{s['vs_floor_median']:.2f}× | {100 * s['share_median']:.0f} % |"
        )
    lines.append(
        f"| whole call | {sum(s['gflop'] for s in r['stages'].values()):.1f} | | "
        f"{statistics.median(r['call_seconds']):.2f} | {r['call_vs_floor_median']:.2f}× | |"
    )
    return lines


def report(r: dict, command: str) -> str:
    lines = [
        f"{r['size']}² from {r['size'] // r['patch']}²×{r['channels']}, float32, plan mode `{r['mode']}`; "
        f"{platform.machine()}, torch {r['torch']}; {r['rounds']} rounds of `{command}`. "
        f"Large-GEMM rate by round: {', '.join(f'{g:.0f}' for g in r['gemm_gflops'])} GFLOP/s; "
        f"CPU steal {100 * r['steal_share']:.1f} %.",
        "",
    ]
    if "by_workers" not in r:
        lines += [f"Worker threads: {r['workers']}.", "", *_table(r)]
        return "\n".join(lines) + "\n"
    for w, sub in r["by_workers"].items():
        lines += [f"**{w} worker thread{'s' if w != '1' else ''}**", "", *_table(sub), ""]
    first = next(iter(r["by_workers"]))
    lines += [
        f"Speed-up over {first} worker{'s' if first != '1' else ''} (median of the per-round ratios):",
        "",
        "| workers | encoders | keys | decode | whole call |",
        "|---|---|---|---|---|",
    ]
    for w, sp in r["speedup_vs_first"].items():
        lines.append(f"| {w} | {sp['encoders']:.2f}× | {sp['keys']:.2f}× | {sp['decode']:.2f}× | {sp['call']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=448, help="image and output side (pixels)")
    ap.add_argument("--channels", type=int, default=384, help="feature channels C")
    ap.add_argument("--patch", type=int, default=PATCH, help="features at size // patch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-memory", default=None, help="the engine's cap (e.g. 2GiB); default automatic")
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="cpu_workers settings to compare in one process (default: the automatic one)",
    )
    ap.add_argument("--out", default=None, help="results folder (default: a new one under benchmarks/results/)")
    args = ap.parse_args(argv)
    if args.workers and min(args.workers) < 1:
        ap.error(f"--workers must be positive ints, got {args.workers}")
    if args.rounds < 1 or args.size < args.patch:
        ap.error(f"need --rounds >= 1 and --size >= --patch; got {args.rounds}, {args.size}, {args.patch}")
    r = run(args.size, args.channels, args.rounds, args.patch, args.max_memory, args.workers)
    out = out_dir(args.out, "stages")
    command = "python benchmarks/stages.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_atomic(out / "stages.json", json.dumps(r, indent=1))
    text = report(r, command.strip())
    write_atomic(out / "stages.md", text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
