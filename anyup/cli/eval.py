"""``anyup eval ...``: the evaluation harness on the command line.

Sub-commands: ``run`` (a suite of probes + fidelity), one per analysis (``probe-consistency``,
``window-size``, ``cross-encoder``, ``attention``, ``fidelity``) and ``protocols`` (list the
protocol presets with their hashes). Every command writes ``results.csv``, ``results.md`` and
PNG plots into ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import typing
from pathlib import Path
from typing import Any

from anyup.cli._flags import SetAction, add_command, add_list, add_model, add_renamed, split_list

__all__ = ["register"]

TITLE = "Evaluate"


def _csv_list(text: str | list[str] | None) -> list[str]:
    return split_list(text)


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _roots(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if sep and name and "/" not in name:
            out[name] = path
        else:
            out["*"] = item
    return out


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from anyup.eval.protocols import parse_overrides

    items = list(args.set or [])
    if getattr(args, "seeds", None):
        items.append(f"seeds={args.seeds}")
    if getattr(args, "epochs", None):
        items.append(f"epochs={args.epochs}")
    if getattr(args, "max_images", None):
        items += [
            f"max_train_images={args.max_images}",
            f"max_eval_images={args.max_images}",
            f"fidelity_max_images={args.max_images}",
        ]
    return parse_overrides(items)


def _cache_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.cache) if args.cache else None


def _command() -> str:
    """The command line as typed, when this process is the ``anyup`` command (else empty)."""
    argv0 = Path(sys.argv[0]).name if sys.argv else ""
    if argv0 in ("anyup", "cli.py", "__main__.py"):
        return "anyup " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return ""


def _method_configs(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--method-set jbu.sigma_spatial=2`` -> ``{"jbu": {"sigma_spatial": 2.0}}``, typed by the method's config."""
    from anyup._config import coerce, parse_value, split_assignment

    raw: dict[str, dict[str, str]] = {}
    for item in items or []:
        key, value = split_assignment(item, "METHOD.FIELD=VALUE")
        method, dot, fld = key.partition(".")
        if not (dot and method and fld):
            raise ValueError(f"--method-set must look like METHOD.FIELD=VALUE, got {item!r}")
        raw.setdefault(method.strip(), {})[fld.strip()] = value
    out: dict[str, dict[str, Any]] = {}
    for method, fields in raw.items():
        try:
            from anyup.baselines import get_spec

            cls = get_spec(method).config_cls
            hints = typing.get_type_hints(cls)
        except (ValueError, KeyError, NameError, TypeError):  # unknown here: the runner reports the method
            out[method] = {k: parse_value(v) for k, v in fields.items()}
            continue
        out[method] = {
            k: coerce(v if hints.get(k) is str else parse_value(v), hints.get(k, Any), f"--method-set {method}.{k}")
            for k, v in fields.items()
        }
    return out


def _common(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    p.add_argument("--out", required=out_required, type=Path, help="output folder (results.csv, results.md, *.png)")
    p.add_argument("--protocol", default=None, help="protocol preset for every task (see `anyup eval protocols`)")
    p.add_argument("--set", action=SetAction, help="override a protocol field (repeat --set for more)")
    p.add_argument("--seeds", default=None, help="probe seeds, e.g. 0,1,2 (overrides the protocol's)")
    p.add_argument("--epochs", type=int, default=None, help="probe epochs (overrides the protocol's)")
    p.add_argument("--max-images", type=int, default=None, help="cap images per split (train, eval, fidelity)")
    p.add_argument(
        "--root",
        action="append",
        metavar="[NAME=]DIR",
        help="dataset folder, e.g. --root voc=/data/VOCdevkit (repeatable; bare DIR for all)",
    )
    p.add_argument("--cache", default=None, help="feature cache folder (default $ANYUP_CACHE_DIR/eval_features)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached encoder features")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="random-init encoders (and AnyUp for the analyses): a smoke test, numbers are meaningless",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _analysis_options(args: argparse.Namespace) -> Any:
    from anyup.eval.analyses import AnalysisOptions

    return AnalysisOptions(
        out=args.out,
        dataset=args.dataset,
        fidelity_dataset=args.fidelity_dataset,
        encoder=args.encoder,
        anyup_weights=None if args.random_init else args.model,
        protocol=args.protocol or "offline",
        overrides=_overrides(args),
        roots=_roots(args.root),
        cache_dir=_cache_dir(args),
        use_cache=not args.no_cache,
        pretrained=not args.random_init,
        task=args.task,
        progress=not args.no_progress,
        command=_command(),
    )


def _done(args: argparse.Namespace, rows: list) -> int:
    sys.stdout.write(f"wrote {len(rows)} results to {args.out / 'results.csv'} (summary: {args.out / 'results.md'})\n")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from anyup.eval.runner import RunOptions, run

    options = RunOptions(
        out=args.out,
        suite=args.suite,
        datasets=_csv_list(args.datasets) if args.datasets else None,
        encoders=_csv_list(args.encoders) if args.encoders else None,
        methods=_csv_list(args.methods) if args.methods else None,
        tasks=_csv_list(args.tasks) if args.tasks else None,
        protocol=args.protocol,
        overrides=_overrides(args),
        roots=_roots(args.root),
        cache_dir=_cache_dir(args),
        use_cache=not args.no_cache,
        pretrained=not args.random_init,
        probe_encoders=_csv_list(args.probe_encoders) if args.probe_encoders else None,
        method_configs=_method_configs(args.method_set),
        progress=not args.no_progress,
        command=_command(),
    )
    return _done(args, run(options))


def _cmd_probe_consistency(args: argparse.Namespace) -> int:
    from anyup.eval.analyses import probe_consistency

    return _done(
        args, probe_consistency(_analysis_options(args), methods=_csv_list(args.methods) or ["bilinear", "anyup"])
    )


def _cmd_window(args: argparse.Namespace) -> int:
    from anyup.eval.analyses import window_sensitivity

    return _done(args, window_sensitivity(_analysis_options(args), ratios=args.ratios, probe=not args.no_probe))


def _cmd_cross(args: argparse.Namespace) -> int:
    from anyup.eval.analyses import cross_encoder

    enc = _csv_list(args.encoders) if args.encoders else None
    return _done(
        args,
        cross_encoder(_analysis_options(args), encoders=enc, methods=_csv_list(args.methods) or ["bilinear", "anyup"]),
    )


def _cmd_attention(args: argparse.Namespace) -> int:
    from anyup.eval.analyses import attention_at_boundaries

    return _done(
        args,
        attention_at_boundaries(
            _analysis_options(args), images=args.images, pixels_per_image=args.pixels, band_width=args.band
        ),
    )


def _cmd_fidelity(args: argparse.Namespace) -> int:
    from anyup.eval.analyses import fidelity

    return _done(
        args,
        fidelity(
            _analysis_options(args),
            datasets=_csv_list(args.datasets) or ["photos"],
            encoders=_csv_list(args.encoders) if args.encoders else None,
            methods=_csv_list(args.methods) if args.methods else None,
        ),
    )


def _cmd_protocols(args: argparse.Namespace) -> int:
    from anyup.eval.protocols import PROTOCOLS
    from anyup.eval.runner import SUITES

    for p in PROTOCOLS.values():
        sys.stdout.write(f"{p.tag}  v{p.version}  {p.notes}\n")
        if args.json:
            sys.stdout.write(f"  {p.canonical_json()}\n")
    sys.stdout.write("\nsuites:\n")
    for s in SUITES.values():
        sys.stdout.write(
            f"  {s.name}: datasets {','.join(s.datasets)}; encoders {','.join(s.encoders)}; "
            f"protocols {s.protocols} -- {s.description}\n"
        )
    return 0


def _analysis_parser(sub: Any, name: str, help_: str) -> argparse.ArgumentParser:
    p = add_command(sub, name, help_)
    _common(p)
    p.add_argument("--dataset", default="synthetic", help="labelled dataset (default synthetic)")
    p.add_argument("--fidelity-dataset", default="photos", help="dataset for label-free fidelity (default photos)")
    p.add_argument("--encoder", default="efficientnet_lite0", help="encoder (default efficientnet_lite0)")
    add_model(p, "anyup_multi_backbone")
    add_renamed(p, "--weights", "--model", "model", metavar="NAME_OR_PATH")
    p.add_argument("--task", default="seg", choices=["seg", "depth", "normals"], help="probe task (default seg)")
    return p


def register(subparsers: Any) -> None:
    """Add ``anyup eval`` and its sub-commands."""
    ev = subparsers.add_parser(
        "eval",
        help="evaluate upsamplers: probes, fidelity, analyses",
        description="Evaluate feature upsamplers: linear probes, label-free fidelity, "
        "analyses. Every command writes results.csv, results.md and plots to --out.",
    )
    sub = ev.add_subparsers(dest="eval_command", metavar="ANALYSIS")
    ev.set_defaults(func=lambda args: (ev.print_help(), 2)[1])

    p = sub.add_parser(
        "run", help="run a suite: probes (seg/depth/normals) and fidelity over datasets x encoders x methods"
    )
    _common(p)
    p.add_argument("--suite", default="offline", help="offline (default) or paper; see `anyup eval protocols`")
    add_list(p, "--datasets", "dataset names (default: the suite's)")
    add_list(p, "--encoders", "encoder names (default: the suite's)")
    add_list(p, "--probe-encoders", "encoders used for probes (default: the suite's / all given)")
    add_list(p, "--methods", "methods (default: every method that can run here; a named one that cannot is an error)")
    add_list(p, "--tasks", "subset of seg,depth,normals,fidelity (default all)")
    p.add_argument(
        "--method-set",
        action=SetAction,
        metavar="METHOD.FIELD=VALUE",
        help="method config override, e.g. anyup_checkpoint.checkpoint=run/last.pth (repeat for more)",
    )
    p.set_defaults(func=_cmd_run)

    p = _analysis_parser(sub, "probe-consistency", "low-res probe applied to AnyUp- vs bilinear-upsampled features")
    add_list(p, "--methods", "methods to apply the low-res probe to (default bilinear,anyup)")
    p.set_defaults(func=_cmd_probe_consistency)

    p = _analysis_parser(sub, "window-size", "sweep AnyUp's window_ratio: fidelity and a probe")
    p.add_argument("--ratios", type=_float_list, default=[0.025, 0.05, 0.1, 0.2, 0.4], help="comma-separated ratios")
    p.add_argument("--no-probe", action="store_true", help="fidelity only")
    p.set_defaults(func=_cmd_window)

    p = _analysis_parser(sub, "cross-encoder", "the same AnyUp weights over every available encoder")
    add_list(p, "--encoders", "encoders (default: every registered one; unavailable skipped)")
    add_list(p, "--methods", "methods (default bilinear,anyup)")
    p.set_defaults(func=_cmd_cross)

    p = _analysis_parser(sub, "attention", "AnyUp attention maps at GT class boundaries vs bilinear weights")
    p.add_argument("--images", type=int, default=8, help="images of the eval split")
    p.add_argument("--pixels", type=int, default=16, help="boundary pixels per image")
    p.add_argument("--band", type=int, default=2, help="max distance (px) of a sampled pixel to a class edge")
    p.set_defaults(func=_cmd_attention)

    p = _analysis_parser(
        sub, "fidelity", "label-free fidelity: upsampled features of a downscaled image vs full-res features"
    )
    add_list(p, "--datasets", "datasets (default photos)")
    add_list(p, "--encoders", "encoders (default --encoder)")
    add_list(p, "--methods", "methods (default all that can run here)")
    p.set_defaults(func=_cmd_fidelity)

    from anyup.eval import depth_probe

    p = sub.add_parser(
        "depth-probe",
        help="real-depth ridge probe per Middlebury scene and CNN layer (RMSE vs bilinear)",
        description=depth_probe.__doc__.splitlines()[0],
    )
    depth_probe.add_arguments(p)
    p.set_defaults(func=depth_probe.run)

    p = sub.add_parser("protocols", help="list protocol presets (name@hash) and suites")
    p.add_argument("--json", action="store_true", help="also print each protocol's canonical JSON")
    p.set_defaults(func=_cmd_protocols)
