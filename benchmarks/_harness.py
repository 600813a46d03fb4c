"""Shared benchmark harness: each measurement in a fresh subprocess, peak working memory from RSS.

Working memory = peak RSS during the call minus RSS just before it (model and inputs loaded),
minus the output tensor. Results go to a new time-stamped folder under ``benchmarks/results/``
unless ``--out`` names one (committed results are never overwritten by accident).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(call, out_bytes: int) -> dict:
    """Run ``call()`` once; seconds and working bytes (peak RSS growth minus the output)."""
    before, peak_before = rss_bytes(), peak_rss_bytes()
    t0 = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - t0
    peak = peak_rss_bytes()
    working = max(peak, peak_before) - before - out_bytes
    del out
    return {"seconds": seconds, "working_bytes": max(working, 0)}


def run_worker(script: Path, args: list[str], env: dict | None = None, timeout: int = 3600) -> dict:
    """Run ``script --worker ARGS`` in a fresh interpreter; its last stdout line is a JSON dict."""
    cmd = [sys.executable, str(script), "--worker", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"note": f"timed out after {timeout} s"}
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines() or ["?"]
        return {"note": "failed: " + lines[-1][:160]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def out_dir(arg: str | None, name: str) -> Path:
    """``--out`` if given, else a new ``benchmarks/results/<name>-<UTC time>`` folder."""
    path = (
        Path(arg)
        if arg
        else ROOT / "benchmarks" / "results" / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def fmt_mib(b) -> str:
    return "—" if b is None else f"{b / 2**20:,.0f}"


def fmt_s(s) -> str:
    return "—" if s is None else f"{s:.2f}"
