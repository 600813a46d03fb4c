"""Held-out evaluation helpers (anyup.train.heldout): methods, the other window edge, the command line."""

from __future__ import annotations

import json

import pytest
import torch

from anyup.train.heldout import main, markdown, methods_from

pytestmark = pytest.mark.usefixtures("one_thread")


def test_methods_include_the_other_window_edge(random_model_file):
    methods = methods_from({"rand": str(random_model_file)}, soft_edge=["rand"])
    assert list(methods) == ["bilinear", "jbu", "rand", "rand soft edge"]
    g = torch.Generator().manual_seed(0)
    img, feats = torch.rand(1, 3, 40, 40, generator=g), torch.randn(1, 4, 5, 5, generator=g)
    outs = {k: f(img, feats, (40, 40)) for k, f in methods.items()}
    assert all(o.shape == (1, 4, 40, 40) for o in outs.values())
    assert (outs["rand"] - outs["rand soft edge"]).abs().max() > 1e-4  # the edge changes the weights


def test_markdown_bolds_the_best_and_averages():
    rows = [{"kind": "fidelity", "encoder": "e@a", "factor": 2, "bilinear": 0.5, "x": 0.6},
            {"kind": "fidelity", "encoder": "e@b", "factor": 2, "bilinear": 0.7, "x": 0.4}]  # fmt: skip
    text = markdown(rows, ["bilinear", "x"])
    assert "| e@a | 2x | 0.5000 | **0.6000** |" in text and "| **mean (2 layers)** | 2x | 0.6000 | 0.5000 |" in text


def test_cli_rejects_a_soft_edge_label_without_weights(tmp_path):
    with pytest.raises(SystemExit, match="--soft-edge \\['nope'\\]: not among the --weights labels"):
        main([str(tmp_path), "--weights", "a=anyup_offline", "--soft-edge", "nope"])


def test_merge_joins_runs_per_layer_and_ratio(tmp_path, capsys):
    from anyup.train.heldout import merge_rows

    a = [
        {"kind": "fidelity", "encoder": "e@1", "factor": 2, "bilinear": 0.5, "v1": 0.6},
        {"kind": "fidelity", "encoder": "e@2", "factor": 2, "bilinear": 0.4, "v1": 0.45},
    ]
    b = [{"kind": "fidelity", "encoder": "e@1", "factor": 2, "bilinear": 0.5, "v2": 0.7}]
    assert merge_rows([a, b]) == [
        {"kind": "fidelity", "encoder": "e@1", "factor": 2, "bilinear": 0.5, "v1": 0.6, "v2": 0.7}
    ]
    with pytest.raises(ValueError, match="bilinear on .* differs"):
        merge_rows([a, [dict(b[0], bilinear=0.9)]])
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert (
        "| encoder layer | ratio | bilinear | v1 | v2 |" in out and "| e@1 | 2x | 0.5000 | 0.6000 | **0.7000** |" in out
    )
