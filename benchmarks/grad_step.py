"""One training step through AnyUp: forward + backward, seconds per round, and gradient checksums.

For before/after comparisons of the autograd path on one machine (run it on both commits back to
back; the checksums show the gradients agree)::

    python benchmarks/grad_step.py --size 448 --channels 384 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def run(size: int, channels: int, rounds: int, max_memory: str) -> dict:
    import torch

    import anyup

    torch.manual_seed(0)
    model = anyup.AnyUp().eval()
    image = torch.randn(1, 3, size, size)
    feats = torch.randn(1, channels, size // 14, size // 14, requires_grad=True)
    seconds = []
    for _ in range(rounds):
        feats.grad = None
        model.zero_grad()
        t0 = time.perf_counter()
        out = model(image, feats, max_memory=max_memory)  # (1, C, size, size)
        out.square().mean().backward()
        seconds.append(time.perf_counter() - t0)
    param_grad = sum(p.grad.double().abs().sum().item() for p in model.parameters() if p.grad is not None)
    return {
        "seconds": seconds,
        "median": statistics.median(seconds),
        "features_grad_sum": feats.grad.double().sum().item(),
        "parameter_grad_abs_sum": param_grad,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-memory", default="3GiB")
    args = ap.parse_args(argv)
    r = run(args.size, args.channels, args.rounds, args.max_memory)
    sys.stdout.write(
        f"{args.size}² from {args.size // 14}²×{args.channels}, forward + backward: seconds by round "
        f"{', '.join(f'{s:.2f}' for s in r['seconds'])} (median {r['median']:.2f}); "
        f"features grad sum {r['features_grad_sum']:.10e}, parameter |grad| sum {r['parameter_grad_abs_sum']:.10e}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
