#!/usr/bin/env bash
# Lint, format and type checks; .ci/run runs this script (see CONTRIBUTING.md, "Lint and types").
# Usage: tools/lint.sh            (from anywhere; needs `pip install ruff mypy`)
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check anyup tests benchmarks docs
ruff format --check anyup tests benchmarks docs
mypy anyup
