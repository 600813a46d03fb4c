"""The AnyUp model: parity with the authors' outputs, properties of the method, standard matrix."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _devices import DEVICES

import anyup
from anyup import AnyUp, AnyUpConfig
from anyup.engine import EngineOptions, plan_for, window_bounds
from benchmarks.dense_reference import dense_forward


def _mode(m, image, feats, size, cap):
    return plan_for(m, image, feats, size, EngineOptions(max_memory=cap)).mode


def _cap_for(m, image, feats, size, mode):
    """The largest cap (on a 1.1x grid) that makes the engine choose ``mode``."""
    for k in range(400, 100, -1):
        cap = int(1.1**k)
        try:
            if _mode(m, image, feats, size, cap) == mode:
                return cap
        except ValueError:
            break
    raise AssertionError(f"no cap selects {mode}")


def _inputs(b=1, c=6, hw=(23, 31), low=(4, 5), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, *hw, generator=g).to(dtype)
    feats = torch.randn(b, c, *low, generator=g).to(dtype)
    return image, feats


@pytest.fixture(scope="module", params=["hard", "soft"])
def edge(request) -> str:
    """Every property and standard test runs with both window edges (anyup.engine.window)."""
    return request.param


@pytest.fixture(scope="module")
def model(edge) -> AnyUp:
    torch.manual_seed(0)
    return AnyUp(AnyUpConfig(window_edge=edge)).eval()


# ------------------------------------------------------------------------------------------------
# Parity with the reference implementation
def test_parity_with_golden(golden_file):
    data = np.load(golden_file)
    weights = golden_file.parents[1] / "weights"
    n = int(data["n_cases"])
    assert n >= 1
    for i in range(n):
        m = anyup.load(weights / f"{data[f'case{i}_checkpoint']}.pth")
        image = torch.from_numpy(data[f"case{i}_image"])
        feats = torch.from_numpy(data[f"case{i}_features"])
        size = tuple(int(v) for v in data[f"case{i}_output_size"])
        with torch.no_grad():
            out = m(image, feats, size)
        ref = torch.from_numpy(data[f"case{i}_output"])
        got = out[:, torch.from_numpy(data[f"case{i}_channels"])]
        assert got.shape == ref.shape
        err = (got - ref).abs().max().item()
        assert err <= 1e-4, f"case {i}: max abs error {err:.2e} > 1e-4"


def test_parity_holds_when_streamed_and_tiled(golden_file):
    data = np.load(golden_file)
    m = anyup.load(golden_file.parents[1] / "weights" / f"{data['case2_checkpoint']}.pth")
    image, feats = torch.from_numpy(data["case2_image"]), torch.from_numpy(data["case2_features"])
    size = tuple(int(v) for v in data["case2_output_size"])
    with torch.no_grad():
        cap = _cap_for(m, image, feats, size, "streamed")
        out = m(image, feats, size, max_memory=cap, tile_size=7)  # the streamed path
    got = out[:, torch.from_numpy(data["case2_channels"])]
    assert (got - torch.from_numpy(data["case2_output"])).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------------------------
# Properties of the method
@pytest.mark.parametrize("size", [(23, 31), (9, 40), (3, 2), (50, 17)])
def test_tiled_equals_dense_reference(model, size):
    image, feats = _inputs()
    with torch.no_grad():
        ref = dense_forward(model, image, feats, size)
        for cap, tile in [(None, None), (3_000_000, 3), (10**9, 1), (10**9, 1000)]:
            out = model(image, feats, size, max_memory=cap, tile_size=tile)
            assert (out - ref).abs().max().item() <= 1e-5, (cap, tile)


def test_tile_size_and_memory_cap_do_not_change_result_float64(edge):
    torch.manual_seed(1)
    m = AnyUp(AnyUpConfig(window_edge=edge)).double().eval()
    image, feats = _inputs(b=2, c=5, hw=(29, 37), low=(6, 4), dtype=torch.float64)
    with torch.no_grad():
        ref = m(image, feats, (33, 50), max_memory=1 << 40)
        cached, streamed = (_cap_for(m, image, feats, (33, 50), mode) for mode in ("cached", "streamed"))
        for cap, tile in [(cached, 3), (streamed, None), (f"{streamed / 2**20:.3f}MiB", 1), (None, 5), (1 << 40, 2)]:
            out = m(image, feats, (33, 50), max_memory=cap, tile_size=tile)
            assert (out - ref).abs().max().item() < 1e-10


def test_output_depends_only_on_features_inside_window(model):
    """Locality: an output pixel mixes only the low-res vectors inside its window.

    Keys see *all* features (feature unification and the aggregation's GroupNorm are global at
    low resolution, as in the reference), so the property is about the mixed vectors: with the
    keys fixed, moving a vector outside the window leaves the pixel unchanged, inside changes it.
    """
    image, feats = _inputs(c=3, hw=(40, 40), low=(10, 10))
    size = (40, 40)
    y, x = 5, 6
    r0, r1 = window_bounds(size[0], 10, model.window_ratio)
    c0, c1 = window_bounds(size[1], 10, model.window_ratio)
    rows, cols = range(int(r0[y]), int(r1[y])), range(int(c0[x]), int(c1[x]))
    assert 0 < len(rows) < 10 and 0 < len(cols) < 10

    from anyup.engine import resolve
    from anyup.engine.run import decode, encode

    plan = plan_for(model, image, feats, size, EngineOptions(tile_size=8))
    with torch.no_grad():
        enc, keys, _ = encode(model, image, feats, plan)
        queries = enc.query_rows(size, 0, size[0])  # whole mode: pooled once, kept

    def run(values):
        out = torch.zeros(1, 3, *size)
        enc.query_pooled = queries
        for t in decode(model, enc, keys, values, size, plan, resolve("matmul", values.device)):
            out[:, :, t.y0 : t.y1, t.x0 : t.x1] = t.data
        return out[0, :, y, x]

    with torch.no_grad():
        base = run(feats)
        border = {rows[0] - 1, rows[0], rows[-1], rows[-1] + 1, 9}
        for cy in sorted(border & set(range(10))):
            for cx in sorted({cols[0] - 1, cols[0], cols[-1], cols[-1] + 1, 9} & set(range(10))):
                moved = feats.clone()
                moved[0, :, cy, cx] += 5.0
                delta = (run(moved) - base).abs().max().item()
                if cy in rows and cx in cols:
                    assert delta > 1e-4, (cy, cx)
                else:
                    assert delta == 0.0, (cy, cx)
        maps = model.attention_weights(image, feats, size, pixels=[(y, x)])[0, 0]
    inside = torch.zeros(10, 10, dtype=torch.bool)
    inside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    assert (maps[~inside] == 0).all() and (maps[inside] > 0).all()


def test_one_hot_features_give_convex_weights(model):
    h, w = 4, 5
    image, _ = _inputs(hw=(17, 21))
    feats = torch.eye(h * w).view(1, h * w, h, w)  # channel k is one-hot at cell k
    with torch.no_grad():
        out = model(image, feats, (17, 21))
    assert out.min().item() >= 0.0
    assert torch.allclose(out.sum(dim=1), torch.ones(1, 17, 21), atol=1e-5)


def test_attention_weights_match_one_hot_output(model):
    h, w = 4, 5
    image, _ = _inputs(hw=(17, 21))
    feats = torch.eye(h * w).view(1, h * w, h, w)
    with torch.no_grad():
        out = model(image, feats, (17, 21))
        maps = model.attention_weights(image, feats, (17, 21), pixels=[(3, 4), (16, 20)])
    assert maps.shape == (1, 2, h, w)
    assert torch.allclose(maps[0, 0].flatten(), out[0, :, 3, 4], atol=1e-5)
    assert torch.allclose(maps[0, 1].flatten(), out[0, :, 16, 20], atol=1e-5)
    with pytest.raises(ValueError, match="outside the output size"):
        model.attention_weights(image, feats, (17, 21), pixels=[(17, 0)])


def test_constant_features_stay_constant(model):
    image, _ = _inputs()
    feats = torch.full((1, 4, 3, 3), 2.5)
    feats[:, 1] = -1.0
    with torch.no_grad():
        out = model(image, feats, (10, 12))
    assert torch.allclose(out[:, 0], torch.full((1, 10, 12), 2.5), atol=1e-5)
    assert torch.allclose(out[:, 1], torch.full((1, 10, 12), -1.0), atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = AnyUp().train()
    image, feats = _inputs(b=2, hw=(16, 20))
    feats.requires_grad_(True)
    out = m(image, feats, (24, 16))
    (out**2).mean().backward()
    # value/output projections of the attention module are never used (as in the reference)
    unused = {"cross_decode.cross_attn.attention.out_proj.weight", "cross_decode.cross_attn.attention.out_proj.bias"}
    for name, p in m.named_parameters():
        if name in unused:
            continue
        assert p.grad is not None, name
        if name == "cross_decode.cross_attn.attention.in_proj_weight":
            assert p.grad[:256].abs().sum() > 0
        else:
            assert p.grad.abs().sum() > 0, name
    assert feats.grad is not None and feats.grad.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_equal_the_dense_reference(edge, device):
    """The checkpointed, tiled autograd path has the dense reference's gradients (float64)."""
    torch.manual_seed(0)
    m = AnyUp(AnyUpConfig(window_edge=edge)).double().to(device)
    image, feats = (t.to(device) for t in _inputs(hw=(16, 20), dtype=torch.float64))
    image.requires_grad_(True)
    feats.requires_grad_(True)
    params = [image, feats, *[p for p in m.parameters() if p.requires_grad]]
    grads = []
    for fn in (lambda: m(image, feats, (11, 13), tile_size=4), lambda: dense_forward(m, image, feats, (11, 13))):
        out = fn()
        grads.append(torch.autograd.grad((out * out.detach().cos()).sum(), params, allow_unused=True))
    for name, a, b in zip(["image", "features", *[n for n, p in m.named_parameters() if p.requires_grad]], *grads):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        assert (a - b).abs().max() <= 1e-10 * max(1.0, b.abs().max().item()), name


def _graph_nodes(fn) -> set[str]:
    seen, todo, names = set(), [fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(nxt for nxt, _ in node.next_functions)
    return names


def test_tile_writes_pass_the_gradient_through_without_a_copy_per_tile():
    """Under autograd the tiles are written by one differentiable op each that hands its tile a view
    of the output gradient (no CopySlices: that clones the whole gradient once per tile). Into an
    ``out=`` that needs a gradient itself, the writes fall back to CopySlices; both are exact."""
    torch.manual_seed(0)
    m = AnyUp().double()
    image, feats = _inputs(hw=(16, 20), dtype=torch.float64)
    feats.requires_grad_(True)
    weight = torch.randn(1, feats.shape[1], 11, 13, dtype=torch.float64)
    out = m(image, feats, (11, 13), tile_size=4)  # 3 x 4 tiles
    nodes = _graph_nodes(out.grad_fn)
    assert "_WriteTileBackward" in nodes and "CopySlices" not in nodes, nodes
    (got,) = torch.autograd.grad((out * weight).sum(), feats)
    (want,) = torch.autograd.grad((dense_forward(m, image, feats, (11, 13)) * weight).sum(), feats)
    assert (got - want).abs().max() <= 1e-10 * want.abs().max()

    base = torch.randn(1, feats.shape[1], 11, 13, dtype=torch.float64, requires_grad=True)
    into = base * 2  # needs a gradient: the tiles overwrite it, so base's gradient must be zero
    out = m(image, feats, (11, 13), tile_size=4, out=into)
    assert "CopySlices" in _graph_nodes(out.grad_fn)
    g_feats, g_base = torch.autograd.grad((out * weight).sum(), (feats, base))
    assert (g_feats - want).abs().max() <= 1e-10 * want.abs().max() and not g_base.any()

    big = torch.zeros(1, feats.shape[1], 20, 30, dtype=torch.float64)  # out= a view of a larger tensor
    m(image, feats, (11, 13), tile_size=4, out=big[:, :, 2:13, 3:16])
    around = torch.zeros_like(big)
    around[:, :, 2:13, 3:16] = weight
    (g_view,) = torch.autograd.grad((big * around).sum(), feats)
    assert (g_view - want).abs().max() <= 1e-10 * want.abs().max()


def test_gradcheck_float64(edge):
    torch.manual_seed(0)
    m = AnyUp(AnyUpConfig(dim=8, num_heads=2, num_groups=2, window_ratio=0.3, window_edge=edge)).double()
    image, feats = _inputs(c=2, hw=(6, 7), low=(3, 2), dtype=torch.float64)
    feats.requires_grad_(True)
    image.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda i, f: m(i, f, (5, 4), tile_size=2), (image, feats), eps=1e-6, atol=1e-5)


def _func_model(edge):
    torch.manual_seed(0)
    return AnyUp(AnyUpConfig(dim=8, num_heads=2, num_groups=2, window_ratio=0.3, window_edge=edge)).double()


def test_torch_func_transforms_agree_with_autograd(edge):
    """grad, vmap(grad) (per-sample gradients), vmap, jacrev and jvp trace the model and agree with
    autograd, finite differences and the batched call."""
    from torch.func import functional_call, grad, jacrev, jvp, vmap

    m = _func_model(edge)
    image, feats = _inputs(b=2, c=3, hw=(9, 11), low=(3, 4), dtype=torch.float64)
    params = {k: v.detach() for k, v in m.named_parameters()}
    kw = {"output_size": (7, 8), "tile_size": 3}

    def loss(p, i, f):
        return functional_call(m, p, (i, f), kw).square().sum()

    g_params, g_feats = grad(loss, argnums=(0, 2))(params, image, feats)
    f = feats.clone().requires_grad_(True)
    loss(dict(m.named_parameters()), image, f).backward()
    for k, p in m.named_parameters():
        want = p.grad if p.grad is not None else torch.zeros_like(p)  # value/output projections are unused
        torch.testing.assert_close(g_params[k], want, rtol=1e-9, atol=1e-12, msg=k)
    torch.testing.assert_close(g_feats, f.grad, rtol=1e-9, atol=1e-12)

    per_sample = vmap(grad(lambda p, i, f: loss(p, i[None], f[None])), in_dims=(None, 0, 0))(params, image, feats)
    second = grad(loss)(params, image[1:], feats[1:])
    for k in params:
        torch.testing.assert_close(per_sample[k][1], second[k], rtol=1e-9, atol=1e-12, msg=k)

    with torch.no_grad():
        batched = m(image, feats, **kw)
        mapped = vmap(lambda i, f: m(i[None], f[None], **kw)[0])(image, feats)
    torch.testing.assert_close(mapped, batched, rtol=0, atol=1e-12)

    jac = jacrev(lambda f: m(image[:1], f, (4, 5)))(feats[:1])  # (1, C, 4, 5, 1, C, 3, 4)
    f1 = feats[:1].clone().requires_grad_(True)
    (row,) = torch.autograd.grad(m(image[:1], f1, (4, 5))[0, 1, 2, 3], f1)
    torch.testing.assert_close(jac[0, 1, 2, 3], row, rtol=1e-9, atol=1e-12)

    tangent = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, t_out = jvp(lambda f: m(image, f, **kw), (feats,), (tangent,))
    eps = 1e-6
    with torch.no_grad():
        fd = (m(image, feats + eps * tangent, **kw) - m(image, feats - eps * tangent, **kw)) / (2 * eps)
    torch.testing.assert_close(t_out, fd, rtol=1e-5, atol=1e-7)


def test_torch_func_refuses_out_and_names_the_transform():
    from torch.func import grad

    m = _func_model("hard")
    image, feats = _inputs(c=3, hw=(9, 11), low=(3, 4), dtype=torch.float64)
    out = torch.empty(1, 3, 9, 11, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"out= cannot be used inside torch\.func"):
        grad(lambda f: m(image, f, out=out).sum())(feats)


def test_torch_func_keeps_the_value_checks_where_they_can_run():
    """NaN features are refused inside grad (values can be read there); inside vmap the value checks
    are skipped (a value cannot decide control flow) and the shape checks still run."""
    from torch.func import grad, vmap

    m = _func_model("hard")
    image, feats = _inputs(c=3, hw=(9, 11), low=(3, 4), dtype=torch.float64)
    bad = feats.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        grad(lambda f: m(image, f).sum())(bad)
    with pytest.raises(ValueError, match="3 channels"):
        vmap(lambda i, f: m(i[None, :2], f[None]))(image, feats)
    with torch.no_grad():
        assert vmap(lambda i, f: m(i[None], f[None]))(image, feats).shape == (1, 1, 3, 9, 11)


def test_deterministic(model):
    image, feats = _inputs(b=2)
    with torch.no_grad():
        a = model(image, feats, (19, 27))
        b = model(image, feats, (19, 27))
    assert torch.equal(a, b)


def test_window_ratio_is_configurable(model):
    image, feats = _inputs()
    with torch.no_grad():
        a = model(image, feats)
        model.window_ratio = 0.4
        try:
            b = model(image, feats)
        finally:
            model.window_ratio = 0.1
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="window_ratio"):
        model.window_ratio = 0.0


# ------------------------------------------------------------------------------------------------
# Standard matrix: shapes, batch, dtypes, out=, tiles
@pytest.mark.parametrize(
    "b,c,hw,low,size",
    [
        (1, 1, (15, 15), (3, 3), None),
        (2, 7, (23, 31), (1, 1), (23, 31)),  # 1x1 features
        (1, 3, (14, 14), (8, 6), (4, 3)),  # output smaller than the features
        (3, 384, (28, 42), (2, 3), (57, 13)),  # odd, non-square, larger than the image
        (1, 2, (1, 9), (1, 2), (5, 5)),
    ],
)
def test_shapes(model, b, c, hw, low, size):
    image, feats = _inputs(b=b, c=c, hw=hw, low=low)
    with torch.no_grad():
        out = model(image, feats, size)
    assert out.shape == (b, c, *(size or hw))
    assert torch.isfinite(out).all()


def test_batch_items_are_independent(model):
    image, feats = _inputs(b=3)
    with torch.no_grad():
        full = model(image, feats, (20, 20))
        one = model(image[1:2], feats[1:2], (20, 20))
    assert torch.allclose(full[1:2], one, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.15), (torch.float16, 0.03)])
def test_half_precision(model, dtype, tol):
    image, feats = _inputs(hw=(64, 48), low=(8, 6))
    with torch.no_grad():
        ref = model(image, feats)
        out = model(image.to(dtype), feats.to(dtype))
        half_model = AnyUp().eval()
        half_model.load_state_dict(model.state_dict())
        out2 = half_model.to(dtype)(image.to(dtype), feats.to(dtype))
    assert out.dtype == dtype and out2.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(out2).all()
    err = (out.float() - ref).abs().mean().item()
    assert err < tol, f"{dtype}: mean abs error {err}"
    # On the CPU half inputs compute in float32: the result is the float32 result of the rounded
    # inputs, rounded once at the end (no accumulated half-precision error).
    with torch.no_grad():
        same = model(image.to(dtype).float(), feats.to(dtype).float()).to(dtype)
    assert torch.equal(out, same)


def test_out_argument_and_iter_tiles(model):
    image, feats = _inputs(b=1, c=4)
    with torch.no_grad():
        ref = model(image, feats, (30, 40))
        buf = torch.from_numpy(np.zeros((1, 4, 30, 40), dtype=np.float64))
        ret = model(image, feats, (30, 40), out=buf, tile_size=8)
        assert ret is buf
        assert torch.allclose(buf.float(), ref, atol=1e-5)
        seen = torch.zeros(30, 40, dtype=torch.int64)
        for t in model.iter_tiles(image, feats, (30, 40), tile_size=7):
            assert t.data.shape == (1, 4, t.y1 - t.y0, t.x1 - t.x0)
            assert torch.allclose(t.data, ref[:, :, t.y0 : t.y1, t.x0 : t.x1], atol=1e-5)
            seen[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert torch.equal(seen, torch.ones_like(seen))  # tiles cover the output exactly once
    with pytest.raises(ValueError, match="out must have shape"):
        model(image, feats, (30, 40), out=torch.zeros(1, 4, 30, 41))


# ------------------------------------------------------------------------------------------------
# Bad input
@pytest.mark.parametrize(
    "image,feats,size,match",
    [
        (torch.randn(3, 8, 8), torch.randn(1, 4, 2, 2), None, "image must be \\(B, 3, H, W\\)"),
        (torch.randn(1, 3, 8, 8), torch.randn(4, 2, 2), None, "features must be \\(B, C, h, w\\)"),
        (torch.randn(1, 4, 8, 8), torch.randn(1, 4, 2, 2), None, "3 channels"),
        (torch.randn(1, 3, 8, 8), torch.randn(1, 0, 2, 2), None, "C = 0"),
        (torch.randn(2, 3, 8, 8), torch.randn(1, 4, 2, 2), None, "batch sizes differ"),
        (torch.randn(1, 3, 8, 8), torch.full((1, 4, 2, 2), float("nan")), None, "NaN or inf"),
        (torch.full((1, 3, 8, 8), float("inf")), torch.randn(1, 4, 2, 2), None, "NaN or inf"),
        (torch.randn(1, 3, 8, 8), torch.randn(1, 4, 2, 2), (0, 5), "output_size"),
        (torch.randn(1, 3, 8, 8), torch.randn(1, 4, 2, 2), (10**6, 5), "output_size"),
        (torch.randn(1, 3, 8, 8), torch.randn(1, 4, 2, 2), (2, 3, 4), "output_size"),
        (torch.randn(1, 3, 8, 8), torch.randn(1, 4, 2, 2), (2.5, 3), "integers"),
        (torch.randn(1, 3, 0, 8), torch.randn(1, 4, 2, 2), None, "spatial size"),
    ],
)
def test_errors(model, image, feats, size, match):
    with pytest.raises(ValueError, match=match):
        model(image, feats, size)


def test_error_non_float_dtype(model):
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.randn(1, 3, 8, 8), torch.ones(1, 4, 2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model(np.zeros((1, 3, 8, 8)), torch.ones(1, 4, 2, 2))


def test_config_round_trip():
    cfg = AnyUpConfig(window_ratio=0.2, max_memory=1 << 20)
    assert AnyUpConfig(**cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="window_ratio"):
        AnyUp(AnyUpConfig(window_ratio=2.0))


# ------------------------------------------------------------------------------------------------
# Plans: whole, cached, streamed give one result
def test_every_plan_matches_whole_float64_and_gradients_flow():
    torch.manual_seed(0)
    m = AnyUp().double().eval()
    image, feats = _inputs(hw=(16, 20), dtype=torch.float64)
    caps = {mode: _cap_for(m, image, feats, (11, 13), mode) for mode in ("whole", "resident", "cached", "streamed")}
    with torch.no_grad():
        outs = {mode: m(image, feats, (11, 13), max_memory=cap) for mode, cap in caps.items()}
    for o in outs.values():
        assert (o - outs["whole"]).abs().max() <= 1e-12
    image.requires_grad_(True)
    m(image, feats, (11, 13)).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["whole", "resident", "cached", "streamed"])
def test_every_plan_matches_the_dense_reference_float32(mode, device, ieee_float32):
    """Each memory plan against the dense reference in float32, at the image's size (encoder maps in
    the output tensor) and at another size; on CUDA too (the plan's memory model differs there)."""
    torch.manual_seed(0)
    m = AnyUp().to(device).eval()
    image, feats = (t.to(device) for t in _inputs(c=64, hw=(64, 48), low=(8, 6)))
    for size in [(64, 48), (40, 57)]:
        cap = _cap_for(m, image, feats, size, mode)
        with torch.no_grad():
            out = m(image, feats, size, max_memory=cap)
            ref = dense_forward(m, image, feats, size)
        assert (out - ref).abs().max() <= 1e-4, (mode, size)


@pytest.mark.parametrize("channels", [128, 256, 384])
def test_encoder_maps_in_the_output_tensor_match_whole_float64(monkeypatch, channels):
    """forward() lets the engine keep C // D encoder maps in the output it allocates: every mode
    (including the decode overwriting the query map band by band, halo rows and all) gives the
    output of a whole-mode run that uses no such slots, with batch 2 and bands of 3 rows."""
    from anyup.engine import run as engine_run

    torch.manual_seed(0)
    m = AnyUp().double().eval()
    image, feats = _inputs(b=2, c=channels, hw=(16, 20), low=(4, 5), dtype=torch.float64)
    size = (16, 20)
    with torch.no_grad():
        want = m(image, feats, size, out=torch.empty(2, channels, *size, dtype=torch.float64), max_memory="4GiB")
    slots = channels // 128
    seen = []
    real = engine_run.make_plan

    def spy(g, cap, tile_size, autograd, workers=1):
        plan = real(g, cap, tile_size, autograd, workers)
        seen.append((plan.mode, plan.out_slots, g.out_slots))
        return plan

    monkeypatch.setattr(engine_run, "make_plan", spy)
    modes = set()
    for cap in [1 << 32, *(int(1.1**k) for k in range(230, 150, -1))]:
        try:
            mode = plan_for(m, image, feats, size, EngineOptions(max_memory=cap, tile_size=3), out_slots=slots).mode
        except ValueError:
            break
        if mode in modes:
            continue
        modes.add(mode)
        seen.clear()
        with torch.no_grad():
            got = m(image, feats, size, max_memory=cap, tile_size=3)
        assert seen[-1] == (mode, min(slots, {"whole": 3, "resident": 2, "cached": 1}.get(mode, 0)), slots)
        assert (got - want).abs().max() <= 1e-12, mode
    # with k slots, the mode keeping k maps needs no more working memory than any slower one
    assert modes == {1: {"whole", "resident", "cached"}, 2: {"whole", "resident"}, 3: {"whole"}}[slots]


@pytest.mark.parametrize("cache_pixels", [0, 128, 192])
def test_streamed_partial_encoding_cache_matches_whole_float64(monkeypatch, cache_pixels):
    """A streamed plan that keeps the encoding of a prefix of pixels (chunks split at its end,
    key and query bands that straddle it) gives the whole-mode output."""
    import dataclasses

    from anyup.engine import run as engine_run

    torch.manual_seed(0)
    m = AnyUp().double().eval()
    image, feats = _inputs(hw=(16, 20), dtype=torch.float64)
    with torch.no_grad():
        want = m(image, feats, (11, 13), max_memory="4GiB")
        real = engine_run.make_plan

        def streamed(g, cap, tile_size, autograd, workers=1):
            plan = real(g, cap, tile_size, autograd, workers)
            return dataclasses.replace(plan, mode="streamed", chunk=48, key_rows=2, tile=5, cache_pixels=cache_pixels)

        monkeypatch.setattr(engine_run, "make_plan", streamed)
        got = m(image, feats, (11, 13), max_memory="4GiB")
    assert (got - want).abs().max() <= 1e-12


@pytest.mark.parametrize("key_prefix", [0, 96, 144, 320])
def test_cached_key_prefix_matches_whole_float64(monkeypatch, key_prefix):
    """A cached plan that keeps the key branch of a prefix of pixels (chunks split at its end, key
    bands that straddle it, all pixels kept) gives the whole-mode output."""
    import dataclasses

    from anyup.engine import run as engine_run

    torch.manual_seed(0)
    m = AnyUp().double().eval()
    image, feats = _inputs(hw=(16, 20), dtype=torch.float64)
    with torch.no_grad():
        want = m(image, feats, (16, 20), max_memory="4GiB")
        real = engine_run.make_plan

        def cached(g, cap, tile_size, autograd, workers=1):
            plan = real(g, cap, tile_size, autograd, workers)
            return dataclasses.replace(
                plan, mode="cached", chunk=48, key_rows=1, tile=5, cache_pixels=320, key_prefix=key_prefix
            )

        monkeypatch.setattr(engine_run, "make_plan", cached)
        got = m(image, feats, (16, 20), max_memory="4GiB")
    assert (got - want).abs().max() <= 1e-12


def test_cached_plan_spends_its_slack_on_a_key_prefix():
    from anyup.engine import plan_for
    from anyup.engine.run import EngineOptions

    m = AnyUp().eval()
    image, feats = _inputs(hw=(2048, 2048), low=(128, 128), c=128)
    plan = plan_for(m, image, feats, (2048, 2048), EngineOptions(max_memory="2GiB"), out_slots=1)
    assert (plan.mode, plan.out_slots, plan.key_rows) == ("cached", 1, 1)
    assert 0 < plan.key_prefix < 2048 * 2048 and plan.key_prefix % plan.chunk == 0
    assert plan.estimate <= 2 << 30


@pytest.mark.parametrize("mode", ["whole", "streamed", "autograd"])
def test_attention_sub_tiles_match_whole_tiles_float64(monkeypatch, mode):
    """Decode tiles split into smaller attention tiles (the CPU's logits budget) give the same output,
    with tiles that still cover the output once, row-major (and the same gradients under autograd)."""
    import dataclasses

    from anyup.engine import run as engine_run

    torch.manual_seed(0)
    m = AnyUp().double().eval()
    image, feats = _inputs(hw=(16, 20), dtype=torch.float64)
    real = engine_run.make_plan

    def forced(sub):
        def make(g, cap, tile_size, autograd, workers=1):
            plan = real(g, cap, tile_size, autograd, workers)
            extra = {} if mode == "autograd" else {"mode": mode, "chunk": 48, "key_rows": 2}
            return dataclasses.replace(plan, tile=7, attn_tile=sub, **extra)

        return make

    outs, grads, orders = [], [], []
    for sub in (7, 3):
        monkeypatch.setattr(engine_run, "make_plan", forced(sub))
        f = feats.clone().requires_grad_(mode == "autograd")
        with torch.set_grad_enabled(mode == "autograd"):
            tiles = list(m.iter_tiles(image, f, (11, 13), max_memory="4GiB"))
            covered = torch.zeros(11, 13, dtype=torch.int64)
            for t in tiles:
                covered[t.y0 : t.y1, t.x0 : t.x1] += 1
                assert t.y1 - t.y0 <= sub and t.x1 - t.x0 <= sub
            assert (covered == 1).all()
            orders.append([(t.y0, t.x0) for t in tiles])
            out = m(image, f, (11, 13), max_memory="4GiB")
        outs.append(out.detach())
        if mode == "autograd":
            (g,) = torch.autograd.grad(out.square().sum(), f)
            grads.append(g)
    assert (outs[0] - outs[1]).abs().max() <= 1e-12
    if grads:
        assert (grads[0] - grads[1]).abs().max() <= 1e-12
    assert orders[1] == sorted(orders[1]) and orders[0] == sorted(orders[0])  # row-major


def test_cpu_attention_tiles_keep_their_logits_in_the_budget():
    from anyup.engine.plan import CPU_LOGITS_BYTES
    from anyup.engine.run import EngineOptions, geometry, plan_for

    m = AnyUp().eval()
    image, feats = torch.empty(1, 3, 1024, 1024), torch.empty(1, 32, 64, 64)
    plan = plan_for(m, image, feats, (1024, 1024), EngineOptions(max_memory="2GiB"))
    g = geometry(m, image, feats, (1024, 1024), torch.float32)
    s = plan.attention_side
    assert 8 <= s < plan.tile
    assert g.heads * s * s * g.reach(s, s) * 4 <= CPU_LOGITS_BYTES < g.heads * (s + 1) ** 2 * g.reach(s + 1, s + 1) * 4
    unlimited = dataclasses.replace(g, logits_budget=None)
    assert unlimited.attention_side(plan.tile) == plan.tile
    # an explicit tile_size is the attention tile too
    assert plan_for(m, image, feats, (1024, 1024), EngineOptions(max_memory="2GiB", tile_size=40)).attention_side == 40


def test_streamed_plan_spends_its_slack_on_a_partial_cache():
    from anyup.engine import plan_for
    from anyup.engine.run import EngineOptions

    m = AnyUp().eval()
    image, feats = _inputs(hw=(256, 256), low=(16, 16), c=64)
    partial = 0
    for mib in (60, 50, 45, 40, 35, 30, 25, 20):
        cap = mib << 20
        plan = plan_for(m, image, feats, (256, 256), EngineOptions(max_memory=cap))
        assert plan.estimate <= cap
        if plan.mode == "streamed":
            assert plan.cache_pixels % plan.chunk == 0 and plan.cache_pixels < 256 * 256
            partial += plan.cache_pixels > 0
        elif plan.mode == "cached":
            assert plan.cache_pixels == 256 * 256
    assert partial >= 3
