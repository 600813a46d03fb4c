"""The `anyup` command line as a whole: one flag = one meaning, the table of contents, renamed flags."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anyup.cli import _COMMAND_MODULES, build_parser, main
from anyup.cli._flags import ListAction, RenamedFlag, RenamedList, SetAction

REPO = Path(__file__).resolve().parents[1]


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                key = f"{prefix} {name}".strip()
                children = _leaf_parsers(sub, key)
                out.update(children or {key: sub})
    return out


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


LEAVES = _leaf_parsers(build_parser())


def test_every_command_group_is_registered_and_listed_in_help(capsys):
    assert {
        "upsample",
        "upsample-signal",
        "sample-image",
        "encoders",
        "weights",
        "viz attention",
        "eval run",
        "train",
        "train-eval",
    } <= set(LEAVES)
    assert all(m.startswith("anyup.cli.") for m in _COMMAND_MODULES[:6])
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    # a table of contents: group titles, then one line per command, in that order
    for title, command in [
        ("Upsample", "upsample"),
        ("Encoders", "encoders"),
        ("Weights", "weights"),
        ("Pictures", "viz"),
        ("Evaluate", "eval"),
        ("Train", "train-eval"),
    ]:
        assert f"\n  {title}\n" in text and f"\n    {command} " in text
    assert text.index("  Upsample") < text.index("  Evaluate") < text.index("  Train")
    assert "--encoder-weights" in text and "--set KEY=VALUE" in text


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_shared_flags_mean_the_same_everywhere(name):
    p = LEAVES[name]
    model = _option(p, "--model")
    if model is not None:  # always AnyUp weights
        assert model.dest == "model" and model.metavar == "NAME_OR_PATH", name
    weights = _option(p, "--weights")
    if weights is not None:  # only as the hidden old spelling of a renamed flag
        assert isinstance(weights, RenamedFlag) and weights.help == argparse.SUPPRESS, name
    enc = _option(p, "--encoder")
    if enc is not None and not isinstance(enc, RenamedList):  # one encoder name; lists are --encoders
        assert enc.dest == "encoder" and enc.nargs is None, name
    ew = _option(p, "--encoder-weights")
    if ew is not None:  # the encoder's own file
        assert ew.dest == "encoder_weights" and enc is not None, name
    s = _option(p, "--set")
    if s is not None:
        assert isinstance(s, SetAction), name
    for flag in ("--encoders", "--methods", "--datasets", "--tasks", "--data", "--val-data"):
        a = _option(p, flag)
        if a is not None:
            assert isinstance(a, ListAction), (name, flag)


def test_list_and_set_conventions():
    p = LEAVES["eval run"]
    args = p.parse_args(
        ["--out", "o", "--methods", "bilinear,jbu", "--methods", "anyup", "--set", "epochs=1", "--set", "seeds=0,1"]
    )
    assert args.methods == ["bilinear", "jbu", "anyup"] and args.set == ["epochs=1", "seeds=0,1"]
    assert LEAVES["upsample"].parse_args(
        ["x", "--out", "o", "--layer", "stage2,stage3", "--layer", "stage4"]
    ).layer == ["stage2", "stage3", "stage4"]
    # one value per list flag: a positional argument after it is not swallowed
    args = LEAVES["upsample"].parse_args(["--layer", "stage4", "photo.png", "--out", "o"])
    assert args.layer == ["stage4"] and args.inputs == ["photo.png"]
    with pytest.raises(SystemExit):
        p.parse_args(["--out", "o", "--set", "epochs"])  # not KEY=VALUE


def test_renamed_flags_keep_working_with_a_deprecation_warning(capsys):
    p = LEAVES["upsample"]
    with pytest.warns(DeprecationWarning, match="--weights is deprecated.*use --encoder-weights"):
        args = p.parse_args(["x.png", "--out", "o", "--weights", "enc.pth"])
    assert args.encoder_weights == "enc.pth"
    with pytest.warns(DeprecationWarning, match="use --model"):
        args = LEAVES["eval fidelity"].parse_args(["--out", "o", "--weights", "anyup_paper"])
    assert args.model == "anyup_paper"
    with pytest.warns(DeprecationWarning, match="use --model"):
        assert LEAVES["train-eval"].parse_args(["run", "--weights", "m.safetensors"]).model == "m.safetensors"
    with pytest.warns(DeprecationWarning, match="--encoders"):
        assert LEAVES["train"].parse_args(["--encoder", "a", "b"]).encoders == ["a", "b"]
    with pytest.warns(DeprecationWarning, match="--set a=1 --set b=2"):  # the old `--set a=1 b=2`
        assert LEAVES["train"].parse_args(["--set", "a=1", "b=2"]).overrides == ["a=1", "b=2"]
    with pytest.warns(DeprecationWarning, match="--data a,b"):
        assert LEAVES["train"].parse_args(["--data", "a", "b"]).data == ["a", "b"]


def test_python_dash_m_anyup_is_the_command():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, "-m", "anyup", "--help"], check=False, capture_output=True, text=True, env=env, cwd=REPO
    )
    assert res.returncode == 0 and "commands:" in res.stdout and "upsample-signal" in res.stdout
