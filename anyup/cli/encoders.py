"""``anyup encoders``: the registered encoders as a table, or the cross-encoder stress test."""

from __future__ import annotations

import argparse
import json
import sys

from anyup.cli._flags import add_device, add_list, add_model

TITLE = "Encoders"


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
    add_model(p, None, help="AnyUp weights for --stress (name or path; default: our offline weights)")
    add_list(p, "--encoders", "encoders for --stress (default: one per family)")
    p.add_argument("--image", default=None, help="image for --stress (default: skimage chelsea)")
    p.add_argument("--input-size", type=int, default=112, help="short side of the encoder input for --stress")
    p.add_argument("--hub", action="store_true", help="--stress with hub weights for timm encoders (needs network)")
    add_device(p)
    p.set_defaults(func=_cmd_encoders)


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
    from anyup.weights import DEFAULT_WEIGHTS

    encoders = args.encoders or DEFAULT_STRESS_ENCODERS
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
