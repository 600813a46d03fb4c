"""The GPU table: time and peak memory, ours vs dense vs bilinear, float32 / bfloat16, 448² to 4096².

Run as is on a machine with a CUDA device (each row synchronised, warm-up first, peak from
``torch.cuda.max_memory_allocated`` minus the inputs and the output):

    python benchmarks/gpu.py --sizes 448 1024 2048 4096 --channels 384 --attention auto

``--device cpu`` runs the same code on the CPU (no peak memory; small sizes) so that the script
itself is tested where there is no GPU (``tests/test_benchmarks.py``); its times mean nothing.
``tools/gpu_check.sh`` runs it with the CUDA tests in one call on a lent GPU machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import fmt_mib, fmt_s, out_dir, write_atomic  # noqa: E402


def bench(fn, device, reps: int = 3) -> tuple[float, int | None]:
    """Mean seconds of ``fn()`` over ``reps`` after one warm-up, and the CUDA peak memory above
    what was allocated before (None on the CPU)."""
    import torch

    cuda = device.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
        del out
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / reps
    return seconds, (torch.cuda.max_memory_allocated() - base) if cuda else None


def main() -> None:
    import torch
    import torch.nn.functional as F

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[448, 1024, 2048, 4096])
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the script")
    ap.add_argument("--tf32", action="store_true", help="let cuDNN/cuBLAS use TF32 for float32 (default: off)")
    args = ap.parse_args()
    # float32 means IEEE float32 unless --tf32: PyTorch lets cuDNN convolutions use TF32 by default
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device (none found; --device cpu for a dry run)")
    import anyup
    from benchmarks.dense_reference import dense_forward

    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = anyup.AnyUp().to(dev).eval().requires_grad_(False)
    folder = out_dir(args.out, "gpu")
    rows, lines = (
        [],
        [
            f"{torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU (dry run)'}, torch {torch.__version__}, attention={args.attention}, "
            f"TF32 {'on' if args.tf32 else 'off'}; "
            f"`python benchmarks/gpu.py {' '.join(sys.argv[1:])}`. Peak = max allocated minus inputs (output included).",
            "",
            "| output | dtype | bilinear ms | ours ms | dense ms | ours peak MiB | dense peak MiB | dense/ours time "
            "| max abs diff vs float32 dense |",
            "|---|---|---|---|---|---|---|---|---|",
        ],
    )
    for size in args.sizes:
        for name in args.dtypes:
            dtype = getattr(torch, name)
            low = size // 14
            img = torch.randn(1, 3, size, size, device=dev, dtype=dtype)
            fts = torch.randn(1, args.channels, low, low, device=dev, dtype=dtype)
            with torch.no_grad():
                tb, _ = bench(lambda fts=fts, size=size: F.interpolate(fts, size=(size, size), mode="bilinear"), dev)
                to, mo = bench(lambda img=img, fts=fts: model(img, fts, attention=args.attention), dev)
                td = md = err = None
                try:
                    td, md = bench(lambda img=img, fts=fts: dense_forward(model, img, fts), dev, reps=1)
                    ref = dense_forward(model, img.float(), fts.float())  # the float32 reference
                    diff = model(img, fts, attention=args.attention).float() - ref
                    err = float(diff.abs().max())  # ours (this dtype) vs the float32 reference
                    del diff, ref
                except torch.OutOfMemoryError:  # the dense reference does not fit (its time is kept if it ran)
                    if dev.type == "cuda":
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
                    "max_abs_diff_vs_float32_dense": err,
                }
            )
            ratio = f"{td / to:.1f}×" if td else "out of memory"
            lines.append(
                f"| {size}² | {name} | {tb * 1e3:.1f} | {to * 1e3:.1f} | {fmt_s(td and td * 1e3)} | "
                f"{fmt_mib(mo)} | {fmt_mib(md)} | {ratio} | {'—' if err is None else f'{err:.1e}'} |"
            )
            sys.stderr.write(lines[-1] + "\n")
            # written after every row: a run cut short by its time limit keeps the rows it finished
            write_atomic(folder / "gpu.md", "\n".join(lines) + "\n")
            write_atomic(folder / "gpu.json", json.dumps(rows, indent=1))
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
