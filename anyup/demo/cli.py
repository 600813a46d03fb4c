"""Sub-command ``anyup demo``: serve the local demo page."""

from __future__ import annotations

import argparse
import sys

from anyup.cli._flags import add_command, add_device, add_list

HELP = "a local web page: PCA of low-res | bilinear | AnyUp, click a pixel for its attention"
DESCRIPTION = """Serve a local Gradio page (offline: the encoders and AnyUp weights on this machine). Pick or
upload a photo, an encoder, layer and weights; see the PCA panels side by side; click the AnyUp panel
for the attention of that pixel; download the features."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "demo", HELP, DESCRIPTION)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for the local network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--input-size", type=int, default=224, metavar="N", help="short side of the encoder input")
    add_list(p, "--encoders", "offer only these encoders")
    add_list(p, "--models", "offer these AnyUp weights (registered names or files)", metavar="NAME_OR_PATH")
    add_device(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from anyup.demo.app import DemoConfig, launch

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    config = DemoConfig(
        encoders=tuple(args.encoders or ()),
        weights=tuple(args.models or ()),
        input_size=args.input_size,
        device=args.device,
    )
    sys.stdout.write(f"anyup demo: http://{args.host}:{args.port}  (Ctrl-C to stop)\n")
    sys.stdout.flush()
    launch(config, host=args.host, port=args.port)
    return 0
