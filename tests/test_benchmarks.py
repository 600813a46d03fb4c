"""The benchmark scripts' own logic (not their timings): what they compute from the timings they take."""

from __future__ import annotations

import pytest

from benchmarks import memory_speed


def test_paired_interleaves_and_reports_per_round_ratios():
    r = memory_speed.worker("paired", 56, 16, None, 14, rounds=3)
    t = r["seconds_by_round"]
    assert set(t) == {"floor", "ours", "ours_bf16", "ours_1worker"} and all(len(v) == 3 for v in t.values())
    assert all(s > 0 for v in t.values() for s in v)
    assert r["ours_vs_floor"] == pytest.approx([o / f for o, f in zip(t["ours"], t["floor"], strict=True)])
    assert r["bf16_vs_f32"] == pytest.approx([h / o for h, o in zip(t["ours_bf16"], t["ours"], strict=True)])
    assert r["ours_vs_floor_median"] == pytest.approx(sorted(r["ours_vs_floor"])[1])
    assert r["best_ours_vs_best_floor"] == pytest.approx(min(t["ours"]) / min(t["floor"]))
    assert r["one_worker_vs_ours"] == pytest.approx([w / o for w, o in zip(t["ours_1worker"], t["ours"], strict=True)])
    assert 0.0 <= r["steal_share"] <= 1.0
    lines = memory_speed.paired_lines(r)
    assert any(f"median {r['ours_vs_floor_median']:.2f}×" in line for line in lines)
    assert any(f"median {r['one_worker_vs_ours_median']:.2f}×" in line for line in lines)


def test_paired_lines_without_a_result_say_why():
    assert memory_speed.paired_lines({"note": "timed out after 10 s"}) == ["* paired: timed out after 10 s"]


def test_cpu_times_reads_steal_and_total():
    steal, total = memory_speed.cpu_times()
    assert 0 <= steal <= total


def test_gpu_check_script_dry_run_on_cpu(tmp_path):
    """tools/gpu_check.sh (the prepared one-call GPU check) runs its steps end to end on the CPU."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "DEVICE": "cpu",
        "SIZES": "56",
        "ATTN_SIZE": "56",
        "CHANNELS": "16",
        "BACKENDS": "matmul sdpa",
        "GRAD_SIZE": "56",
    }
    res = subprocess.run(["bash", str(repo / "tools" / "gpu_check.sh")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "torch" in (tmp_path / "env.txt").read_text()
    assert "skipped" in (tmp_path / "cuda_tests.log").read_text()  # no CUDA here: the CUDA tests skip, with the reason
    backends = (tmp_path / "attention_backends.md").read_text()
    assert "| matmul |" in backends and "| sdpa |" in backends
    table = (tmp_path / "gpu" / "gpu.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 56² |")]
    assert [r.split("|")[2].strip() for r in rows] == ["float32", "bfloat16"]
    assert float(rows[0].split("|")[-2]) < 1e-4  # float32 ours vs the float32 dense reference
    steps = (tmp_path / "grad_step.txt").read_text()
    assert "ours, cpu, 56²" in steps and "dense, cpu, 56²" in steps


def test_stages_split_one_call_and_compare_each_stage_with_its_floor(tmp_path):
    import json

    from benchmarks import stages

    assert stages.main(["--size", "56", "--channels", "16", "--rounds", "2", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "stages.json").read_text())
    assert set(r["stages"]) == {"encoders", "keys", "decode"} and r["mode"] == "whole"
    flops = memory_speed.stage_flops(56, 4, 16)
    rates = [g * 1e9 for g in r["gemm_gflops"]]
    for k, s in r["stages"].items():
        assert len(s["seconds"]) == 2 and all(x > 0 for x in s["seconds"])
        assert s["vs_floor"] == pytest.approx([x * g / flops[k] for x, g in zip(s["seconds"], rates, strict=True)])
    for i, total in enumerate(r["call_seconds"]):
        assert total == pytest.approx(sum(s["seconds"][i] for s in r["stages"].values()))
    assert sum(flops.values()) == pytest.approx(memory_speed.method_flops(56, 4, 16))
    text = (tmp_path / "stages.md").read_text()
    assert "| encoders |" in text and "| whole call |" in text and "python benchmarks/stages.py --size 56" in text


def test_stages_compare_worker_counts_round_by_round(tmp_path):
    import json

    from benchmarks import stages

    argv = ["--size", "56", "--channels", "16", "--rounds", "2", "--workers", "1", "2", "--out", str(tmp_path)]
    assert stages.main(argv) == 0
    r = json.loads((tmp_path / "stages.json").read_text())
    assert r["workers"] == 1 and set(r["by_workers"]) == {"1", "2"}
    one, two = r["by_workers"]["1"], r["by_workers"]["2"]
    assert r["stages"] == one["stages"]
    for k in ("encoders", "keys", "decode"):
        want = sorted(a / b for a, b in zip(one["stages"][k]["seconds"], two["stages"][k]["seconds"], strict=True))
        assert r["speedup_vs_first"]["2"][k] == pytest.approx(sum(want) / 2)  # median of two rounds
    text = (tmp_path / "stages.md").read_text()
    assert "**2 worker threads**" in text and "| 2 |" in text
    with pytest.raises(SystemExit):
        stages.main(["--workers", "0"])


def test_grad_step_times_a_training_step_and_reports_gradient_checksums(capsys):
    from benchmarks import grad_step

    r = grad_step.run(size=56, channels=8, rounds=2, max_memory="1GiB")
    assert len(r["seconds"]) == 2 and all(s > 0 for s in r["seconds"])
    assert r["features_grad_sum"] != 0 and r["parameter_grad_abs_sum"] > 0
    again = grad_step.run(size=56, channels=8, rounds=1, max_memory="1GiB")
    assert again["features_grad_sum"] == r["features_grad_sum"]  # deterministic: comparable across commits
    dense = grad_step.run(size=56, channels=8, rounds=1, max_memory="1GiB", method="dense")
    assert abs(dense["features_grad_sum"] - r["features_grad_sum"]) <= 1e-4 * abs(r["features_grad_sum"])
    assert grad_step.main(["--size", "56", "--channels", "8", "--rounds", "1", "--methods", "ours", "dense"]) == 0
    printed = capsys.readouterr().out
    assert "ours, cpu, 56²" in printed and "dense, cpu, 56²" in printed
