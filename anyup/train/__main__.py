"""``python -m anyup.train ...`` (also under ``torchrun``): the same as ``anyup train ...``."""

from __future__ import annotations

import sys

from anyup.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    verbose = [a for a in argv if a in ("-v", "-vv", "--verbose")]  # top-level flags of `anyup`
    sys.exit(main([*verbose, "train", *[a for a in argv if a not in verbose]]))
