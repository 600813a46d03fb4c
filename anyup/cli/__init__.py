"""The ``anyup`` command line.

Each command group contributes its own sub-commands through a ``register(subparsers)`` function
in ``anyup/cli/<group>.py`` (shared flags in ``anyup/cli/_flags.py``); this module only wires them
together, so ``anyup --help`` lists everything the package can do. Areas whose optional
dependencies are missing still show their commands; the error is raised (with the ``pip install``
hint) when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from anyup.cli._flags import table_of_contents

# Modules that define ``register(subparsers: argparse._SubParsersAction) -> None`` (and ``TITLE``).
_COMMAND_MODULES: tuple[str, ...] = (
    "anyup.cli.upsample",
    "anyup.cli.encoders",
    "anyup.cli.weights",
    "anyup.cli.viz",
    "anyup.cli.eval",
    "anyup.cli.train",
    "anyup.extract.cli",
    "anyup.demo.cli",
)


def build_parser() -> argparse.ArgumentParser:
    from anyup import __version__

    parser = argparse.ArgumentParser(
        prog="anyup",
        description="Upsample the features of any frozen vision encoder, guided by the image.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"anyup {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (or ANYUP_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)
    contents: list[tuple[str, list[str]]] = []
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            # Only tolerate a missing *area* module (not yet installed extras are handled inside).
            if err.name is not None and err.name.startswith("anyup"):
                continue
            raise
        before = set(sub.choices)
        module.register(sub)
        title = getattr(module, "TITLE", name.split(".")[1].capitalize())  # e.g. anyup.demo.cli -> "Demo"
        contents.append((title, [c for c in sub.choices if c not in before]))
    parser.epilog = table_of_contents(sub, contents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"anyup {args.command}: interrupted\n")
        return 130
    except Exception as err:  # noqa: BLE001 - every error: one clear line, no traceback
        from anyup._env import debug_enabled

        if args.debug or debug_enabled() or args.verbose >= 2:
            raise
        sys.stderr.write(f"anyup {args.command}: error: {error_line(err)}\n")
        return 1
    return int(result or 0)


def error_line(err: BaseException) -> str:
    """One line for the user: the message (its type when that says more, e.g. PermissionError)."""
    text = " ".join(str(err).split()) or err.__class__.__name__
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
        text = f"{err.__class__.__name__}: {text}"
    elif not isinstance(err, (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError)):
        text = f"{err.__class__.__name__}: {text} (run with --debug or ANYUP_DEBUG=1 for the traceback)"
    return text


__all__ = ["build_parser", "error_line", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
