"""Streamed mode with and without the cached image encoding, in one run (same cap, same inputs).

    python benchmarks/streamed_cache.py --size 896 --cap-gb 1.5

Prints both wall times, their ratio and the max abs difference of the outputs (expected 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import anyup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=896, help="output side; features at 1/14 of it, C = 384")
    ap.add_argument("--cap-gb", type=float, default=1.5, help="max_memory in GB (must force streaming)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = anyup.AnyUp().eval()
    image = torch.randn(1, 3, args.size, args.size)
    feats = torch.randn(1, 384, args.size // 14, args.size // 14)
    cap = int(args.cap_gb * 1e9)
    plan = model._plan(image, feats, (args.size, args.size), cap, None)
    if not plan.streamed:
        raise SystemExit(f"cap {args.cap_gb} GB does not force streaming at {args.size}^2; lower --cap-gb")
    original = model._plan
    results = {}
    for cache in (False, True):
        model._plan = lambda *a, cache=cache: dataclasses.replace(original(*a), cache_encoding=cache)
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model(image, feats, max_memory=cap)
            results[cache] = (time.perf_counter() - t0, out)
    (t_off, o_off), (t_on, o_on) = results[False], results[True]
    print(f"{args.size}^2 streamed, cap {args.cap_gb} GB: without cache {t_off:.1f} s, with cache {t_on:.1f} s, "
          f"speed-up {t_off / t_on:.2f}x, max |diff| {(o_on - o_off).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
