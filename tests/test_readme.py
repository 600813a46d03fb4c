"""README.md is built from docs/readme/ and starts with the set-up and test commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_built_from_sections():
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "build_readme.py"), "--check"], cwd=ROOT)
    assert res.returncode == 0, "README.md is out of date: run `python docs/build_readme.py`"


def test_readme_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert block[0].startswith("pip install torch==2.14.1 torchvision==0.29.1") and "anyup upsample" in block[0]
    assert block[1] == "python -m pytest -q"
    run_line = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in l]
    assert any("python -m pytest -q" in l for l in run_line)
