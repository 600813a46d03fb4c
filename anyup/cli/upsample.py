"""Sub-commands: ``anyup upsample``, ``anyup upsample-signal``, ``anyup sample-image``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from anyup.cli._flags import add_command, add_device, add_encoder, add_list, add_model, build_upsampler
from anyup.engine.attention import ATTENTION_CHOICES
from anyup.weights import DEFAULT_WEIGHTS

logger = logging.getLogger(__name__)

TITLE = "Upsample"
# scikit-image's sample photos (``cat`` is left out: it is the same picture as ``chelsea``).
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "camera")
CHEAP_STATS_PIXELS = 1 << 20  # outputs up to ~1 megapixel get the edge statistic without --stats
ESTIMATE_MIN_PIXELS = 2 << 20  # outputs from ~2 megapixels get a time/memory estimate first
ASPECT_TOLERANCE = 0.02  # relative aspect-ratio change that --size may make without a warning


UPSAMPLE_HELP = "upsample an encoder's features of images (files or folders) with AnyUp"
UPSAMPLE_DESCRIPTION = """For each image: encoder features, AnyUp upsampling, and DIR/<stem>.safetensors
(tensors 'features' (C,H,W) and 'lowres' (C,h,w) + metadata), written first, then DIR/<stem>_pca.png
(image | low-res | bilinear | AnyUp in one shared PCA colour basis, drawn at most 1024 px per panel).
The output size is the encoder input size (short side --input-size, default 448) unless --size/--scale
say otherwise; --size image keeps the image's own resolution."""
SIGNAL_HELP = "upsample a mask, logits or depth map guided by an image"
SIGNAL_DESCRIPTION = """Upsample a low-res signal to the image size (or --size) with AnyUp, guided by the image.
SIGNAL: .npy, .safetensors (tensor 'signal' or the only one), or a single-channel image for masks/depth.
OUT: .npy, .safetensors or .png (masks and logits: a palette PNG whose pixel values are the labels,
coloured so a viewer shows them)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "upsample", UPSAMPLE_HELP, UPSAMPLE_DESCRIPTION)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    add_encoder(p)
    add_model(p, DEFAULT_WEIGHTS)
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--size",
        default=None,
        metavar="HxW",
        help="output size: HxW, N (square) or 'image' (the image's resolution); default: the encoder input size",
    )
    size.add_argument("--scale", type=float, default=None, metavar="S", help="output size = S x encoder input size")
    add_list(p, "--layer", "encoder layer(s)")
    p.add_argument("--input-size", type=int, default=448, metavar="N", help="short side of the encoder input")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per batch (same-size images batch)")
    add_device(p)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZE",
        help="AnyUp's working-memory cap: bytes or a size such as 2GiB (default: a quarter of total memory, "
        "256 MiB to 8 GiB); the features themselves come on top",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="fuse AnyUp's per-pixel element-wise work with torch.compile (first call compiles; needs a C++ compiler)",
    )
    p.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        default=None,
        help="AnyUp's attention backend (same result from each, within 1e-5): auto picks triton on CUDA "
        "when installed, else matmul; default: auto",
    )
    p.add_argument(
        "--cpu-workers",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for AnyUp's per-pixel encoders, one core each (default: torch's thread count; "
        "changes speed; results agree to float32 rounding)",
    )
    p.add_argument(
        "--window-edge",
        choices=("hard", "soft"),
        default=None,
        help="AnyUp's attention-window edge: hard (the published method) or soft (cells fade in by coverage, "
        "no grid-locked steps); default: as stored with the weights",
    )
    p.add_argument("--no-png", action="store_true", help="skip the PCA picture")
    p.add_argument(
        "--stats",
        action="store_true",
        help="print how well AnyUp's and bilinear's feature edges follow the image edges "
        "(always computed, and stored in the metadata, for outputs up to ~1 megapixel)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--overwrite", action="store_true", help="recompute images whose outputs already exist (default: skip them)"
    )
    p.set_defaults(func=_cmd_upsample)

    p = add_command(subparsers, "upsample-signal", SIGNAL_HELP, SIGNAL_DESCRIPTION)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("signal", metavar="SIGNAL")
    p.add_argument("--kind", required=True, choices=("mask", "logits", "depth"))
    add_model(p, DEFAULT_WEIGHTS)
    p.add_argument("--size", default=None, metavar="HxW", help="output size (default: the image size)")
    add_device(p)
    p.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(func=_cmd_upsample_signal)

    p = add_command(
        subparsers,
        "sample-image",
        "write a sample photo (from scikit-image) to try the other commands on",
        f"Write one of scikit-image's sample photos ({', '.join(SAMPLE_IMAGES)}) as PNG.",
    )
    p.add_argument("name", choices=SAMPLE_IMAGES)
    p.add_argument("out", metavar="OUT.png")
    p.set_defaults(func=_cmd_sample_image)


# --------------------------------------------------------------------------------------------
# Parsing helpers
def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"480x640"`` -> (480, 640); ``"512"`` -> (512, 512)."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise ValueError(f"size must look like HxW (e.g. 480x640) or N, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"size must look like HxW with positive integers, got {text!r}")
    return values[0], values[1]


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names per image: the file stem, prefixed by parent folders only where stems collide."""
    stems = [p.stem for p in paths]
    seen: dict[str, int] = {}
    out = []
    for p, stem in zip(paths, stems):
        name = stem
        if stems.count(stem) > 1:
            name = f"{p.parent.name}_{stem}" if p.parent.name else stem
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append(name if k == 0 else f"{name}_{k}")
    return out


# --------------------------------------------------------------------------------------------
# Handlers
def _cmd_upsample(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from anyup._atomic import ensure_writable_dir
    from anyup.image import image_size, list_images
    from anyup.predictor import output_size_for, pending_jobs, save_result
    from anyup.viz import pca_comparison, save_png

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths = list_images(args.inputs)
    if not paths:
        raise FileNotFoundError(f"no image files found in {args.inputs}")
    keep_size = args.size is not None and args.size.strip().lower() == "image"
    size = None if keep_size else parse_size(args.size)
    up = build_upsampler(
        args,
        dtype=args.dtype,
        max_memory=args.max_memory,
        progress=True,
        compile=args.compile,
        window_edge=args.window_edge,
        attention=args.attention,
        cpu_workers=args.cpu_workers,
    )
    out_dir = ensure_writable_dir(args.out)  # before any work; removes temp files of killed runs
    jobs = list(zip(paths, unique_stems(paths)))
    skipped = 0
    if not args.overwrite:  # outputs are written atomically: an existing, readable one is complete
        todo = pending_jobs(up, jobs, out_dir, pictures=not args.no_png)
        skipped, jobs = len(jobs) - len(todo), todo
    failed: list[tuple[Path, str]] = []
    estimated: set[tuple[int, int]] = set()
    stats: list[tuple[str, str, float, float]] = []

    def fail(path: Path, err: Exception) -> None:
        failed.append((path, f"{err.__class__.__name__}: {err}"))
        logger.error("failed on %s: %s: %s", path, err.__class__.__name__, err)

    def requested(image) -> tuple[int, int] | None:
        return tuple(image.shape[-2:]) if keep_size else size

    def announce(path: Path, image) -> None:
        """Warn about aspect-ratio changes and enlargements; estimate time and memory of large outputs."""
        h0, w0 = image.shape[-2:]
        enc_in = up.prepare(image)[1]  # (3, H, W)
        in_hw = (int(enc_in.shape[-2]), int(enc_in.shape[-1]))
        out_hw = output_size_for(in_hw, requested(image), args.scale)
        if size is not None and abs((out_hw[1] / out_hw[0]) / (w0 / h0) - 1) > ASPECT_TOLERANCE:
            logger.warning(
                "%s: --size %dx%d changes the aspect ratio of the %dx%d image (it is stretched to fit); "
                "--size image keeps the image's resolution",
                path.name, *out_hw, h0, w0,
            )  # fmt: skip
        if size is None and not keep_size and args.scale is None and out_hw[0] > h0 and out_hw[1] > w0:
            logger.warning(
                "%s: the output %dx%d (the encoder input size, short side --input-size %d) is larger than "
                "the %dx%d image; --size image keeps the image's resolution",
                path.name, *out_hw, args.input_size, h0, w0,
            )  # fmt: skip
        if out_hw[0] * out_hw[1] >= ESTIMATE_MIN_PIXELS and out_hw not in estimated:
            estimated.add(out_hw)
            est = up.estimate(image, requested(image), args.scale)
            sys.stderr.write(f"anyup upsample: {path.name}: {est.describe()}\n")

    def write(path: Path, stem: str, results) -> None:
        h0, w0 = image_size(path)  # the file's own size (a very large one was decoded reduced)
        extra = {"image": str(path), "original_size": f"{h0}x{w0}"}
        cheap = all(r.output_size[0] * r.output_size[1] <= CHEAP_STATS_PIXELS for r in results)
        rows = _edge_stats(stem, results) if cheap else []
        for _, layer, ours, bil in rows:
            suffix = "" if len(results) == 1 else f".{layer}"
            extra[f"edge_alignment_anyup{suffix}"] = f"{ours:.4f}"
            extra[f"edge_alignment_bilinear{suffix}"] = f"{bil:.4f}"
        save_result(results, out_dir / f"{stem}.safetensors", extra=extra)  # the result first, then extras
        if args.stats and not cheap:
            rows = _edge_stats(stem, results)  # bounded memory (row bands), after the file is safe
        stats.extend(rows)
        if not args.no_png:
            for r in results:
                suffix = "_pca" if len(results) == 1 else f"_{r.layer}_pca"
                save_png(pca_comparison(r.image, r.lowres, r.features), out_dir / f"{stem}{suffix}.png")

    with tqdm(total=len(jobs), unit="img", desc="upsample", disable=None) as bar:
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start : start + args.batch_size]
            loaded = []
            for path, stem in chunk:
                try:
                    want = image_size(path) if keep_size else size  # from the header only
                    image = up.load(path, output_size=want, scale=args.scale)  # a huge file decoded reduced
                    announce(path, image)
                    loaded.append((path, stem, image))
                except Exception as err:  # noqa: BLE001 - a broken file must not stop the folder
                    fail(path, err)
            results = None
            if len(loaded) > 1 and not keep_size:
                try:
                    results = up.predict_batch([t for _, _, t in loaded], output_size=size, scale=args.scale)
                except Exception as err:  # noqa: BLE001 - retried one by one below, so only the culprit fails
                    logger.warning("batch failed (%s); retrying its images one by one", err)
            for i, (path, stem, image) in enumerate(loaded):
                try:
                    if results is not None:
                        res = results[i]
                    else:
                        res = up.predict(image, output_size=requested(image), scale=args.scale)
                    write(path, stem, res)
                except Exception as err:  # noqa: BLE001 - reported, counted, and the folder goes on
                    fail(path, err)
            bar.update(len(chunk))
    done = len(jobs) - len(failed) + skipped
    if args.stats and stats:
        sys.stdout.write("| image | layer | edge alignment AnyUp | edge alignment bilinear |\n|---|---|---|---|\n")
        for stem, layer, ours, bil in stats:
            sys.stdout.write(f"| {stem} | {layer} | {ours:.3f} | {bil:.3f} |\n")
    sys.stdout.write(
        f"wrote {done - skipped} of {len(jobs) + skipped} images to {out_dir}"
        + (f" ({skipped} already there)" if skipped else "")
        + "\n"
    )
    if failed:
        sys.stderr.write(f"{len(failed)} image(s) failed:\n")
        for path, msg in failed:
            sys.stderr.write(f"  {path}: {msg}\n")
        return 1
    return 0


def _edge_stats(stem: str, results) -> list[tuple[str, str, float, float]]:
    """(stem, layer, AnyUp's edge alignment, bilinear's) per layer, streamed over row bands."""
    from anyup.viz.edges import bilinear_edge_alignment, edge_alignment

    return [
        (stem, r.layer, edge_alignment(r.features, r.image), bilinear_edge_alignment(r.lowres, r.image))
        for r in results
    ]


def _cmd_upsample_signal(args: argparse.Namespace) -> int:
    from anyup._atomic import ensure_writable_dir
    from anyup.signals import read_signal, upsample_signal, write_signal

    if Path(args.out).suffix.lower() not in (".npy", ".safetensors", ".png"):
        raise ValueError(f"--out must end in .npy, .safetensors or .png, got {args.out!r}")
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a folder; give a file name ending in .npy, .safetensors or .png")
    ensure_writable_dir(Path(args.out).parent, "folder of --out")  # before any work
    signal = read_signal(args.signal, args.kind)
    out = upsample_signal(
        args.image, signal, parse_size(args.size), model=args.model, kind=args.kind, device=args.device
    )
    meta = {"kind": args.kind, "image": str(args.image), "signal": str(args.signal), "model": str(args.model)}
    write_signal(out.cpu().numpy(), args.out, args.kind, metadata=meta)
    sys.stdout.write(f"wrote {args.kind} {tuple(out.shape)} to {args.out}\n")
    return 0


def _cmd_sample_image(args: argparse.Namespace) -> int:
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError('sample images come from scikit-image: pip install "anyup[eval]" (or scikit-image)') from err
    import numpy as np

    from anyup.viz.io import save_png

    arr = np.asarray(getattr(skimage.data, args.name)())
    save_png(arr, args.out)
    sys.stdout.write(f"wrote {args.name} {arr.shape[1]}x{arr.shape[0]} to {args.out}\n")
    return 0
