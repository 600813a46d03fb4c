"""Is the cap a promise? Peak working memory vs ``max_memory`` for every cap, forward and backward.

For each cap the engine either runs with peak working memory (RSS growth minus the output)
within 1.15x of the cap, or refuses at once with an error naming the minimum it needs.

    python benchmarks/memory_cap.py --size 448 --channels 384 --caps 64MiB 128MiB 256MiB 512MiB 1GiB 2GiB
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import fmt_mib, measure, out_dir, run_worker, write_atomic  # noqa: E402


def worker(direction: str, size: int, channels: int, cap: str, workers: int | None = None) -> dict:
    """``direction``: forward (the output allocated by forward, whose memory may hold encoder maps),
    forward-out (into a tensor of the caller's: no such slots), or backward."""
    import torch

    import anyup
    from anyup.engine import EngineOptions, parse_memory, plan_for

    torch.manual_seed(0)
    model = anyup.AnyUp().eval()
    image, feats = torch.randn(1, 3, size, size), torch.randn(1, channels, size // 14, size // 14)
    grad = direction == "backward"
    own_out = direction == "forward-out"
    slots = 0 if grad or own_out else channels // model.config.dim
    if not grad:
        model.requires_grad_(False)
    try:
        with torch.set_grad_enabled(grad):
            plan = plan_for(
                model,
                image.requires_grad_(grad),
                feats,
                (size, size),
                EngineOptions(max_memory=cap, cpu_workers=workers),
                autograd=grad,
                out_slots=slots,
            )
    except ValueError as err:
        t0 = time.perf_counter()
        try:
            with torch.set_grad_enabled(grad):
                model(image, feats, max_memory=cap, cpu_workers=workers)
            refused = "ran anyway"
        except ValueError as e:
            refused = str(e)
        return {"refused": refused, "plan_error": str(err), "seconds": time.perf_counter() - t0}
    out_bytes = channels * size * size * 4
    out_tensor = torch.zeros(1, channels, size, size) if own_out else None  # touched before the measurement

    def call():
        if grad:
            img = image.detach().clone().requires_grad_(True)
            model(img, feats, max_memory=cap, cpu_workers=workers).square().mean().backward()
            return img.grad
        with torch.no_grad():
            if own_out:
                return model(image, feats, max_memory=cap, out=out_tensor, cpu_workers=workers)
            return model(image, feats, max_memory=cap, cpu_workers=workers)

    r = measure(call, 0 if grad or own_out else out_bytes)
    if grad:  # the output of forward is part of backward's working set only through autograd: subtract it too
        r["working_bytes"] = max(0, r["working_bytes"] - out_bytes)
    return {**r, "mode": plan.mode, "workers": plan.workers, "estimate": plan.estimate, "cap_bytes": parse_memory(cap)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--caps", nargs="+", default=["64MiB", "128MiB", "256MiB", "512MiB", "1GiB", "2GiB"])
    ap.add_argument(
        "--directions", nargs="+", default=["forward", "backward"], choices=["forward", "forward-out", "backward"]
    )
    ap.add_argument("--workers", type=int, default=None, help="cpu_workers (default: automatic)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.size, args.channels, args.worker[1], args.workers)))
        return
    folder = out_dir(args.out, "memory_cap")
    rows = []
    lines = [
        f"{args.size}² output from {args.size // 14}²×{args.channels} features, float32, one run of "
        f"`python benchmarks/memory_cap.py {' '.join(sys.argv[1:])}`.",
        "",
        "| direction | cap | plan | workers | model estimate MiB | peak working MiB | peak / cap | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for direction in args.directions:
        for cap in args.caps:
            extra = [] if args.workers is None else ["--workers", str(args.workers)]
            r = run_worker(
                Path(__file__), [direction, cap, "--size", str(args.size), "--channels", str(args.channels), *extra]
            )
            rows.append({"direction": direction, "cap": cap, **r})
            sys.stderr.write(f"{direction} {cap}: {r}\n")
            if "refused" in r:
                msg = r["refused"]
                lines.append(f"| {direction} | {cap} | refused in {r['seconds']:.2f} s | — | — | — | — | {msg[:140]} |")
            elif "note" in r:
                lines.append(f"| {direction} | {cap} | {r['note']} | | | | | |")
            else:
                ratio = r["working_bytes"] / r["cap_bytes"]
                lines.append(
                    f"| {direction} | {cap} | {r['mode']} | {r['workers']} | {fmt_mib(r['estimate'])} | "
                    f"{fmt_mib(r['working_bytes'])} | "
                    f"{ratio:.2f} | {r['seconds']:.1f} |"
                )
    md = "\n".join(lines) + "\n"
    write_atomic(folder / "memory_cap.md", md)
    write_atomic(folder / "memory_cap.json", json.dumps(rows, indent=1))
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
