"""The benchmark scripts' own logic (not their timings): what they compute from the timings they take."""

from __future__ import annotations

import pytest

from benchmarks import memory_speed


def test_paired_interleaves_and_reports_per_round_ratios():
    r = memory_speed.worker("paired", 56, 16, None, 14, rounds=3)
    t = r["seconds_by_round"]
    assert set(t) == {"floor", "ours", "ours_bf16"} and all(len(v) == 3 for v in t.values())
    assert all(s > 0 for v in t.values() for s in v)
    assert r["ours_vs_floor"] == pytest.approx([o / f for o, f in zip(t["ours"], t["floor"], strict=True)])
    assert r["bf16_vs_f32"] == pytest.approx([h / o for h, o in zip(t["ours_bf16"], t["ours"], strict=True)])
    assert r["ours_vs_floor_median"] == pytest.approx(sorted(r["ours_vs_floor"])[1])
    assert r["best_ours_vs_best_floor"] == pytest.approx(min(t["ours"]) / min(t["floor"]))
    assert 0.0 <= r["steal_share"] <= 1.0
    lines = memory_speed.paired_lines(r)
    assert any(f"median {r['ours_vs_floor_median']:.2f}×" in line for line in lines)


def test_paired_lines_without_a_result_say_why():
    assert memory_speed.paired_lines({"note": "timed out after 10 s"}) == ["* paired: timed out after 10 s"]


def test_cpu_times_reads_steal_and_total():
    steal, total = memory_speed.cpu_times()
    assert 0 <= steal <= total
