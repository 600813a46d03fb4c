"""Rebuild README.md from the sections in docs/readme/ (run from the repository root).

    python docs/build_readme.py          # write README.md
    python docs/build_readme.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["head", "encoders", "ecosystem", "core", "errors", "bench", "offline_card", "baselines_datasets", "eval", "train"]


def build() -> str:
    parts = [(ROOT / "docs" / "readme" / f"{name}.md").read_text().rstrip("\n") + "\n" for name in SECTIONS]
    return "\n".join(parts).replace("](../images/", "](docs/images/")


def main() -> int:
    text = build()
    readme = ROOT / "README.md"
    if "--check" in sys.argv:
        return 0 if readme.read_text() == text else 1
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
