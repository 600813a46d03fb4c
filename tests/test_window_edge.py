"""The soft window edge (``AnyUpConfig.window_edge="soft"``): same support as the hard window, each
cell's logit biased by ``log(coverage)``; checked against an oracle written from the definition."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import anyup
from anyup import AnyUp, AnyUpConfig
from anyup.engine import Window
from anyup.engine.window import MIN_COVERAGE, window_bounds, window_coverage

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPTS = Path(__file__).resolve().parents[1] / "docs" / "scripts"


def _inputs(b=1, c=6, hw=(23, 31), low=(4, 5), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, *hw, generator=g).to(dtype), torch.randn(b, c, *low, generator=g).to(dtype)


def _coverage_1d(out_len: int, low_len: int, r: float, floor: bool = False) -> list[list[float]]:
    """Coverage from the definition, one interval at a time (plain Python floats).

    ``floor``: as the engine documents it, cells the hard window admits (its float32 bounds, as in
    the reference) get at least ``MIN_COVERAGE``; a float64 coverage of 0 there is a rounding case.
    """
    start, stop = window_bounds(out_len, low_len, r)
    rows = []
    for i in range(out_len):
        p = (i + 0.5) / out_len
        lo, hi = min(max(p - r, 0.0), 1.0) * low_len, min(max(p + r, 0.0), 1.0) * low_len
        row = [max(0.0, min(hi, k + 1) - max(lo, k)) for k in range(low_len)]
        if floor:
            row = [max(v, MIN_COVERAGE) if start[i] <= k < stop[i] else 0.0 for k, v in enumerate(row)]
        rows.append(row)
    return rows


def _oracle(model: AnyUp, image: torch.Tensor, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Dense soft-edge attention: logits + log(row coverage * column coverage), softmax, heads mean."""
    from anyup.engine import EngineOptions, plan_for
    from anyup.engine.run import encode

    b, c, h, w = feats.shape
    plan = plan_for(model, image, feats, size, EngineOptions())
    enc, keys, _ = encode(model, image, feats, plan)
    q = model.cross_decode.decode_queries(enc.query_rows(size, 0, size[0]))  # (B, D, H', W')
    attn = model.cross_decode.cross_attn
    qh, kh = attn.project_queries(q), attn.project_keys(keys)
    rc = torch.tensor(_coverage_1d(size[0], h, model.window_ratio, floor=True), dtype=torch.float64)
    cc = torch.tensor(_coverage_1d(size[1], w, model.window_ratio, floor=True), dtype=torch.float64)
    cov = (rc[:, None, :, None] * cc[None, :, None, :]).reshape(size[0] * size[1], h * w)
    logits = torch.matmul(qh.double(), kh.double().transpose(-1, -2)) / math.sqrt(qh.shape[-1]) + cov.log()
    weights = logits.softmax(-1).mean(1)  # (B, H'W', hw)
    out = torch.matmul(weights, feats.flatten(2).transpose(1, 2).double())
    return out.transpose(1, 2).reshape(b, c, *size)


@pytest.mark.parametrize("out_len, low_len, ratio", [(224, 14, 0.1), (64, 8, 0.15), (30, 7, 0.3), (16, 16, 0.05)])
def test_coverage_has_the_hard_window_support(out_len, low_len, ratio):
    cov = window_coverage(out_len, low_len, ratio)
    start, stop = window_bounds(out_len, low_len, ratio)
    k = torch.arange(low_len)
    inside = (k[None, :] >= start[:, None]) & (k[None, :] < stop[:, None])
    assert torch.equal(cov > 0, inside)
    assert float(cov.min()) >= 0 and float(cov.max()) <= 1
    assert bool((cov[:, 1:-1] == 1).any())  # cells well inside a window are fully covered
    assert torch.allclose(cov, torch.tensor(_coverage_1d(out_len, low_len, ratio), dtype=torch.float64))


def test_soft_mask_is_a_bias_on_the_hard_support():
    hard = Window.build((17, 23), (14, 15), 0.1)
    soft = Window.build((17, 23), (14, 15), 0.1, edge="soft")
    assert not hard.soft and soft.soft
    for box in [(0, 17, 0, 23), (3, 9, 5, 12), (16, 17, 22, 23)]:
        m, bias = hard.mask(*box), soft.mask(*box)
        assert m.dtype == torch.bool and bias.dtype == torch.float32 and bias.shape == m.shape
        assert torch.equal(torch.isfinite(bias), m)  # same cells admitted
        assert (bias[m] <= 0).all() and (bias[m] == 0).any()  # fully covered cells keep their logit
    dense = soft.dense_mask().view(17, 23, 14 * 15)
    assert torch.equal(soft.pixel_mask(3, 7).view(-1), dense[3, 7])
    with pytest.raises(ValueError, match="window_edge must be one of 'hard', 'soft'; got 'fuzzy'"):
        Window.build((4, 4), (2, 2), 0.1, edge="fuzzy")


@pytest.mark.parametrize("size", [(23, 31), (40, 9), (7, 5)])
def test_soft_edge_equals_the_oracle_float64(size):
    torch.manual_seed(0)
    m = AnyUp(AnyUpConfig(window_edge="soft")).double().eval()
    image, feats = _inputs(dtype=torch.float64)
    with torch.no_grad():
        want = _oracle(m, image, feats, size)
        for cap, tile in [(None, None), (3_000_000, 3), (1 << 40, 1000)]:
            got = m(image, feats, size, max_memory=cap, tile_size=tile)
            assert (got - want).abs().max() <= 1e-10, (cap, tile)


def test_soft_and_hard_agree_when_every_window_is_everything():
    torch.manual_seed(0)
    hard = AnyUp(AnyUpConfig(window_ratio=1.0)).eval()
    soft = AnyUp(AnyUpConfig(window_ratio=1.0, window_edge="soft")).eval()
    soft.load_state_dict(hard.state_dict())
    image, feats = _inputs()
    with torch.no_grad():
        assert torch.equal(hard(image, feats, (19, 27)), soft(image, feats, (19, 27)))


def test_soft_edge_fades_cells_in_and_out():
    """Moving along a row, a cell's hard weight jumps where the window edge crosses the cell border;
    the soft weight starts from a fraction of a per cent (its coverage) and grows with it."""
    torch.manual_seed(0)
    hard = AnyUp(AnyUpConfig(window_ratio=0.1)).eval()
    soft = AnyUp(AnyUpConfig(window_ratio=0.1, window_edge="soft")).eval()
    soft.load_state_dict(hard.state_dict())
    image = torch.zeros(1, 3, 8, 224)  # a flat image: weights change only with the window
    feats = torch.zeros(1, 1, 1, 14)
    pixels = [(4, x) for x in range(224)]
    with torch.no_grad():
        wh = hard.attention_weights(image, feats, (8, 224), pixels)[0, :, 0]  # (224, 14)
        ws = soft.attention_weights(image, feats, (8, 224), pixels)[0, :, 0]
    for w in (wh, ws):
        assert torch.allclose(w.sum(-1), torch.ones(224), atol=1e-5) and (w >= 0).all()
    entering_hard = wh[1:][(wh[:-1] == 0) & (wh[1:] > 0)]  # the first weight of a cell entering the window
    entering_soft = ws[1:][(ws[:-1] == 0) & (ws[1:] > 0)]
    assert entering_hard.numel() > 5 and entering_soft.numel() == entering_hard.numel()
    assert entering_hard.min() > 0.2 and entering_soft.max() < entering_hard.min() / 5, (entering_hard, entering_soft)


def test_window_edge_is_stored_with_exported_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = AnyUp(AnyUpConfig(window_edge="soft"))
    m.save_pretrained(str(tmp_path / "hf"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["window_edge"] == "soft"
    assert AnyUp.from_pretrained(str(tmp_path / "hf")).config.window_edge == "soft"
    path = tmp_path / "w.safetensors"
    save_file(m.state_dict(), str(path), metadata={"anyup_config": json.dumps({"window_edge": "soft"})})
    assert anyup.load(path).config.window_edge == "soft"
    save_file(m.state_dict(), str(path), metadata={"anyup_config": json.dumps({"dim": 128})})
    assert anyup.load(path).config.window_edge == "hard"  # missing: the published default
    save_file(m.state_dict(), str(path), metadata={"anyup_config": json.dumps({"window_edge": "blurry"})})
    with pytest.raises(ValueError, match="window_edge='blurry' is invalid; it must be one of 'hard', 'soft'"):
        anyup.load(path)
    with pytest.raises(ValueError, match="window_edge"):
        AnyUp(AnyUpConfig(window_edge="blurry"))


def test_window_edge_is_read_from_training_checkpoints(tmp_path):
    """``anyup.load`` of an ``anyup train`` checkpoint (.pt) takes the run's ``config.model``, so a run
    trained soft is evaluated soft; a plain state dict (the published .pth) stays hard."""
    from anyup.train.checkpoint import FORMAT, save_checkpoint

    torch.manual_seed(0)
    m = AnyUp(AnyUpConfig(window_edge="soft"))
    ckpt = tmp_path / "last.pt"
    save_checkpoint(ckpt, {"step": 3, "model": m.state_dict(), "config": {"model": {"window_edge": "soft"}}})
    assert torch.load(ckpt, weights_only=True)["format"] == FORMAT
    loaded = anyup.load(ckpt)
    assert loaded.config.window_edge == "soft"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), m.state_dict().values()))
    assert anyup.load(ckpt, config=AnyUpConfig(window_edge="hard")).config.window_edge == "hard"  # explicit wins
    plain = tmp_path / "plain.pth"
    torch.save(m.state_dict(), plain)
    assert anyup.load(plain).config.window_edge == "hard"
    save_checkpoint(ckpt, {"step": 3, "model": m.state_dict(), "config": {"model": {"window_edge": "blurry"}}})
    with pytest.raises(ValueError, match="window_edge='blurry' is invalid"):
        anyup.load(ckpt)


@pytest.mark.slow
def test_soft_edge_removes_grid_locked_steps_on_a_real_photo():
    data = pytest.importorskip("skimage.data")
    encoders = pytest.importorskip("anyup.encoders")
    from anyup.eval.artifacts import cell_border_energy
    from anyup.image import imagenet_normalize

    img = torch.from_numpy(data.chelsea().copy()).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True).clamp(0, 1)  # (1, 3, 224, 224)
    enc = encoders.create("efficientnet_lite0", layers="stage4")
    hard = anyup.load("anyup_offline", config=AnyUpConfig(window_edge="hard"))
    soft = anyup.load("anyup_offline", config=AnyUpConfig(window_edge="soft"))
    with torch.no_grad():
        low = enc(img)[0].float()  # (1, 112, 14, 14)
        a = hard(imagenet_normalize(img), low, output_size=(224, 224))
        b = soft(imagenet_normalize(img), low, output_size=(224, 224))
    r_hard = cell_border_energy(a[0], (14, 14), img[0])
    r_soft = cell_border_energy(b[0], (14, 14), img[0])
    assert r_soft.peak_ratio < r_hard.peak_ratio / 2 and r_soft.peak_ratio < 2.5, (r_hard.peak_ratio, r_soft.peak_ratio)


@pytest.mark.parametrize("edge", ["hard", "soft"])
def test_query_scale_is_a_logit_temperature(edge):
    """docs/scripts/attention_temperature.py: scaling the query rows by T gives softmax(T * logits).

    T = 0: every cell of the window gets the same logit, so the weights are uniform over the hard
    window (proportional to coverage under the soft edge) and do not depend on the image. T = 2, one head: w2 = w1**2 / w0,
    renormalised (the coverage term log(cov) is not scaled, and w0 is proportional to it)."""
    torch.manual_seed(0)
    image, feats = torch.randn(1, 3, 40, 56), torch.randn(1, 8, 5, 7)
    pixels = [(0, 0), (17, 29), (22, 14), (39, 55)]
    model = AnyUp(AnyUpConfig(window_edge=edge, num_heads=1)).eval()
    with torch.no_grad():  # a fresh MultiheadAttention's bias is zero; the query bias must be scaled too
        model.cross_decode.cross_attn.attention.in_proj_bias.normal_(0.0, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    spec = importlib.util.spec_from_file_location("attention_temperature", SCRIPTS / "attention_temperature.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def weights(temperature: float, img: torch.Tensor = image) -> torch.Tensor:
        model.load_state_dict(state)
        script.scale_logits_(model, temperature)
        return model.attention_weights(img, feats, pixels=pixels).double()  # (1, P, h, w)

    w1, w0, w2 = weights(1.0), weights(0.0), weights(2.0)
    # T = 0 leaves no query at all: the weights are the window's (coverage) alone, whatever the image
    torch.testing.assert_close(weights(0.0, torch.randn(1, 3, 40, 56)), w0, rtol=0, atol=1e-6)
    support = w1 > 0
    assert support.flatten(2).sum(-1).max() > 1  # windows, not only single cells
    assert torch.equal(w0 > 0, support) and torch.equal(w2 > 0, support)
    if edge == "hard":
        counts = support.flatten(2).sum(-1)[..., None, None]
        torch.testing.assert_close(w0, support.double() / counts, rtol=0, atol=1e-6)
    expect = torch.where(support, w1**2 / w0.clamp_min(1e-30), 0.0)
    expect = expect / expect.flatten(2).sum(-1)[..., None, None]
    torch.testing.assert_close(w2, expect, rtol=1e-3, atol=1e-6)
