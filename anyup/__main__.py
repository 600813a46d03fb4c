"""``python -m anyup ...``: the same as the ``anyup`` command."""

from __future__ import annotations

import sys

from anyup.cli import main

if __name__ == "__main__":
    sys.exit(main())
