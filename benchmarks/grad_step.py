"""One training step through AnyUp: forward + backward, seconds per round, and gradient checksums.

For before/after comparisons of the autograd path on one machine (run it on both commits back to
back; the checksums show the gradients agree), and for ours against the dense reference
(``--methods ours dense``, same process). On CUDA it also reports the peak memory the step
allocated beyond its inputs::

    python benchmarks/grad_step.py --size 448 --channels 384 --rounds 3
    python benchmarks/grad_step.py --device cuda --methods ours dense
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(size: int, channels: int, rounds: int, max_memory: str, device: str = "cpu", method: str = "ours") -> dict:
    """Time ``rounds`` steps of ``method`` (``ours``: ``model(image, feats)``; ``dense``: the
    reference computation of ``benchmarks/dense_reference.py``) on 448-style inputs of ``size``."""
    import torch

    import anyup
    from benchmarks.dense_reference import dense_forward

    dev = torch.device(device)
    torch.manual_seed(0)
    model = anyup.AnyUp().eval().to(dev)
    image = torch.randn(1, 3, size, size).to(dev)
    feats = torch.randn(1, channels, size // 14, size // 14).to(dev).requires_grad_(True)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    seconds = []
    for _ in range(rounds):
        feats.grad = None
        model.zero_grad()
        t0 = time.perf_counter()
        if method == "ours":
            out = model(image, feats, max_memory=max_memory)  # (1, C, size, size)
        else:
            out = dense_forward(model, image, feats, (size, size))
        out.square().mean().backward()
        del out
        if cuda:
            torch.cuda.synchronize(dev)
        seconds.append(time.perf_counter() - t0)
    param_grad = sum(p.grad.double().abs().sum().item() for p in model.parameters() if p.grad is not None)
    return {
        "method": method,
        "seconds": seconds,
        "median": statistics.median(seconds),
        "peak_bytes": torch.cuda.max_memory_allocated(dev) - base if cuda else None,
        "features_grad_sum": feats.grad.double().sum().item(),
        "parameter_grad_abs_sum": param_grad,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-memory", default="3GiB")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", nargs="+", choices=("ours", "dense"), default=["ours"])
    args = ap.parse_args(argv)
    for method in args.methods:
        r = run(args.size, args.channels, args.rounds, args.max_memory, args.device, method)
        peak = "" if r["peak_bytes"] is None else f"; peak {r['peak_bytes'] / 2**20:,.0f} MiB allocated"
        sys.stdout.write(
            f"{method}, {args.device}, {args.size}² from {args.size // 14}²×{args.channels}, forward + backward: "
            f"seconds by round {', '.join(f'{s:.2f}' for s in r['seconds'])} (median {r['median']:.2f}){peak}; "
            f"features grad sum {r['features_grad_sum']:.10e}, parameter |grad| sum {r['parameter_grad_abs_sum']:.10e}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
