"""The real-depth ridge probe (anyup.eval.depth_probe): folds, the closed-form ridge, and one real scene."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from anyup.eval.depth_probe import (
    DepthProbeConfig,
    checkerboard_folds,
    halves_folds,
    markdown,
    probe_rmse,
    ridge_fit,
    run_probe,
    summary,
)


def test_folds_are_disjoint_guarded_checkerboards():
    a, b = checkerboard_folds(70, 90, block=16, guard=3)
    assert a.shape == (70, 90) and not (a & b).any()
    assert a[3, 3] and not a[2, 3] and not a[3, 2] and b[3, 19] and not a[3, 19]
    # a test pixel's nearest training pixel is at least 2 * guard away (Chebyshev distance)
    ya, xa = torch.nonzero(a, as_tuple=True)
    yb, xb = torch.nonzero(b, as_tuple=True)
    d = torch.maximum((ya[:, None] - yb[None]).abs(), (xa[:, None] - xb[None]).abs())
    assert int(d.min()) == 2 * 3 + 1
    # every pixel outside the guard bands is in exactly one fold
    inner = torch.ones(70, 90, dtype=torch.bool)
    for axis, n in ((0, 70), (1, 90)):
        idx = torch.arange(n) % 16
        band = (idx < 3) | (idx >= 13)
        inner &= ~(band[:, None] if axis == 0 else band[None, :])
    assert torch.equal(a | b, inner)


def test_halves_folds_and_the_split_option():
    a, b = halves_folds(10, 21, guard=2)
    assert a.shape == b.shape == (10, 21) and not (a & b).any()
    assert a[:, :8].all() and not a[:, 8:].any() and b[:, 12:].all() and not b[:, :12].any()
    g = torch.Generator().manual_seed(0)
    h, w = 64, 96
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    depth = 0.5 * yy + 0.2 * torch.sin(4 * yy)  # (H, W): the same rule in both halves
    valid = torch.ones(h, w, dtype=torch.bool)
    feats = torch.stack([yy, torch.sin(4 * yy), torch.randn(h, w, generator=g)])  # (3, H, W)
    halves = DepthProbeConfig(block=16, guard=2, split="halves")
    assert probe_rmse(feats, depth, valid, halves) < 1e-3
    # a feature that holds depth in one half only: the checkerboard fits both halves' pixels, the halves
    # split must extrapolate from one to the other
    leaky = torch.stack([torch.where(xx < 0, depth, torch.zeros_like(depth)), torch.randn(h, w, generator=g)])
    checker = replace(halves, split="checkerboard")
    assert probe_rmse(leaky, depth, valid, halves) > 1.2 * probe_rmse(leaky, depth, valid, checker)
    with pytest.raises(ValueError, match="split must be one of"):
        DepthProbeConfig(split="random")


def test_ridge_recovers_a_linear_map_and_picks_the_small_penalty():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) * torch.tensor([1.0, 10, 0.1, 3, 1, 2]) + 5
    w = torch.randn(6, generator=g)
    y = x @ w + 0.7
    groups = torch.arange(500) % 2 == 0
    predict, penalty = ridge_fit(x, y, groups=groups)
    assert penalty == 1e-5  # noiseless: the smallest penalty of the grid wins on the inner split
    q = torch.randn(50, 6, generator=g)
    torch.testing.assert_close(predict(q), (q @ w + 0.7).double(), atol=2e-3, rtol=0)
    # a constant channel is harmless; a large fixed penalty shrinks the prediction to the mean
    x2 = torch.cat([x, torch.full((500, 1), 3.0)], 1)
    predict2, _ = ridge_fit(x2, y, ridge=1e6)
    assert (predict2(x2) - y.double().mean()).abs().max() < 1e-3 * y.std()


def test_ridge_errors():
    with pytest.raises(ValueError, match=r"x must be \(N, C\)"):
        ridge_fit(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match="needs `groups`"):
        ridge_fit(torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="penalties must be > 0"):
        ridge_fit(torch.zeros(5, 2), torch.zeros(5), ridge=0.0)
    with pytest.raises(ValueError, match="guard"):
        DepthProbeConfig(block=8, guard=4)
    with pytest.raises(ValueError, match="input_scale"):
        DepthProbeConfig(input_scale=1.5)


def test_probe_rmse_orders_features_by_how_much_depth_they_carry():
    g = torch.Generator().manual_seed(1)
    h, w = 96, 128
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    depth = torch.sin(3 * xx) * torch.cos(2 * yy) + (xx > 0.3).float()  # (H, W) smooth part + a sharp edge
    valid = torch.rand(h, w, generator=g) > 0.1
    cfg = DepthProbeConfig(block=16, guard=2)
    exact = probe_rmse(depth[None], depth, valid, cfg)
    blurred = F.interpolate(F.avg_pool2d(depth[None, None], 16), size=(h, w), mode="bilinear")[0]  # (1, H, W)
    noise = torch.randn(4, h, w, generator=g)
    assert exact < 1e-4  # the smallest penalty of the grid shrinks a little
    assert probe_rmse(torch.cat([blurred, noise]), depth, valid, cfg) > 0.05
    assert probe_rmse(torch.cat([blurred, noise]), depth, valid, cfg) < probe_rmse(noise, depth, valid, cfg)
    with pytest.raises(ValueError, match="features"):
        probe_rmse(depth[None], depth[:-1], valid, cfg)


def test_markdown_and_summary():
    rows = [
        {"scene": "s", "encoder": "e@a", "ratio": 8, "constant": 1.0, "bilinear": 0.5, "x": 0.4},
        {"scene": "t", "encoder": "e@a", "ratio": 8, "constant": 1.0, "bilinear": 0.5, "x": 0.6},
    ]
    s = summary(rows, ["bilinear", "x"])
    assert s["x"]["wins"] == 1 and s["x"]["mean_gain"] == pytest.approx(0.0) and s["bilinear"]["wins"] == 0
    table = markdown(rows, ["bilinear", "x"])
    assert "| s | e@a | 8 | 1.0000 | 0.5000 | **0.4000** |" in table and "| 1/2 |" in table


def test_merge_joins_probe_runs(tmp_path, capsys):
    from anyup.eval.depth_probe import main

    base = {"scene": "s", "encoder": "e@a", "ratio": 8, "size": [64, 64], "constant": 1.0, "bilinear": 0.5}
    (tmp_path / "a.json").write_text(json.dumps([dict(base, x=0.4)]))
    (tmp_path / "b.json").write_text(json.dumps([dict(base, y=0.3)]))
    assert main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "| s | e@a | 8 | 1.0000 | 0.5000 | 0.4000 | **0.3000** |" in capsys.readouterr().out
    (tmp_path / "c.json").write_text(json.dumps([dict(base, size=[32, 32], y=0.3)]))
    with pytest.raises(ValueError, match="size on .* differs"):
        main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "c.json")])


@pytest.mark.slow
def test_real_scene_probe_runs_and_guidance_helps(tmp_path):
    """Motorcycle (scikit-image, real disparity), EfficientNet-Lite0 stage4: JBU's image-guided
    upsampling predicts depth better than bilinear, and both beat the constant predictor."""
    pytest.importorskip("skimage")
    import anyup.baselines as B
    from anyup.eval.depth_probe import main
    from anyup.predictor import guide_from_rgb

    jbu = B.create("jbu")
    methods = {
        "bilinear": lambda img, f, size: F.interpolate(f, size=size, mode="bilinear", align_corners=False),
        "jbu": lambda img, f, size: jbu(guide_from_rgb(img), f, size),
    }
    cfg = DepthProbeConfig(short=224, scenes=("motorcycle",), layers=["efficientnet_lite0@stage4"])
    (row,) = run_probe(methods, cfg)
    assert row["size"] == [224, 320] and row["ratio"] == 16
    assert row["jbu"] < row["bilinear"] < row["constant"]
    assert run_probe(methods, cfg) == [row]  # deterministic
    (half,) = run_probe(methods, replace(cfg, input_scale=0.5))  # the encoder on a 128x160 input (sides rounded to 32)
    assert half["ratio"] == 224 // 8 and half["size"] == row["size"] and half["bilinear"] < half["constant"]
    with pytest.raises(ValueError, match="must include 'bilinear'"):
        run_probe({"jbu": methods["jbu"]}, cfg)
    out = tmp_path / "probe.json"
    assert (
        main(["--layers", "efficientnet_lite0@stage4", "--scenes", "motorcycle", "--short", "224", "--out", str(out)])
        == 0
    )
    (saved,) = json.loads(out.read_text())
    assert saved["bilinear"] == pytest.approx(row["bilinear"]) and saved["jbu"] == pytest.approx(row["jbu"])


def test_anyup_eval_depth_probe_command(tmp_path, capsys):
    """``anyup eval depth-probe`` is the same command: --reference LABEL=WEIGHTS, --merge, clear errors."""
    from anyup.cli import main as anyup_main

    base = {"scene": "s", "encoder": "e@a", "ratio": 8, "size": [64, 64], "constant": 1.0, "bilinear": 0.5, "x": 0.4}
    (tmp_path / "a.json").write_text(json.dumps([base]))
    assert anyup_main(["eval", "depth-probe", "--merge", str(tmp_path / "a.json")]) == 0
    assert "| s | e@a | 8 | 1.0000 | 0.5000 | **0.4000** |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--reference 'nolabel' must look like LABEL=NAME_OR_PATH"):
        anyup_main(["eval", "depth-probe", "--reference", "nolabel"])
