"""Sub-command ``anyup extract``: upsampled features of a whole dataset into a zarr store or shards."""

from __future__ import annotations

import argparse
import sys

from anyup.cli._flags import add_command, add_device, add_encoder, add_model
from anyup.weights import DEFAULT_WEIGHTS

HELP = "features of a whole dataset (folders, file lists, webdataset shards) into zarr / webdataset"
DESCRIPTION = """Upsampled features of every image into a chunked store, resumable (complete items are
skipped), on Ray Data (one model-holding actor per CPU or GPU slot; any cluster: --address) or in
this process (the default when Ray is not installed); both give the same output."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "extract", HELP, DESCRIPTION)
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="folder, image, .txt file list, .tar shard or shard-{000..009}.tar"
    )
    p.add_argument("--out", required=True, metavar="STORE", help="OUT.zarr (zarr) or a folder (webdataset)")
    p.add_argument("--format", default=None, choices=("zarr", "wds"), help="default: zarr for *.zarr, else wds")
    add_encoder(p)  # --encoder NAME (hf:ID, torchhub:..., open_clip:...) and --encoder-weights PATH
    p.add_argument("--random-encoder", action="store_true", help="random-init encoder (tests)")
    add_model(p, DEFAULT_WEIGHTS)
    p.add_argument("--layer", default=None, help="encoder layer")
    p.add_argument("--input-size", type=int, default=448, metavar="N", help="short side of the encoder input")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", default=None, metavar="HxW", help="output size (default: the encoder input size)")
    size.add_argument("--scale", type=float, default=None, metavar="S", help="output size = S x encoder input size")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"), help="storage dtype")
    p.add_argument("--pca", type=int, default=None, metavar="K", help="store K PCA components (basis fitted once)")
    p.add_argument("--pca-fit-items", type=int, default=16, metavar="N", help="items that fit the PCA basis")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="items per worker call / per shard")
    p.add_argument("--engine", default="auto", choices=("auto", "local", "ray"), help="auto: ray when installed")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a new local one)")
    p.add_argument("--num-workers", type=int, default=None, metavar="N", help="Ray actors (default: one per slot)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads per worker")
    add_device(p)
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(args: argparse.Namespace) -> int:
    from anyup.cli.upsample import parse_size
    from anyup.extract import ExtractConfig, run

    fmt = args.format or ("zarr" if args.out.rstrip("/").endswith(".zarr") else "wds")
    config = ExtractConfig(
        out=args.out,
        format=fmt,
        encoder=args.encoder,
        encoder_weights=args.encoder_weights,
        pretrained=not args.random_encoder,
        model=args.model,
        layer=args.layer,
        input_size=args.input_size,
        output_size=parse_size(args.size),
        scale=args.scale,
        dtype=args.dtype,
        pca=args.pca,
        pca_fit_items=args.pca_fit_items,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
    )
    s = run(args.inputs, config, engine=args.engine, address=args.address, num_workers=args.num_workers)
    sys.stdout.write(
        f"{s.total} items: {s.skipped} already in {args.out}, {s.written} written, {len(s.failed)} failed "
        f"({s.engine}, {s.workers} worker{'s' if s.workers != 1 else ''})\n"
    )
    for key, error in s.failed.items():
        sys.stderr.write(f"  {key}: {error}\n")
    return 1 if s.failed else 0
