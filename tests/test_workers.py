"""The per-pixel encoders' chunks on several CPU threads (anyup.engine.workers)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading

import pytest
import torch

from anyup import AnyUp, AnyUpConfig
from anyup.engine import EngineOptions, plan_for
from anyup.engine import run as engine_run
from anyup.engine import workers as workers_module
from anyup.engine.plan import Geometry, make_plan
from anyup.engine.workers import ChunkWorkers, check_workers, default_workers, openmp_backend

needs_openmp = pytest.mark.skipif(not openmp_backend(), reason="PyTorch's intra-op backend here is not OpenMP")


def _inputs(b=1, c=6, hw=(16, 20), low=(4, 5), dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, *hw, generator=g).to(dtype), torch.randn(b, c, *low, generator=g).to(dtype)


def test_map_returns_results_in_range_order_from_several_threads():
    ranges = [(i, i + 1) for i in range(40)]
    threads, workers = set(), set()

    def job(p0, p1, w):
        threads.add(threading.get_ident())
        workers.add(w)
        torch.mm(torch.ones(64, 64), torch.ones(64, 64))  # releases the GIL: the threads overlap
        return p0 * 10 + p1

    assert ChunkWorkers(3).map(job, ranges) == [i * 10 + i + 1 for i in range(40)]
    assert workers <= {0, 1, 2} and threading.get_ident() not in threads
    assert ChunkWorkers(1).map(job, ranges[:3]) == [1, 12, 23]  # one worker: the calling thread


def test_map_reraises_a_workers_error_and_stops_taking_chunks():
    done = []

    def job(p0, p1, w):
        if p0 == 3:
            raise RuntimeError("chunk 3 failed")
        done.append(p0)
        return p0

    with pytest.raises(RuntimeError, match="chunk 3 failed"):
        ChunkWorkers(2).map(job, [(i, i + 1) for i in range(500)])
    assert len(done) < 499


@needs_openmp
def test_worker_threads_use_one_intra_op_thread_and_leave_the_callers_alone():
    before = torch.get_num_threads()
    seen = ChunkWorkers(2).map(lambda p0, p1, w: torch.get_num_threads(), [(0, 1), (1, 2), (2, 3)])
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == before


def test_check_workers_names_the_bad_value():
    assert check_workers(None) is None and check_workers(3) == 3
    for bad in (0, -2, True, 2.0, "2"):
        with pytest.raises(ValueError, match=rf"cpu_workers must be None .* got {bad!r}"):
            check_workers(bad)
    with pytest.raises(ValueError, match="cpu_workers"):
        AnyUp(AnyUpConfig(cpu_workers=0)).eval()(*_inputs())


def test_default_workers_follow_torch_threads_on_the_cpu_only():
    assert default_workers(torch.device("cuda")) == 1
    want = torch.get_num_threads() if openmp_backend() else 1
    assert default_workers(torch.device("cpu")) == want


def _geometry() -> Geometry:
    return Geometry(1, 384, (448, 448), (32, 32), (448, 448), 128, 4, 0.1, 4, logits_budget=4 << 20)


def test_plan_counts_scratch_per_worker_and_falls_back_to_fewer_workers():
    g = _geometry()
    cap = 8 << 30
    one, four = make_plan(g, cap, None, False, 1), make_plan(g, cap, None, False, 4)
    assert (one.mode, one.workers, four.mode, four.workers) == ("whole", 1, "whole", 4)
    assert (four.chunk, four.tile, four.attn_tile) == (one.chunk, one.tile, one.attn_tile)
    per_worker = 9 * 128 * one.chunk * 4 + 5 * 128 * one.chunk * 4  # chunk buffers and rotary angles
    assert four.estimate - one.estimate == 3 * per_worker
    # a cap between the two: the same plan with fewer workers
    tight = make_plan(g, one.estimate + per_worker, None, False, 4)
    assert tight == dataclasses.replace(one, workers=2, estimate=one.estimate + per_worker, cap=tight.cap)
    # where extra workers would change the plan (a smaller tile, the columns path of the unification), none
    least = make_plan(g, one.estimate, None, False, 4)
    assert least == dataclasses.replace(one, cap=least.cap)
    # the smallest plan is the one-worker minimum: a cap that fits it still runs
    with pytest.raises(ValueError) as err:
        make_plan(g, 1 << 20, None, False, 4)
    with pytest.raises(ValueError) as err1:
        make_plan(g, 1 << 20, None, False, 1)
    assert str(err.value) == str(err1.value)
    assert make_plan(g, 8 << 30, None, True, 4).workers == 1  # autograd runs the modules


def test_engine_options_choose_the_workers():
    m = AnyUp().eval()
    image, feats = _inputs()
    for n in (1, 3):
        assert plan_for(m, image, feats, (16, 20), EngineOptions(cpu_workers=n)).workers == n
    auto = plan_for(m, image, feats, (16, 20), EngineOptions()).workers
    assert auto == default_workers(torch.device("cpu"))


def _forced(mode: str, **extra):
    real = engine_run.make_plan

    def make(g, cap, tile_size, autograd, workers=1):
        plan = real(g, cap, tile_size, autograd, workers)
        return dataclasses.replace(plan, mode=mode, chunk=48, key_rows=2, tile=5, **extra)

    return make


MODES = {
    "whole": {},
    "resident": {},
    "cached": {"cache_pixels": 320, "key_prefix": 144},
    "streamed": {"cache_pixels": 96},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_gives_the_one_worker_output_with_several_workers(monkeypatch, mode):
    """Chunks of 48 pixels on 1-3 threads: float64 outputs agree to 1e-12 (the statistics are merged
    in chunk order), and float32 repeats with three workers are bit-identical."""
    torch.manual_seed(0)
    m = AnyUp().double().eval()
    image, feats = _inputs(dtype=torch.float64)
    monkeypatch.setattr(engine_run, "make_plan", _forced(mode, **MODES[mode]))
    with torch.no_grad():
        outs = [m(image, feats, (11, 13), max_memory="4GiB", cpu_workers=n) for n in (1, 2, 3)]
        assert all((o - outs[0]).abs().max() <= 1e-12 for o in outs[1:])
        m32 = m.float()
        image32, feats32 = image.float(), feats.float()
        runs = [m32(image32, feats32, (16, 20), max_memory="4GiB", cpu_workers=3) for _ in range(3)]
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


def _child(queue) -> None:
    # One intra-op thread, as DataLoader workers run: this GNU OpenMP build hangs on any parallel
    # region in a forked child once the parent has used its threads (plain torch.mm too).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = AnyUp().eval()
    image, feats = _inputs()
    with torch.no_grad():
        queue.put(m(image, feats, cpu_workers=2).sum().item())


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_fresh_worker_threads():
    """The pool's threads do not survive fork; the child starts its own (anyup.engine.workers)."""
    torch.manual_seed(0)
    m = AnyUp().eval()
    image, feats = _inputs()
    with torch.no_grad():
        want = m(image, feats, cpu_workers=2).sum().item()  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    proc.join(timeout=120)
    if proc.exitcode is None:
        proc.kill()
    assert proc.exitcode == 0, f"child exit code {proc.exitcode}"
    assert queue.get(timeout=5) == pytest.approx(want, rel=1e-6)


def test_workers_run_under_the_callers_grad_and_inference_modes():
    modes = lambda p0, p1, w: (torch.is_grad_enabled(), torch.is_inference_mode_enabled())  # noqa: E731
    items = [(0, 1), (1, 2), (2, 3)]
    with torch.no_grad():
        assert ChunkWorkers(2).map(modes, items) == [(False, False)] * 3
    with torch.inference_mode():
        assert ChunkWorkers(2).map(modes, items) == [(False, True)] * 3
    assert ChunkWorkers(2).map(modes, items) == [(True, False)] * 3


def test_model_under_inference_mode_with_workers(monkeypatch):
    """In-place writes to inference tensors are only allowed inside inference mode: the workers inherit it."""
    monkeypatch.setattr(engine_run, "make_plan", _forced("whole"))  # chunks of 48 pixels: several
    torch.manual_seed(0)
    m = AnyUp().eval()
    image, feats = _inputs()
    with torch.no_grad():
        want = m(image, feats, cpu_workers=1)
    with torch.inference_mode():
        got = m(image, feats, cpu_workers=2)
    assert (got - want).abs().max() <= 1e-6


@pytest.mark.parametrize("mode", ["whole", "streamed"])
def test_concurrent_calls_from_several_threads_share_the_pool(monkeypatch, mode):
    """Calls from several Python threads at once (a server's request threads) share one process-wide
    pool; one asks for more workers than the pool has, so it is replaced while the others run. Each
    call keeps its own scratch and statistics: every output equals the lone one-worker call's."""
    monkeypatch.setattr(engine_run, "make_plan", _forced(mode, **MODES[mode]))  # chunks of 48 pixels
    torch.manual_seed(0)
    m = AnyUp().double().eval()
    inputs = [_inputs(c=3 + i, dtype=torch.float64) for i in range(4)]
    with torch.no_grad():
        want = [m(image, feats, cpu_workers=1) for image, feats in inputs]
    got: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(inputs))}
    errors: list[BaseException] = []
    start = threading.Barrier(len(inputs))

    def serve(i: int) -> None:
        try:
            start.wait()
            with torch.no_grad():
                for _ in range(2):
                    got[i].append(m(*inputs[i], cpu_workers=2 + i))  # 2..5 workers: the pool grows mid-flight
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert workers_module._POOL_SIZE >= 5
    for i, outs in got.items():
        assert len(outs) == 2
        for out in outs:
            assert (out - want[i]).abs().max() <= 1e-12
