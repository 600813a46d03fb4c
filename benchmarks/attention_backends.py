"""Attention backends side by side on the tiles of one call: time per backend and max error vs matmul.

python benchmarks/attention_backends.py --size 448 --channels 384 --backends matmul sdpa
python benchmarks/attention_backends.py --device cuda --size 1024 --backends matmul sdpa flex triton

Each backend is timed on its second full-size call (the first compiles what ``flex`` and
``triton`` compile, and warms the rest); on CUDA with the device synchronised.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import out_dir, write_atomic  # noqa: E402


def main() -> None:
    import torch

    import anyup
    from anyup.engine import BACKENDS

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--backends", nargs="+", default=["matmul", "sdpa"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = anyup.AnyUp().eval().requires_grad_(False).to(dev)
    image = torch.randn(1, 3, args.size, args.size, device=dev)
    feats = torch.randn(1, args.channels, args.size // 14, args.size // 14, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    outs, times, skipped = {}, {}, []
    with torch.no_grad():
        for name in args.backends:
            if not BACKENDS[name].available(image.device):
                skipped.append(name)
                continue
            model(image, feats, attention=name)
            sync()
            t0 = time.perf_counter()
            outs[name] = model(image, feats, attention=name)
            sync()
            times[name] = time.perf_counter() - t0
    ref = outs["matmul"]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    lines = [
        f"{args.size}² from {args.size // 14}²×{args.channels}, {where}, whole call per backend, one run; "
        f"`python benchmarks/attention_backends.py {' '.join(sys.argv[1:])}`",
        "",
        "| backend | seconds (whole call) | max abs diff vs matmul |",
        "|---|---|---|",
    ]
    for name, out in outs.items():
        lines.append(f"| {name} | {times[name]:.2f} | {(out - ref).abs().max().item():.1e} |")
    if skipped:
        lines += ["", f"Not available on {dev}: {', '.join(skipped)}."]
    md = "\n".join(lines) + "\n"
    write_atomic(out_dir(args.out, "attention_backends") / "attention_backends.md", md)
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
