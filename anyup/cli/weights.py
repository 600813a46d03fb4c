"""``anyup weights``: list, fetch and verify checkpoints."""

from __future__ import annotations

import argparse
import sys

from anyup.weights import WEIGHTS, verify_weights

TITLE = "Weights"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list, download or verify AnyUp checkpoints")
    p.add_argument("action", choices=["list", "fetch", "verify"], help="what to do")
    p.add_argument("names", nargs="*", help="registered names (default: all)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    names = args.names or sorted(WEIGHTS)
    specs = {n: WEIGHTS.get(n) for n in names}  # an unknown name: ValueError listing the registered ones
    if args.action == "list":
        sys.stdout.write(f"{'name':<24} {'licence':<28} description\n")
        for n in names:
            s = specs[n]
            sys.stdout.write(f"{n:<24} {s.licence:<28} {s.description}\n")
        return 0
    bad = 0
    for n, message, ok in verify_weights(names, download=args.action == "fetch"):
        bad += not ok
        sys.stdout.write(f"{n}: {message}\n" if ok else f"{n}: MISSING OR BAD: {message}\n")
    if bad:
        sys.stderr.write(f"{bad} of {len(names)} weights file(s) missing or bad\n")
    return 1 if bad else 0
