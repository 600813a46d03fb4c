"""Rebuild README.md and the reference pages docs/*.md from the sections in docs/readme/.

    python docs/build_readme.py          # write README.md and docs/<page>.md
    python docs/build_readme.py --check  # exit 1 if any of them is out of date

README.md is what a new user reads first: the two commands, a picture, five lines of usage and a
table of links. The reference material lives in one page per topic under docs/, each built from
its section files (edit those, not the generated pages). To add a section, add its file name to
the README or to a page in ``PAGES``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "docs" / "readme"
README_SECTIONS = ["head"]
# docs/<page>.md <- its sections from docs/readme/, in order
PAGES: dict[str, list[str]] = {
    "upsample": ["encoders"],
    "cli": ["cli"],
    "python": ["core"],
    "ecosystem": ["ecosystem"],
    "errors": ["errors"],
    "engine": ["engine"],
    "performance": ["bench"],
    "model-card": ["offline_card"],
    "baselines-datasets": ["baselines_datasets"],
    "evaluation": ["eval"],
    "training": ["train"],
}
SECTIONS = README_SECTIONS + [s for sections in PAGES.values() for s in sections]  # every section file


def _join(sections: list[str]) -> str:
    return "\n".join((SOURCES / f"{name}.md").read_text().rstrip("\n") + "\n" for name in sections)


def build() -> str:
    """README.md's text."""
    return _join(README_SECTIONS).replace("](../images/", "](docs/images/")


def build_page(page: str) -> str:
    """docs/<page>.md's text (image links relative to docs/)."""
    sources = ", ".join(f"docs/readme/{s}.md" for s in PAGES[page])
    note = f"<!-- Generated from {sources} by docs/build_readme.py: edit the source, then rebuild. -->\n\n"
    body = _join(PAGES[page]).replace("](../images/", "](images/").replace("](docs/images/", "](images/")
    if body.startswith("## "):  # the page's first heading is its title
        body = body[1:]
    body = re.sub(r"\]\(([^)#:\s]+)\)", _from_docs, body)
    return note + body + "\n[Back to the README](../README.md)\n"


def _from_docs(match: re.Match) -> str:
    """A link written relative to the repository root (as in the README), made relative to docs/."""
    target = match.group(1)
    if not (ROOT / "docs" / target).exists() and (ROOT / target).exists():
        target = f"../{target}"
    return f"]({target})"


def outputs() -> dict[Path, str]:
    files = {ROOT / "README.md": build()}
    files.update({ROOT / "docs" / f"{page}.md": build_page(page) for page in PAGES})
    return files


def main() -> int:
    files = outputs()
    if "--check" in sys.argv:
        stale = [str(p.relative_to(ROOT)) for p, text in files.items() if not p.is_file() or p.read_text() != text]
        if stale:
            sys.stderr.write(f"out of date: {', '.join(stale)} (run `python docs/build_readme.py`)\n")
        return 1 if stale else 0
    for path, text in files.items():
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
