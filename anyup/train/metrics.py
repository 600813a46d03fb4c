"""Scalars of a run: always ``metrics.csv``, plus TensorBoard events when tensorboard is installed."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anyup.train.checkpoint import atomic_write

logger = logging.getLogger(__name__)


class MetricsWriter:
    """Append rows ``{column: value}`` to ``<run_dir>/metrics.csv`` (fixed columns, blank = not measured).

    On resume (``resume_step`` given) rows logged after that step are dropped, so the file of a
    resumed run matches an uninterrupted one; without it the file starts empty.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        columns: Sequence[str],
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.columns = ["step", *[c for c in columns if c != "step"]]
        self._rewrite(resume_step)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_step)
            except ImportError:
                logger.info("tensorboard is not installed; scalars go to %s only", self.path)

    def _rewrite(self, resume_step: int | None) -> None:
        rows: list[dict[str, str]] = []
        if self.path.is_file() and resume_step is not None:
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)

        atomic_write(self.path, write)

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": step, **{k: _fmt(v) for k, v in values.items() if k in self.columns}}
        unknown = sorted(set(values) - set(self.columns))
        if unknown:
            logger.debug("metrics not in metrics.csv columns: %s", unknown)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def read_metrics(path: str | os.PathLike) -> list[dict[str, float | str]]:
    """Rows of a ``metrics.csv`` with numbers parsed (blank cells dropped)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, float | str] = {}
            for k, v in r.items():
                if v in ("", None):
                    continue
                try:
                    row[k] = float(v)
                except ValueError:
                    row[k] = v
            out.append(row)
    return out
