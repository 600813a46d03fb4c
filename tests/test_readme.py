"""README.md and docs/*.md are built from docs/readme/; the README's two commands and every command
block marked ``<!-- runnable -->`` in docs/readme/ work as written.

The slow tests here run the documentation itself:

* ``test_readme_two_lines_in_a_fresh_venv``: ``git clone`` of this repository (its committed HEAD)
  into a temp folder, a fresh ``python -m venv --system-site-packages`` (so torch is not downloaded
  again; pip still installs the package and any missing dependency as the line says), then the
  README's first line verbatim with the venv first on PATH, then its second line verbatim with
  ``PYTEST_ADDOPTS`` narrowing it to collecting every test (all test modules import, so every
  test dependency is installed) and running the fast tests of this file (``.ci/run`` runs the
  whole suite with that same line).
* ``test_runnable_blocks``: every marked block of a section file, in order, in one temp folder,
  with ``anyup`` = this checkout; a block followed by ``<!-- output -->`` must print each line of
  the table or text under that marker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "docs" / "readme"
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"
FRESH = "ANYUP_README_FRESH_VENV"  # set inside the fresh venv's test run (no recursion)


def _readme_lines() -> tuple[str, str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash") + 1
    return lines[start], lines[start + 1]


def test_readme_is_built_from_sections():
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "build_readme.py"), "--check"], check=False, cwd=ROOT)
    assert res.returncode == 0, "README.md or docs/*.md is out of date: run `python docs/build_readme.py`"


def test_readme_starts_with_the_two_commands():
    first, second = _readme_lines()
    assert (ROOT / "README.md").read_text().splitlines()[2] == "```bash"  # the very first block
    assert first.startswith("pip install torch==2.14.1 torchvision==0.29.1") and "anyup upsample" in first
    assert second == "python -m pytest -q"
    run_line = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in l]
    assert any("python -m pytest -q" in l for l in run_line)
    # everything the second line needs comes from the first: the extra it installs has pytest
    extra = re.search(r'pip install -e "\.\[(\w+)\]"', first).group(1)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("pytest") for d in extras[extra]) and any(d.startswith("hypothesis") for d in extras[extra])
    # ... and everything it writes goes under out/
    for path in re.findall(r"(\S+\.(?:png|jpg|safetensors))", first):
        assert path.startswith("out/"), path
    assert re.search(r"--out out/?( |$)", first)


def test_readme_is_short_and_links_the_pages():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 80
    assert text.index("![") < text.index("### Reference")  # a picture before the reference material
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("build_readme", ROOT / "docs" / "build_readme.py")
    build = module_from_spec(spec)
    spec.loader.exec_module(build)
    for page in build.PAGES:
        assert f"(docs/{page}.md)" in text and (ROOT / "docs" / f"{page}.md").is_file()
    for md in [ROOT / "README.md", *(ROOT / "docs" / f"{p}.md" for p in build.PAGES)]:
        for target in re.findall(r"\]\(([^)#:]+\.(?:png|md))\)", md.read_text()):
            assert (md.parent / target).is_file(), f"{md.name}: broken link {target}"


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get(FRESH)), reason="already inside the fresh-venv run")
def test_readme_two_lines_in_a_fresh_venv(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    first, second = _readme_lines()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv), PIP_DISABLE_PIP_VERSION_CHECK="1"
    )
    res = subprocess.run(["bash", "-c", first], check=False, cwd=clone, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # the package came from the clone, into the venv
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import anyup; print(anyup.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(clone.resolve()), where
    assert (clone / "out" / "astronaut.safetensors").is_file() and (clone / "out" / "astronaut_pca.png").is_file()
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.split("\n")  # fmt: skip
    left = sorted(l[3:] for l in status if l.strip())
    assert all(p == "out/" or p.endswith(".egg-info/") or "__pycache__" in p for p in left), left
    for opts in ("--collect-only", "tests/test_readme.py -m 'not slow'"):
        res = subprocess.run(["bash", "-c", second], check=False, cwd=clone, capture_output=True, text=True,
                             env={**env, "PYTEST_ADDOPTS": opts, FRESH: "1"})  # fmt: skip
        assert res.returncode == 0, (opts, res.stdout[-3000:] + res.stderr[-3000:])


def _runnable_blocks(path: Path) -> list[tuple[str, list[str]]]:
    """``(script, expected output lines)`` of each block marked ``<!-- runnable -->`` in ``path``."""
    lines = path.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != "<!-- runnable -->":
            continue
        assert lines[i + 1] == "```bash", f"{path.name}:{i + 2}: a runnable marker must precede a ```bash block"
        end = lines.index("```", i + 2)
        expected: list[str] = []
        j = end + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j < len(lines) and lines[j].strip() == "<!-- output -->":
            j += 1
            fence = lines[j].startswith("```")
            j += fence
            while j < len(lines) and lines[j].strip() and not lines[j].startswith("```"):
                expected.append(lines[j])
                j += 1
        blocks.append(("\n".join(lines[i + 2 : end]), expected))
    return blocks


RUNNABLE = sorted(p.name for p in SOURCES.glob("*.md") if _runnable_blocks(p))


def test_runnable_blocks_are_found():
    assert {"encoders.md", "train.md"} <= set(RUNNABLE)


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNNABLE)
def test_runnable_blocks(name, tmp_path):
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "anyup").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m anyup "$@"\n')
    (shim / "anyup").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    for script, expected in _runnable_blocks(SOURCES / name):
        if "anyup_multi_backbone" in script:  # the published weights: ../shared/weights on project machines
            if not SHARED_WEIGHTS.is_dir():
                if os.environ.get("CI"):
                    pytest.fail(f"{SHARED_WEIGHTS} is missing: CI must provide ../shared beside the repository")
                pytest.skip(f"{SHARED_WEIGHTS} not present")
            env["ANYUP_WEIGHTS_DIR"] = str(SHARED_WEIGHTS)
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=False, cwd=work, env=env, capture_output=True,
                             text=True)  # fmt: skip
        assert res.returncode == 0, f"{name}:\n{script}\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        printed = res.stdout.splitlines()
        missing = [line for line in expected if line not in printed]
        assert not missing, (
            f"{name}: the block\n{script}\ndid not print\n" + "\n".join(missing) + "\n(it printed)\n" + res.stdout
        )
