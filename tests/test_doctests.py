"""The docstring examples of the package run and print what they show.

Every module under ``anyup/`` whose source contains ``>>>`` is collected (a new example is picked up
without editing this file). Examples that need the network, a user's file or a heavy optional model
are marked ``# doctest: +SKIP`` in the docstring; everything else runs offline. The same examples run
with ``python -m pytest --doctest-modules anyup/<module>.py``.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anyup"

# Modules whose examples cannot be collected yet (strict xfail: the test fails once they are fixed, so
# the entry gets removed). Empty: keep it so.
KNOWN_BROKEN: dict[str, str] = {}

# Modules with at least one example that must run (not all +SKIP): guards against skipping everything.
MUST_RUN = {
    "anyup",
    "anyup.model",
    "anyup.baselines",
    "anyup.encoders",
    "anyup.encoders.registry",
    "anyup.viz",
    "anyup.viz.pca",
    "anyup.eval.datasets",
    "anyup.train",
    "anyup.train.config",
    "anyup._registry",
}


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


MODULES = _modules_with_examples()


def _param(name: str):
    if name in KNOWN_BROKEN:
        return pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN_BROKEN[name], raises=ValueError, strict=True))
    return name


def test_examples_are_found():
    assert MUST_RUN <= set(MODULES), sorted(MUST_RUN - set(MODULES))


@pytest.mark.parametrize("name", [_param(n) for n in MODULES])
def test_docstring_examples(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, name)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
    if name in MUST_RUN:
        assert result.attempted > 0, f"every example of {name} is skipped"
