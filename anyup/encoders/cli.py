"""Sub-commands: ``anyup encoders``, ``anyup upsample``, ``anyup upsample-signal``, ``anyup sample-image``."""

from __future__ import annotations

import argparse

from anyup.weights import DEFAULT_WEIGHTS
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encoders",
        help="list the registered encoders (or stress-test AnyUp across them)",
        description="List the registered frozen encoders as a table. With --stress, run one AnyUp "
        "model over one encoder per family and check shape, finiteness and range.",
    )
    p.add_argument("--family", help="only this family (e.g. dinov2, clip, resnet)")
    p.add_argument("--offline", action="store_true", help="only encoders whose real weights install offline")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--stress", action="store_true", help="run the cross-encoder stress test")
    p.add_argument(
        "--model", default=None, help="AnyUp weights for --stress (name or path; default: our offline weights)"
    )
    p.add_argument("--encoders", default=None, help="comma-separated encoders for --stress (default: one per family)")
    p.add_argument("--image", default=None, help="image for --stress (default: skimage chelsea)")
    p.add_argument("--input-size", type=int, default=112, help="short side of the encoder input for --stress")
    p.add_argument("--hub", action="store_true", help="--stress with hub weights for timm encoders (needs network)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_encoders)

    p = subparsers.add_parser(
        "upsample",
        help="upsample an encoder's features of images (files or folders) with AnyUp",
        description="For each image: encoder features, AnyUp upsampling, and DIR/<stem>.safetensors "
        "(tensors 'features' (C,H,W) and 'lowres' (C,h,w) + metadata) and DIR/<stem>_pca.png "
        "(image | low-res | bilinear | AnyUp in one shared PCA colour basis).",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--encoder", default="efficientnet_lite0", help="encoder name (see `anyup encoders`)")
    p.add_argument(
        "--weights", default=None, metavar="PATH", help="encoder weights file (needed offline for hub encoders)"
    )
    p.add_argument("--model", default=DEFAULT_WEIGHTS, metavar="NAME_OR_PATH", help="AnyUp weights")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", default=None, metavar="HxW", help="output size (default: the encoder input size)")
    size.add_argument("--scale", type=float, default=None, metavar="S", help="output size = S x encoder input size")
    p.add_argument("--layer", action="append", default=None, help="encoder layer(s); repeat or comma-separate")
    p.add_argument("--input-size", type=int, default=448, metavar="N", help="short side of the encoder input")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per batch (same-size images batch)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--no-png", action="store_true", help="skip the PCA picture")
    p.add_argument(
        "--stats",
        action="store_true",
        help="print how well AnyUp's and bilinear's feature edges follow the image edges",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--overwrite", action="store_true", help="recompute images whose outputs already exist (default: skip them)"
    )
    p.set_defaults(func=_cmd_upsample)

    p = subparsers.add_parser(
        "upsample-signal",
        help="upsample a mask, logits or depth map guided by an image",
        description="Upsample a low-res signal to the image size (or --size) with AnyUp, guided by the image. "
        "SIGNAL: .npy, .safetensors (tensor 'signal' or the only one), or a single-channel image for "
        "masks/depth. OUT: .npy, .safetensors or .png.",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("signal", metavar="SIGNAL")
    p.add_argument("--kind", required=True, choices=("mask", "logits", "depth"))
    p.add_argument("--model", default=DEFAULT_WEIGHTS, metavar="NAME_OR_PATH")
    p.add_argument("--size", default=None, metavar="HxW", help="output size (default: the image size)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(func=_cmd_upsample_signal)

    p = subparsers.add_parser(
        "sample-image",
        help="write a sample photo (from scikit-image) to try the other commands on",
        description=f"Write one of scikit-image's sample photos ({', '.join(SAMPLE_IMAGES)}) as PNG.",
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


def parse_layers(values: Sequence[str] | None):
    """``--layer a --layer b,c`` -> ["a", "b", "c"]; one layer -> that name; none -> None."""
    if not values:
        return None
    names = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return names[0] if len(names) == 1 else names


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
def _cmd_encoders(args: argparse.Namespace) -> int:
    from anyup.encoders import get_spec, list_encoders

    if args.stress:
        return _stress(args)
    names = list_encoders(family=args.family, offline_only=args.offline)
    if args.family and not names:
        raise ValueError(f"no encoders of family {args.family!r}")
    rows = []
    for n in names:
        s = get_spec(n)
        d = s.default
        rows.append(
            {
                "name": n,
                "family": s.family,
                "stride": d.stride,
                "channels": d.channels,
                "default_layer": s.default_layer,
                "layers": [l.name for l in s.layers],
                "weights": s.weights_source,
                "offline": s.offline,
            }
        )
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    sys.stdout.write(format_table(rows) + "\n")
    return 0


def format_table(rows: list[dict]) -> str:
    """Markdown table of encoders (what ``anyup encoders`` prints)."""
    lines = [
        "| name | family | patch/stride | C | default layer | other layers | weights from |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        others = [l for l in r["layers"] if l != r["default_layer"]]
        blocks = [l for l in others if l.startswith("block")]
        rest = [l for l in others if not l.startswith("block")]
        others_txt = ", ".join(rest + ([f"block0..block{len(blocks) - 1}"] if blocks else []))
        weights = r["weights"] + (" (offline)" if r["offline"] else "")
        lines.append(
            f"| {r['name']} | {r['family']} | {r['stride']} | {r['channels']} | {r['default_layer']} | "
            f"{others_txt} | {weights} |"
        )
    return "\n".join(lines)


def _stress(args: argparse.Namespace) -> int:
    from anyup.encoders.stress import DEFAULT_STRESS_ENCODERS, format_rows, stress_test

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()] if args.encoders else DEFAULT_STRESS_ENCODERS
    model = args.model or DEFAULT_WEIGHTS
    rows = stress_test(model, encoders, image=args.image, input_size=args.input_size, hub=args.hub, device=args.device)
    if args.json:
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    else:
        sys.stdout.write(format_rows(rows) + "\n")
    passed = sum(r.ok for r in rows)
    families = len({r.family for r in rows if r.ok})
    sys.stdout.write(f"{passed} passed, {len(rows) - passed} failed ({families} encoder families passed)\n")
    return 0 if passed == len(rows) else 1


def _cmd_upsample(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from anyup._atomic import ensure_writable_dir
    from anyup.image import image_size, list_images
    from anyup.predictor import Upsampler, pending_jobs, save_result
    from anyup.viz import pca_comparison, save_png
    from anyup.viz.edges import edge_alignment

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths = list_images(args.inputs)
    if not paths:
        raise FileNotFoundError(f"no image files found in {args.inputs}")
    size = parse_size(args.size)
    up = Upsampler(
        args.encoder,
        args.model,
        weights=args.weights,
        layers=parse_layers(args.layer),
        input_size=args.input_size,
        device=args.device,
        dtype=args.dtype,
    )
    out_dir = ensure_writable_dir(args.out)  # before any work; removes temp files of killed runs
    jobs = list(zip(paths, unique_stems(paths)))
    skipped = 0
    if not args.overwrite:  # outputs are written atomically: an existing, readable one is complete
        todo = pending_jobs(up, jobs, out_dir, pictures=not args.no_png)
        skipped, jobs = len(jobs) - len(todo), todo
    failed: list[tuple[Path, str]] = []

    def fail(path: Path, err: Exception) -> None:
        failed.append((path, f"{err.__class__.__name__}: {err}"))
        logger.error("failed on %s: %s: %s", path, err.__class__.__name__, err)

    stats: list[tuple[str, str, float, float]] = []

    def write(path: Path, stem: str, results) -> None:
        h0, w0 = image_size(path)  # the file's own size (a very large one was decoded reduced)
        extra = {"image": str(path), "original_size": f"{h0}x{w0}"}
        for r in results:
            ours, bil = edge_alignment(r.features, r.image), edge_alignment(r.bilinear(), r.image)
            stats.append((stem, r.layer, ours, bil))
            suffix = "" if len(results) == 1 else f".{r.layer}"
            extra[f"edge_alignment_anyup{suffix}"] = f"{ours:.4f}"
            extra[f"edge_alignment_bilinear{suffix}"] = f"{bil:.4f}"
        save_result(results, out_dir / f"{stem}.safetensors", extra=extra)
        if not args.no_png:
            for r in results:
                suffix = "_pca" if len(results) == 1 else f"_{r.layer}_pca"
                png = pca_comparison(r.image, r.lowres, r.features)
                save_png(png, out_dir / f"{stem}{suffix}.png")

    with tqdm(total=len(jobs), unit="img", desc="upsample", disable=None) as bar:
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start : start + args.batch_size]
            loaded = []
            for path, stem in chunk:
                try:
                    loaded.append((path, stem, up.load(path, output_size=size, scale=args.scale)))
                except Exception as err:  # noqa: BLE001 - a broken file must not stop the folder
                    fail(path, err)
            results = None
            if len(loaded) > 1:
                try:
                    results = up.predict_batch([t for _, _, t in loaded], output_size=size, scale=args.scale)
                except Exception as err:  # noqa: BLE001 - retried one by one below, so only the culprit fails
                    logger.warning("batch failed (%s); retrying its images one by one", err)
            for i, (path, stem, image) in enumerate(loaded):
                try:
                    res = results[i] if results is not None else up.predict(image, output_size=size, scale=args.scale)
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
        + (f" ({skipped} already there)" if skipped else "") + "\n"
    )
    if failed:
        sys.stderr.write(f"{len(failed)} image(s) failed:\n")
        for path, msg in failed:
            sys.stderr.write(f"  {path}: {msg}\n")
        return 1
    return 0


def _cmd_upsample_signal(args: argparse.Namespace) -> int:
    from anyup._atomic import ensure_writable_dir
    from anyup.guided import read_signal, upsample_signal, write_signal

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
