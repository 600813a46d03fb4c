"""Sub-command ``anyup viz attention``: where output pixels look among the low-res tokens.

(``anyup upsample`` already writes the PCA picture of every image it processes.)
"""

from __future__ import annotations

import argparse
import sys

from anyup.cli._flags import add_device, add_encoder, add_model, build_upsampler
from anyup.weights import DEFAULT_WEIGHTS

TITLE = "Pictures"


def register(subparsers: argparse._SubParsersAction) -> None:
    viz = subparsers.add_parser("viz", help="pictures: AnyUp's attention for chosen pixels")
    sub = viz.add_subparsers(dest="viz_command", metavar="VIZ_COMMAND")
    p = sub.add_parser(
        "attention",
        help="overlay where output pixels attend among the low-res tokens",
        description="For each --pixel (row,column in the original image), overlay AnyUp's attention "
        "weights over the encoder's low-res tokens on the image and mark the pixel; one panel per pixel. "
        "A pixel just inside an object boundary attends to tokens on its own side.",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--pixel", action="append", required=True, metavar="Y,X", help="repeat for several pixels")
    add_encoder(p)
    add_model(p, DEFAULT_WEIGHTS)
    p.add_argument("--layer", default=None, help="encoder layer")
    p.add_argument("--input-size", type=int, default=448, metavar="N", help="short side of the encoder input")
    p.add_argument("--alpha", type=float, default=0.75, help="heatmap opacity")
    p.add_argument(
        "--gamma", type=float, default=0.5, help="colour = (weight / max) ** gamma (< 1 lifts small weights)"
    )
    add_device(p)
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.set_defaults(func=_cmd_attention)
    viz.set_defaults(func=lambda args: _usage(viz))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def parse_pixel(text: str) -> tuple[int, int]:
    """``"120,64"`` -> (120, 64) (row, column)."""
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--pixel must look like Y,X (row,column integers), got {text!r}") from None
    return y, x


def _cmd_attention(args: argparse.Namespace) -> int:
    from pathlib import Path

    from anyup._atomic import ensure_writable_dir
    from anyup.image import image_size
    from anyup.viz.attention import attention_row
    from anyup.viz.io import save_png

    pixels = [parse_pixel(p) for p in args.pixel]
    h0, w0 = image_size(args.image)  # header only: a broken or huge file fails before any work
    ensure_writable_dir(Path(args.out).parent, "folder of --out")
    for y, x in pixels:
        if not (0 <= y < h0 and 0 <= x < w0):
            raise ValueError(f"--pixel {y},{x} lies outside the image of {h0} rows x {w0} columns")
    up = build_upsampler(args)
    img = up.load(args.image)  # a very large file is decoded reduced
    _, enc_in = up.prepare(img)
    h, w = enc_in.shape[-2:]
    scaled = [(min(h - 1, y * h // h0), min(w - 1, x * w // w0)) for y, x in pixels]  # output coordinates
    maps, guide = up.attention(img, scaled)
    labels = [f"pixel y={y}, x={x}" for y, x in pixels]  # in the original image's coordinates
    save_png(attention_row(guide, maps, scaled, alpha=args.alpha, labels=labels, gamma=args.gamma), args.out)
    sys.stdout.write(
        f"wrote attention of {len(pixels)} pixel(s) ({h}x{w} output, {maps.shape[-2]}x{maps.shape[-1]} tokens) to {args.out}\n"
    )
    return 0
