"""Flag builders shared by every ``anyup`` command, so one flag means one thing everywhere.

* ``--model NAME_OR_PATH``: AnyUp weights (a registered name such as ``anyup_offline`` or a file).
* ``--encoder NAME``: one encoder; ``--encoders A,B``: several; ``--encoder-weights PATH``: the
  encoder's own weights file (needed offline for hub encoders).
* Lists: comma-separated and/or repeated (``--layer stage2,stage4`` == ``--layer stage2 --layer stage4``).
* ``--set KEY=VALUE``: one override per flag, repeat the flag for more.
* ``--device``, ``--out``.

Renamed flags keep their old spelling for one release: it still works, is hidden from ``--help``,
and warns (a ``DeprecationWarning`` and a logged warning naming the new flag).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from anyup._deprecation import warn_renamed

if TYPE_CHECKING:
    from anyup.predictor import Upsampler

logger = logging.getLogger("anyup.cli")

DEFAULT_ENCODER = "efficientnet_lite0"


def deprecated(old: str, new: str) -> None:
    """Warn (DeprecationWarning + log) that flag ``old`` is now spelled ``new``."""
    warn_renamed(old, new, stacklevel=4, log=logger)


def add_command(subparsers: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A sub-command: ``help`` in the command list, ``description`` (default ``help``) atop its ``--help``.

    The description may be a triple-quoted block: argparse re-wraps it (whitespace collapsed).
    """
    return subparsers.add_parser(name, help=help, description=" ".join((description or help).split()))


def parse_layers(values: Sequence[str] | str | None) -> str | list[str] | None:
    """``--layer a --layer b,c`` -> ["a", "b", "c"]; one layer -> that name; none -> None."""
    names = split_list(values)
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def build_upsampler(args: argparse.Namespace, **kwargs: Any) -> Upsampler:
    """The :class:`anyup.Upsampler` of the shared flags: ``--encoder``/``--encoder-weights`` (:func:`add_encoder`),
    ``--model`` (:func:`add_model`), ``--layer``, ``--input-size`` and ``--device``; ``kwargs`` add the rest."""
    from anyup.predictor import Upsampler

    return Upsampler(
        args.encoder,
        args.model,
        weights=args.encoder_weights,
        layers=parse_layers(args.layer),
        input_size=args.input_size,
        device=args.device,
        **kwargs,
    )


def split_list(values: Sequence[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` or ``"a,b,c"`` -> ``["a", "b", "c"]`` (blanks dropped)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


class ListAction(argparse.Action):
    """A list flag: comma-separated values, the flag repeatable; the values extend one list.

    One value per flag (so a positional argument after it is not swallowed). Flags that used to
    take several space-separated values (``--data a b``, ``--set a=1 b=2`` of ``anyup train``) are
    built with ``nargs="+"``: that form still works for one release, with a deprecation warning.
    """

    def __init__(self, option_strings, dest, split: bool = True, **kwargs) -> None:
        kwargs.setdefault("default", None)
        self.split = split
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if len(values) > 1:
            sep = "," if self.split else f" {option_string} "
            deprecated(f"{option_string} {' '.join(values)}", f"{option_string} {sep.join(values)}")
        items = split_list(values) if self.split else [v for v in values if v]
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*(current or []), *items])


class SetAction(ListAction):
    """``--set KEY=VALUE`` (repeat the flag for more); every value must contain ``=``."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        kwargs.setdefault("metavar", "KEY=VALUE")
        super().__init__(option_strings, dest, split=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        for v in values:
            key, sep, _ = v.partition("=")
            if not sep or not key.strip():
                parser.error(f"{option_string} expects KEY=VALUE, got {v!r}")
        super().__call__(parser, namespace, values, option_string)


class RenamedFlag(argparse.Action):
    """The old spelling of a renamed flag: stores into the new flag's ``dest`` and warns."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        deprecated(option_string or "", self.new)
        setattr(namespace, self.dest, values)


class RenamedList(ListAction):
    """The old spelling of a renamed list flag: extends the new flag's list and warns."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        deprecated(option_string or "", self.new)
        items = split_list(values)
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *items])


def add_renamed(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Keep ``old`` working as a hidden, warning alias of ``new`` (same ``dest``)."""
    p.add_argument(old, dest=dest, action=RenamedFlag, new=new, help=argparse.SUPPRESS, **kwargs)


def add_model(p: argparse.ArgumentParser, default: str | None, help: str | None = None) -> None:
    """``--model NAME_OR_PATH``: AnyUp weights."""
    from anyup.weights import DEFAULT_WEIGHTS

    text = help or f"AnyUp weights: registered name or file (default: {default or DEFAULT_WEIGHTS})"
    p.add_argument("--model", default=default, metavar="NAME_OR_PATH", help=text)


def add_encoder(p: argparse.ArgumentParser, default: str | None = DEFAULT_ENCODER) -> None:
    """``--encoder NAME`` and ``--encoder-weights PATH`` (old spelling ``--weights``)."""
    p.add_argument(
        "--encoder", default=default, metavar="NAME", help=f"encoder (see `anyup encoders`; default {default})"
    )
    p.add_argument(
        "--encoder-weights",
        default=None,
        metavar="PATH",
        help="the encoder's weights file (needed offline for hub encoders)",
    )
    add_renamed(p, "--weights", "--encoder-weights", "encoder_weights", metavar="PATH")


def add_list(p: argparse.ArgumentParser, flag: str, help: str, metavar: str = "NAME", **kwargs: Any) -> None:
    """A list flag (comma-separated and/or repeated)."""
    p.add_argument(flag, action=ListAction, metavar=metavar, help=f"{help} (comma-separate or repeat)", **kwargs)


def add_set(p: argparse.ArgumentParser, help: str, dest: str = "set", **kwargs: Any) -> None:
    """``--set KEY=VALUE`` (repeatable)."""
    p.add_argument("--set", action=SetAction, dest=dest, help=f"{help} (repeat --set for more)", **kwargs)


def add_device(p: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    text = f"default {default}" if default else "default: the config's, auto = cuda if available"
    p.add_argument("--device", default=default, help=f"torch device: cpu, cuda, cuda:N ({text})")


_EPILOG_TAIL = """
`anyup COMMAND --help` gives a command's flags. Shared flags mean the same everywhere:
--model (AnyUp weights), --encoder / --encoder-weights (the encoder and its file), lists
comma-separated or repeated, --set KEY=VALUE (repeat for more). Reference: README.md and docs/.
"""


def table_of_contents(sub: argparse._SubParsersAction, contents: list[tuple[str, list[str]]]) -> str:
    """The commands grouped under their module's title, one line each (what ``anyup --help`` ends with)."""
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    width = max((len(c) for _, cmds in contents for c in cmds), default=0) + 2
    lines = ["commands:"]
    for title, commands in contents:
        lines.append(f"  {title}")
        lines += [f"    {c:<{width}}{helps.get(c, '')}" for c in commands]
    return "\n".join(lines) + "\n" + _EPILOG_TAIL
