"""Attention time per query against the attention tile's side, on the real window of one geometry.

Runs the chosen backend on the tiles of a band of output rows through the middle of the image (the
real :class:`~anyup.engine.window.Window`, its masks and key rectangles), for each tile side, and
reports microseconds per query and the ratio to the side the plan picks (``plan.attention_side``).
This is what sets ``anyup.engine.plan.CPU_LOGITS_BYTES``.

python benchmarks/attention_tiles.py --size 2048 --low 128 --sides 51 40 32 25 20 16 12
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import out_dir, write_atomic  # noqa: E402


def main() -> None:
    import torch

    import anyup
    from anyup.engine import BACKENDS, EngineOptions, plan_for
    from anyup.engine.window import Window

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=2048, help="output side (= image side)")
    ap.add_argument("--low", type=int, default=128, help="feature grid side")
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--sides", type=int, nargs="+", default=[51, 40, 32, 25, 20, 16, 12])
    ap.add_argument("--backend", default="matmul", choices=sorted(BACKENDS))
    ap.add_argument("--max-memory", default="2GiB", help="cap of the plan whose choice is reported")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timings per side")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    size, low, c = args.size, args.low, args.channels
    model = anyup.AnyUp().eval()
    image, feats = torch.empty(1, 3, size, size), torch.empty(1, c, low, low)
    plan = plan_for(model, image, feats, (size, size), EngineOptions(max_memory=args.max_memory))
    sides = sorted({*args.sides, plan.attention_side}, reverse=True)
    cfg = model.config
    window = Window.build((size, size), (low, low), cfg.window_ratio, image.device, cfg.window_edge, torch.float32)
    nh, hd = cfg.num_heads, cfg.dim // cfg.num_heads
    kh = torch.randn(1, nh, low, low, hd) * 0.3  # (B, nh, h, w, hd)
    values = torch.randn(1, low, low, c)  # (B, h, w, C)
    attend = BACKENDS[args.backend].attend
    rows: dict[int, tuple[float, float, float]] = {}
    with torch.no_grad():
        for s in sides:
            # the same 2*max(sides) output rows through the middle for every side (whole tiles of each)
            span = 2 * math.ceil(max(sides) / s) * s
            top = max(0, size // 2 - span // 2)
            tiles = []
            for i0 in range(top, min(size, top + span), s):
                for j0 in range(0, size, s):
                    i1, j1 = min(size, i0 + s), min(size, j0 + s)
                    ra, rb, ca, cb = window.reach(i0, i1, j0, j1)
                    q = torch.randn(1, nh, (i1 - i0) * (j1 - j0), hd) * 0.3
                    k = kh[:, :, ra:rb, ca:cb].reshape(1, nh, -1, hd)
                    v = values[:, ra:rb, ca:cb].reshape(1, -1, c)
                    tiles.append((q, k, v, (i0, i1, j0, j1)))
            nq = sum(t[0].shape[2] for t in tiles)
            keys = sum(t[0].shape[2] * t[1].shape[2] for t in tiles) / nq
            best = math.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for q, k, v, box in tiles:
                    attend(q, k, v, window.mask(*box))
                best = min(best, time.perf_counter() - t0)
            logits_mib = nh * s * s * window_keys(window, s, size) * 4 / 2**20
            rows[s] = (best / nq * 1e6, keys, logits_mib)
    chosen = rows[plan.attention_side][0]
    lines = [
        f"{size}² output from {low}²×{c}, backend {args.backend}, CPU ({torch.get_num_threads()} threads), "
        f"best of {args.repeats}; the plan at {args.max_memory} uses decode tiles of {plan.tile} and attention "
        f"tiles of {plan.attention_side}. `python benchmarks/attention_tiles.py {' '.join(sys.argv[1:])}`",
        "",
        "| attention tile side | logits per tile (MiB) | keys per query | µs per query | vs plan's side |",
        "|---|---|---|---|---|",
    ]
    for s, (us, keys, mib) in rows.items():
        mark = " (plan)" if s == plan.attention_side else ""
        lines.append(f"| {s}{mark} | {mib:.1f} | {keys:.0f} | {us:.2f} | {us / chosen:.2f}× |")
    md = "\n".join(lines) + "\n"
    write_atomic(out_dir(args.out, "attention_tiles") / "attention_tiles.md", md)
    sys.stdout.write(md)


def window_keys(window, s: int, size: int) -> int:
    """Keys a tile of side ``s`` in the middle of the image reaches."""
    i0 = size // 2
    ra, rb, ca, cb = window.reach(i0, min(size, i0 + s), i0, min(size, i0 + s))
    return (rb - ra) * (cb - ca)


if __name__ == "__main__":
    main()
