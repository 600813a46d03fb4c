"""Chunks of the per-pixel encoders on several CPU threads, one core each.

A chunk of the per-pixel encoders is a few small operations on a (B, 128, 2048) block: GEMMs of
128x128x2048 and element-wise passes of 1 MiB. Split across cores by PyTorch's intra-op threads,
each such operation pays a fork/join and most of them are too small to share: on this project's
2-core CPU a 128x128x2048 GEMM ran only 1.1x faster on two cores than on one. Here instead each
worker thread runs whole chunks with one intra-op thread (``torch.set_num_threads(1)`` applies to
the calling thread under PyTorch's OpenMP backend), so the cores work on different chunks.

Results do not depend on which thread ran which chunk: a pass returns its chunks' results in
chunk order (:meth:`ChunkWorkers.map`) and the caller reduces them in that order. Each worker owns
its scratch buffers (the plan counts them, :mod:`anyup.engine.plan`).

The threads live in one process-wide pool, created on first use and dropped in a forked child
(the threads do not survive ``fork``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _one_thread() -> None:
    torch.set_num_threads(1)  # this worker's intra-op threads (OpenMP: per calling thread)


def _pool(size: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < size:
            old = _POOL
            _POOL = ThreadPoolExecutor(max_workers=size, thread_name_prefix="anyup-chunk", initializer=_one_thread)
            _POOL_SIZE = size
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def openmp_backend() -> bool:
    """True when PyTorch's intra-op threads are OpenMP ones (``set_num_threads`` is per thread)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def default_workers(device: torch.device) -> int:
    """Automatic worker count: ``torch.get_num_threads()`` on the CPU (the cores PyTorch may use,
    as the user set them), 1 on other devices or where ``set_num_threads`` is not per thread."""
    if device.type != "cpu" or not openmp_backend():
        return 1
    return max(1, torch.get_num_threads())


def check_workers(value: object) -> int | None:
    """``None`` (automatic) or a positive int, else a ValueError naming the value."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"cpu_workers must be None (automatic) or a positive int, got {value!r}")
    return value


class ChunkWorkers:
    """Run ``fn(*item, worker)`` for each item (a pixel range ``(p0, p1)``, a tile's corners) on
    ``count`` threads; results in item order.

    ``worker`` is the index (0 .. count-1) of the thread running the call: the caller's scratch
    buffers for that thread. The workers run under the caller's grad and inference modes (both are
    thread-local in PyTorch). With ``count == 1`` everything runs in the calling thread (with its
    own intra-op threads), exactly as a plain loop.
    """

    def __init__(self, count: int) -> None:
        self.count = max(1, int(count))

    def map(self, fn: Callable[..., T], items: Sequence[tuple[int, ...]]) -> list[T]:
        items = list(items)
        n = min(self.count, len(items))
        if n <= 1:
            return [fn(*item, 0) for item in items]
        results: list[T | None] = [None] * len(items)
        lock = threading.Lock()
        state = {"next": 0, "failed": False}
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def drain(worker: int) -> None:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                while True:
                    with lock:
                        i = state["next"]
                        if i >= len(items) or state["failed"]:
                            return
                        state["next"] = i + 1
                    try:
                        results[i] = fn(*items[i], worker)
                    except BaseException:
                        state["failed"] = True
                        raise

        futures = [_pool(self.count).submit(drain, w) for w in range(n)]
        wait(futures)  # every worker has stopped (a failure stops the others taking chunks)
        for f in futures:
            f.result()  # re-raises a worker's exception
        return results  # type: ignore[return-value]
