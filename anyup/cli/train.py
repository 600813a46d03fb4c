"""``anyup train``: train AnyUp from a preset, a YAML file and ``--set key=value`` overrides."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from anyup.cli._flags import (
    ListAction,
    RenamedList,
    add_device,
    add_list,
    add_model,
    add_renamed,
    add_set,
)

logger = logging.getLogger(__name__)

TITLE = "Train"

EPILOG = """examples:
  anyup train --preset cpu_offline --data photos/ --out runs/cpu --steps 500
  anyup train --preset paper --data /data/imagenet/train --out runs/paper --set optim.lr=1e-4 --set data.num_workers=8
  torchrun --nproc_per_node=8 -m anyup.train --preset multi_backbone --data /data/imagenet/train --out runs/multi
  anyup train --resume runs/cpu --steps 1000        # continue (or extend) an existing run
Running the same command again resumes from RUN_DIR/checkpoints/last.pt.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from anyup.train.config import PRESETS

    p = subparsers.add_parser(
        "train",
        help="train AnyUp (paper recipe, any encoder, resumable, multi-GPU via torchrun)",
        description="Train AnyUp with the paper's recipe. Config = preset <- --config YAML <- flags <- --set.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="base configuration")
    p.add_argument("--config", type=Path, help="YAML file merged over the preset")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="use RUN_DIR/config.yaml (then flags and --set)")
    add_list(p, "--data", "image folders or .txt lists (data.root)", metavar="PATH", nargs="+")
    add_list(p, "--val-data", "held-out image folders or .txt lists (val.root)", metavar="PATH", nargs="+")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (run_dir)")
    p.add_argument("--steps", type=int, help="optimiser steps (steps)")
    add_list(p, "--encoders", "encoder registry names (encoders)")
    p.add_argument(
        "--encoder", dest="encoders", action=RenamedList, new="--encoders", nargs="+", help=argparse.SUPPRESS
    )
    p.add_argument("--init", metavar="NAME|PATH", help="start from weights: a published name or a file (init)")
    add_device(p, None)
    add_set(p, "dotted config override, value parsed as YAML, e.g. optim.lr=1e-4 or 'data.root=[a, b]'", dest="overrides",
            nargs="+")  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(func=run)

    e = subparsers.add_parser(
        "train-eval",
        help="held-out feature fidelity of a training run vs bilinear, its initialisation and reference weights",
        description="Evaluate RUN_DIR on its held-out images for every encoder of the run; print a Markdown table.",
    )
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    e.add_argument("--reference", action=ListAction, split=False, nargs="+", metavar="LABEL=WEIGHTS",
                   help="other AnyUp weights (registered name or file), e.g. published=anyup_multi_backbone "
                        "(repeat for more)")  # fmt: skip
    add_model(e, None, help="the run's AnyUp weights to evaluate (default: RUN_DIR/model.safetensors)")
    add_renamed(e, "--weights", "--model", "model", metavar="PATH")
    e.add_argument("--plot", type=Path, metavar="PNG", help="also plot loss and validation curves with the references")
    add_device(e)
    e.set_defaults(func=run_eval)


# flag (argparse dest) -> the config key it sets; given flags become ``key=<JSON value>`` overrides
_FLAG_KEYS = (
    ("data", "data.root"),
    ("val_data", "val.root"),
    ("out", "run_dir"),
    ("steps", "steps"),
    ("encoders", "encoders"),
    ("init", "init"),
    ("device", "device"),
)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    import json

    out = []
    for dest, key in _FLAG_KEYS:
        value = getattr(args, dest)
        if value is None or (not value and not isinstance(value, int)):  # not given (--steps 0 is given)
            continue
        if isinstance(value, (list, tuple)):
            value = [str(x) for x in value]
        elif not isinstance(value, int):
            value = str(value)
        out.append(f"{key}={json.dumps(value)}")
    return out


def run(args: argparse.Namespace) -> int:
    import json

    from anyup.train.config import resolve_config

    path = args.config
    if args.resume is not None:
        if args.config is not None:
            raise ValueError("pass either --resume RUN_DIR or --config FILE, not both")
        path = args.resume / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no config.yaml in {str(args.resume)!r}")
    overrides = _flag_overrides(args) + list(args.overrides or [])
    if args.resume is not None and not args.out:
        overrides.append(f"run_dir={json.dumps(str(args.resume))}")
    cfg = resolve_config(preset=args.preset, path=path, overrides=overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if not cfg.data.root:
        raise ValueError("no training images: pass --data DIR (or set data.root)")
    from anyup.train.trainer import train

    path = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)  # the command's result: the exported model
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from anyup.train.report import evaluate_run, markdown_table, plot_curves

    refs = {}
    for item in args.reference or []:
        label, sep, value = item.partition("=")
        if not sep or not label or not value:
            raise ValueError(f"--reference {item!r} must look like LABEL=NAME_OR_PATH")
        refs[label] = value
    weights = Path(args.model) if args.model else None
    rows = evaluate_run(args.run_dir, refs, device=args.device, weights=weights)
    print(markdown_table(rows))
    if args.plot:
        encoders = list(dict.fromkeys(r["encoder"] for r in rows))
        lines = [
            {"method": label, "cosine": sum(r["cosine"] for r in rows if r["method"] == label) / len(encoders)}
            for label in refs
        ]
        print(f"plot: {plot_curves(args.run_dir, args.plot, lines)}")
    return 0
