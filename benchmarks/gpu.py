"""The GPU table: time and peak memory, ours vs dense vs bilinear, float32 / bfloat16, 448² to 4096².

Run as is on a machine with a CUDA device (each row synchronised, warm-up first, peak from
``torch.cuda.max_memory_allocated`` minus the inputs and the output):

    python benchmarks/gpu.py --sizes 448 1024 2048 4096 --channels 384 --attention auto
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import fmt_mib, fmt_s, out_dir, write_atomic  # noqa: E402


def bench(fn, reps: int = 3) -> tuple[float, int]:
    import torch

    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
        del out
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps, torch.cuda.max_memory_allocated() - base


def main() -> None:
    import torch
    import torch.nn.functional as F

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[448, 1024, 2048, 4096])
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device (none found)")
    import anyup
    from benchmarks.dense_reference import dense_forward

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = anyup.AnyUp().to(dev).eval().requires_grad_(False)
    folder = out_dir(args.out, "gpu")
    rows, lines = (
        [],
        [
            f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, attention={args.attention}; "
            f"`python benchmarks/gpu.py {' '.join(sys.argv[1:])}`. Peak = max allocated minus inputs (output included).",
            "",
            "| output | dtype | bilinear ms | ours ms | dense ms | ours peak MiB | dense peak MiB | dense/ours time |",
            "|---|---|---|---|---|---|---|---|",
        ],
    )
    for size in args.sizes:
        for name in args.dtypes:
            dtype = getattr(torch, name)
            low = size // 14
            img = torch.randn(1, 3, size, size, device=dev, dtype=dtype)
            fts = torch.randn(1, args.channels, low, low, device=dev, dtype=dtype)
            with torch.no_grad():
                tb, _ = bench(lambda fts=fts, size=size: F.interpolate(fts, size=(size, size), mode="bilinear"))
                to, mo = bench(lambda img=img, fts=fts: model(img, fts, attention=args.attention))
                try:
                    td, md = bench(lambda img=img, fts=fts: dense_forward(model, img, fts), reps=1)
                except torch.OutOfMemoryError:
                    td = md = None
                    torch.cuda.empty_cache()
            rows.append(
                {
                    "size": size,
                    "dtype": name,
                    "bilinear": tb,
                    "ours": to,
                    "dense": td,
                    "ours_peak": mo,
                    "dense_peak": md,
                }
            )
            ratio = f"{td / to:.1f}×" if td else "out of memory"
            lines.append(
                f"| {size}² | {name} | {tb * 1e3:.1f} | {to * 1e3:.1f} | {fmt_s(td and td * 1e3)} | "
                f"{fmt_mib(mo)} | {fmt_mib(md)} | {ratio} |"
            )
            sys.stderr.write(lines[-1] + "\n")
    md_text = "\n".join(lines) + "\n"
    write_atomic(folder / "gpu.md", md_text)
    write_atomic(folder / "gpu.json", json.dumps(rows, indent=1))
    sys.stdout.write(md_text)


if __name__ == "__main__":
    main()
