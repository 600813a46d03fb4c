"""The engine: attention backends, memory plans, the authors' API, GPU paths (skipped without CUDA)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _devices import needs_cuda

import anyup
from anyup import AnyUp, AnyUpConfig
from anyup.engine import BACKENDS, EngineOptions, Window, parse_memory, plan_for, resolve
from anyup.engine.attention import attend_matmul
from benchmarks.dense_reference import dense_forward


def _inputs(b=1, c=6, hw=(23, 31), low=(4, 5), seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, *hw, generator=g).to(dtype)
    feats = torch.randn(b, c, *low, generator=g).to(dtype)
    return image.to(device), feats.to(device)


@pytest.fixture(scope="module")
def model() -> AnyUp:
    torch.manual_seed(0)
    return AnyUp().eval()


def _tile_case(seed=0, b=2, nq=37, nk=23, c=19, soft=False):
    """A tile: bool mask, or (``soft``) the soft window edge's float bias (log coverage, -inf outside)."""
    g = torch.Generator().manual_seed(seed)
    qh, kh = torch.randn(b, 4, nq, 32, generator=g) * 3, torch.randn(b, 4, nk, 32, generator=g) * 3
    v = torch.randn(b, nk, c, generator=g)
    mask = torch.rand(nq, nk, generator=g) > 0.5
    mask[:, 0] = True  # every query sees at least one key (as every window does)
    if soft:
        cover = torch.rand(nq, nk, generator=g).clamp_min(1e-3)
        return qh, kh, v, cover.log().masked_fill(~mask, float("-inf"))
    return qh, kh, v, mask


def _reference(qh, kh, v, mask):
    return attend_matmul(qh.double(), kh.double(), v.double(), mask)


# ------------------------------------------------------------------------------------------------
# Backends
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("name", ["matmul", "sdpa"])
def test_backend_exact_on_a_tile(name, soft):
    qh, kh, v, mask = _tile_case(soft=soft)
    out = BACKENDS[name].attend(qh, kh, v, mask)
    assert out.shape == (2, 37, 19) and out.dtype == torch.float32
    assert (out.double() - _reference(qh, kh, v, mask)).abs().max() <= 1e-5


@pytest.mark.parametrize("edge", ["hard", "soft"])
@pytest.mark.parametrize("name", ["matmul", "sdpa"])
def test_backend_exact_in_the_model(model, name, edge):
    m = AnyUp(AnyUpConfig(window_edge=edge)).eval()
    m.load_state_dict(model.state_dict())
    image, feats = _inputs(c=384, hw=(28, 42), low=(8, 6))
    with torch.no_grad():
        ref = m(image, feats, (57, 13), attention="matmul")
        out = m(image, feats, (57, 13), attention=name)
        dense = dense_forward(m, image, feats, (57, 13))
    assert (out - ref).abs().max() <= 1e-5
    assert (out - dense).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["sdpa", pytest.param("flex", marks=pytest.mark.slow)])
def test_parity_with_golden_on_every_backend(golden_file, name):
    """The authors' outputs (``../shared/golden``) within 1e-4 with each CPU backend (``matmul`` is
    ``tests/test_model.py::test_parity_with_golden``; ``triton`` is checked against ``matmul`` under
    the interpreter and, on CUDA, by ``test_backends_on_cuda``)."""
    import numpy as np

    if not BACKENDS[name].available(torch.device("cpu")):
        pytest.skip(f"the {name} backend is not available in this PyTorch")
    data = np.load(golden_file)
    for i in range(int(data["n_cases"])):
        m = anyup.load(golden_file.parents[1] / "weights" / f"{data[f'case{i}_checkpoint']}.pth")
        image, feats = torch.from_numpy(data[f"case{i}_image"]), torch.from_numpy(data[f"case{i}_features"])
        size = tuple(int(v) for v in data[f"case{i}_output_size"])
        with torch.no_grad():
            out = m(image, feats, size, attention=name)
        got = out[:, torch.from_numpy(data[f"case{i}_channels"])]
        err = (got - torch.from_numpy(data[f"case{i}_output"])).abs().max().item()
        assert err <= 1e-4, f"{name}, case {i}: max abs error {err:.2e} > 1e-4"


def test_backend_choice_and_errors(model):
    assert resolve("auto", torch.device("cpu")).name == "matmul"
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve("natten", torch.device("cpu"))
    with pytest.raises(ValueError, match="attention must be one of"):
        model(*_inputs(), attention="fast")
    if not BACKENDS["triton"].available(torch.device("cpu")):
        with pytest.raises(RuntimeError, match="not available"):
            resolve("triton", torch.device("cpu"))


_LOOP_PROBE = """
import torch, triton, triton.language as tl

@triton.jit
def _loop(x_ptr, n):
    for i in range(0, n, 1):
        tl.store(x_ptr + i, i * 1.0)

x = torch.zeros(3)
_loop[(1,)](x, 3)
assert x.tolist() == [0.0, 1.0, 2.0], x
print("ok")
"""


def _interpreter_problem(tmp_path) -> str | None:
    """Why Triton's interpreter cannot run the kernels here, or None.

    Before Triton 3.0 there is no ``TRITON_INTERPRET`` interpreter. Before 3.7 (3.0 and 3.6, the GPU
    image's, were seen here) it passes scalar kernel arguments as 1-element arrays, and a ``range(0,
    n, step)`` over one calls ``int()`` on it, which NumPy 2 refuses: a Triton bug, probed here with a
    three-line kernel. Compiled kernels on a GPU are not affected."""
    import importlib.util

    import numpy as np
    import triton

    if importlib.util.find_spec("triton.runtime.interpreter") is None:
        return f"Triton {triton.__version__} has no TRITON_INTERPRET interpreter (Triton >= 3.0)"
    probe = tmp_path / "loop_probe.py"  # a file: @triton.jit reads its function's source
    probe.write_text(_LOOP_PROBE)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, env=env, timeout=300)
    if res.returncode != 0 and "only 0-dimensional arrays can be converted" in res.stderr:
        return (
            f"Triton {triton.__version__}'s interpreter cannot loop to a scalar kernel argument "
            f"with NumPy {np.__version__} (a Triton bug, fixed in 3.7)"
        )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
    return None


@pytest.mark.slow
def test_triton_kernel_exact_under_the_interpreter(tmp_path):
    """The two-pass Triton kernel, run by Triton's interpreter on the CPU (TRITON_INTERPRET=1)."""
    pytest.importorskip("triton")
    problem = _interpreter_problem(tmp_path)
    if problem:
        pytest.skip(problem)
    script = textwrap.dedent(
        """
        import torch
        from anyup.engine import BACKENDS, resolve
        from tests.test_engine import _tile_case, _reference
        assert resolve("triton", torch.device("cpu")).name == "triton"
        for seed, (nq, nk, c) in enumerate([(37, 23, 19), (5, 70, 3), (16, 32, 64)]):
            for soft in (False, True):
                qh, kh, v, mask = _tile_case(seed, 2, nq, nk, c, soft)
                out = BACKENDS["triton"].attend(qh, kh, v, mask).double()
                err = (out - _reference(qh, kh, v, mask)).abs().max().item()
                assert err <= 1e-5, (seed, soft, err)
        import anyup
        torch.manual_seed(0)
        m = anyup.AnyUp().eval()
        g = torch.Generator().manual_seed(0)
        image, feats = torch.randn(1, 3, 12, 14, generator=g), torch.randn(1, 5, 3, 4, generator=g)
        with torch.no_grad():
            a = m(image, feats, attention="triton")
            b = m(image, feats, attention="matmul")
            m.config.window_edge = "soft"
            c = m(image, feats, attention="triton")
            d = m(image, feats, attention="matmul")
        assert (a - b).abs().max() <= 1e-5 and (c - d).abs().max() <= 1e-5 and (a - c).abs().max() > 1e-4
        print("ok")
        """
    )
    path = os.pathsep.join([os.getcwd(), os.path.join(os.getcwd(), "tests")])  # tests/_devices.py too
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def test_triton_dots_are_full_float32():
    """Every ``tl.dot`` in the Triton kernel asks for IEEE float32. Triton's default for float32 on
    NVIDIA GPUs is TF32 (about 1e-3 relative error); the CPU interpreter computes in full float32
    whatever is asked, so the interpreter test above cannot catch a missing argument."""
    import ast
    from pathlib import Path

    import anyup.engine

    source = Path(anyup.engine.__file__).with_name("triton_attention.py").read_text()
    dots = [
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "dot"
    ]
    assert len(dots) == 3
    for call in dots:
        precision = {k.arg: k.value for k in call.keywords}.get("input_precision")
        assert isinstance(precision, ast.Constant) and precision.value == "ieee", ast.unparse(call)


@pytest.mark.slow
def test_flex_backend_exact():
    """flex_attention with the window as a block mask (compiled by Inductor on the CPU)."""
    if not BACKENDS["flex"].available(torch.device("cpu")):
        pytest.skip("flex_attention is not available in this PyTorch")
    for soft in (False, True):
        qh, kh, v, mask = _tile_case(nq=40, nk=24, soft=soft)
        out = BACKENDS["flex"].attend(qh, kh, v, mask)
        assert (out.double() - _reference(qh, kh, v, mask)).abs().max() <= 1e-5, soft


@pytest.mark.slow
def test_flex_pads_tiles_to_a_few_compiled_shapes(model):
    """A whole call with the flex backend compiles a few tile shapes, not one per shape: unpadded,
    224² from 16² compiled eight shapes and then fell back to flex's unfused path (dynamo's
    recompile limit). Exact against matmul, with the padding."""
    if not BACKENDS["flex"].available(torch.device("cpu")):
        pytest.skip("flex_attention is not available in this PyTorch")
    from torch import _dynamo
    from torch._dynamo.utils import counters

    _dynamo.reset()
    counters.clear()
    image, feats = _inputs(c=8, hw=(224, 224), low=(16, 16))
    with torch.no_grad():
        out = model(image, feats, attention="flex")
        ref = model(image, feats, attention="matmul")
    assert (out - ref).abs().max() <= 1e-5
    assert counters["frames"]["total"] <= 4, dict(counters["frames"])


def test_flex_padding_helper():
    from anyup.engine.attention import _pad_to

    x = torch.arange(6.0).view(2, 3)
    assert torch.equal(_pad_to(x, 0, 4), torch.tensor([[0.0, 1, 2], [3, 4, 5], [0, 0, 0], [0, 0, 0]]))
    assert torch.equal(_pad_to(x, 1, 4, -1.0), torch.tensor([[0.0, 1, 2, -1], [3, 4, 5, -1]]))
    assert torch.equal(_pad_to(x > 2, -1, 5), torch.tensor([[False] * 5, [True] * 3 + [False] * 2]))
    assert _pad_to(x, 1, 3) is x


def test_chunk_kernels_eager_match_float64():
    """The eager element-wise chunk kernels: GroupNorm+SiLU and the two-pass moments."""
    from anyup.engine.kernels import EAGER

    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 16, 300, generator=g) * 0.5 + 40.0  # a large mean next to the spread
    x = base[:, :, 7:257]  # a strided slice, as the whole-mode maps hand over
    scale, shift = torch.rand(2, 16, 1, generator=g), torch.randn(2, 16, 1, generator=g)
    out = torch.empty(2, 16, 250)
    EAGER.norm_silu(x, scale, shift, out)
    want = torch.nn.functional.silu(x.double() * scale.double() + shift.double())
    assert (out.double() - want).abs().max() <= 1e-5
    mean, root = EAGER.moments(x, torch.empty(2, 16, 256))
    xd = x.double()
    assert (mean.double() - xd.mean(-1)).abs().max() <= 1e-4
    m2 = (xd - xd.mean(-1, keepdim=True)).square().sum(-1)
    assert ((root.double().square() - m2).abs() / m2).max() <= 1e-5  # no cancellation from the mean


@pytest.mark.slow
def test_compiled_chunk_kernels_agree_with_eager(model):
    """``compile=True``: Inductor-fused element-wise kernels, same output to float32 rounding."""
    pytest.importorskip("torch._inductor")
    image, feats = _inputs(hw=(37, 41), low=(5, 6))
    with torch.no_grad():
        eager = model(image, feats)
        compiled = AnyUp(AnyUpConfig(compile=True))
        compiled.load_state_dict(model.state_dict())
        out = compiled.eval()(image, feats)
    assert (out - eager).abs().max() <= 1e-5


@needs_cuda
@pytest.mark.parametrize("edge", ["hard", "soft"])
@pytest.mark.parametrize("name", ["matmul", "sdpa", "flex", "triton"])
def test_backends_on_cuda(model, name, edge, ieee_float32):
    m = AnyUp(AnyUpConfig(window_edge=edge)).cuda().eval()
    m.load_state_dict(model.state_dict())
    image, feats = _inputs(c=64, hw=(64, 48), low=(8, 6), device="cuda")
    with torch.no_grad():
        ref = dense_forward(m, image, feats)
        out = m(image, feats, attention=name)
    assert (out - ref).abs().max() <= 1e-4


@needs_cuda
@pytest.mark.parametrize("cap_mib", [64, 256, 1024])
def test_memory_cap_holds_on_cuda(model, cap_mib):
    """448² from 32²×384 under a cap: the CUDA peak beyond the inputs and the output stays within 1.15x."""
    m = AnyUp().cuda().eval()
    m.load_state_dict(model.state_dict())
    image, feats = _inputs(c=384, hw=(448, 448), low=(32, 32), device="cuda")
    with torch.no_grad():
        m(image[..., :64, :64], feats[..., :4, :4])  # lazy CUDA state (cuBLAS workspaces) outside the count
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = m(image, feats, max_memory=cap_mib << 20)
        torch.cuda.synchronize()
    working = torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()
    assert working <= 1.15 * (cap_mib << 20), f"{working / 2**20:.0f} MiB under a {cap_mib} MiB cap"


# ------------------------------------------------------------------------------------------------
# Memory plans and the cap
def test_plan_refuses_a_cap_below_the_minimum_and_names_it(model):
    image, feats = _inputs(hw=(64, 64), low=(8, 8))
    with torch.no_grad(), pytest.raises(ValueError, match=r"below the minimum this call needs \([0-9,]+ bytes"):
        model(image, feats, max_memory=10_000)
    image.requires_grad_(True)
    with pytest.raises(ValueError, match="with gradients"):
        model(image, feats, max_memory=1_000_000)


def test_plan_estimate_stays_under_the_cap(model):
    image, feats = _inputs(c=384, hw=(448, 448), low=(32, 32))
    seen = set()
    for cap in [64 << 20, 128 << 20, 256 << 20, 1 << 30, 4 << 30]:
        p = plan_for(model, image, feats, (448, 448), EngineOptions(max_memory=cap))
        assert p.estimate <= cap
        seen.add(p.mode)
    assert seen == {"whole", "resident", "cached", "streamed"}
    # the output's memory holds 384 // 128 = 3 maps: a cap that streams without it runs whole with it
    p = plan_for(model, image, feats, (448, 448), EngineOptions(max_memory=64 << 20), out_slots=3)
    assert (p.mode, p.out_slots) == ("whole", 3) and p.estimate <= 64 << 20


@pytest.mark.parametrize(
    "value,expected", [(1024, 1024), ("1GB", 10**9), ("512MiB", 512 << 20), ("1.5 G", 1_500_000_000), ("2GiB", 2 << 30)]
)
def test_parse_memory(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["lots", "-1GB", 0, -5, True, "1GBB", float("nan")])
def test_parse_memory_errors(value):
    with pytest.raises(ValueError, match="max_memory"):
        parse_memory(value)


def test_automatic_cap_is_the_same_every_run(model):
    """The automatic cap comes from total memory, so the plan (and every output bit) is fixed."""
    image, feats = _inputs()
    plans = {plan_for(model, image, feats, (23, 31), EngineOptions()) for _ in range(3)}
    assert len(plans) == 1
    with torch.no_grad():
        assert torch.equal(model(image, feats), model(image, feats))


def test_window_dense_mask_matches_tiles():
    w = Window.build((17, 23), (4, 5), 0.1)
    dense = w.dense_mask().view(17, 23, 4, 5)
    ra, rb, ca, cb = w.reach(3, 9, 5, 12)
    tile = w.mask(3, 9, 5, 12).view(6, 7, rb - ra, cb - ca)
    assert torch.equal(dense[3:9, 5:12, ra:rb, ca:cb], tile)
    assert (
        not dense[3:9, 5:12]
        .flatten(2)[..., [i * 5 + j for i in range(4) for j in range(5) if not (ra <= i < rb and ca <= j < cb)]]
        .any()
    )


@pytest.mark.parametrize("edge", ["hard", "soft"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_window_bias_is_the_mask_as_a_logit_bias(edge, dtype):
    """The decode's per-tile bias (row table + column table) admits exactly the mask's cells:
    0 inside for the hard edge, the soft edge's bias as it is; ``out=`` writes the same values."""
    w = Window.build((17, 23), (14, 15), 0.1, edge=edge, bias_dtype=dtype)
    for box in [(0, 17, 0, 23), (3, 9, 5, 12), (16, 17, 22, 23), (0, 1, 0, 1)]:
        bias, mask = w.bias(*box), w.mask(*box)
        assert bias.dtype == dtype and bias.shape == mask.shape
        if edge == "hard":
            assert mask.dtype == torch.bool
            assert torch.equal(bias, torch.zeros_like(bias).masked_fill(~mask, float("-inf")))
        else:
            assert torch.equal(bias, mask)
        buf = torch.full((bias.numel() + 5,), float("nan"), dtype=dtype)  # a larger scratch, as the decode's
        out = w.bias(*box, out=buf[: bias.numel()].view(bias.shape))
        assert torch.equal(out, bias) and out.data_ptr() == buf.data_ptr()


def test_scratch_buffers_give_the_same_bits_and_are_reused():
    """With the decode's scratch the weights are the same bits as freshly allocated ones, for tiles
    that grow and shrink, and the buffers are allocated once, at the largest tile."""
    from anyup.engine.attention import Scratch, attention_weights

    scratch = Scratch()
    cases = [_tile_case(seed=s, b=1, nq=nq, nk=nk) for s, (nq, nk) in enumerate([(37, 23), (64, 90), (5, 7), (64, 90)])]
    ptrs = []
    for soft in (False, True):
        for qh, kh, v, mask in cases:
            bias = mask if not soft else torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
            fresh = attention_weights(qh, kh, bias)
            reused = attention_weights(qh, kh, bias, scratch)
            assert torch.equal(fresh, reused)
            assert torch.equal(attend_matmul(qh, kh, v, bias), attend_matmul(qh, kh, v, bias, scratch))
            ptrs.append(reused.data_ptr())
    assert len(set(ptrs[1:])) == 1  # after the first growth (to 64 x 90) every tile reuses one buffer
    assert scratch.buffer(Scratch.WEIGHTS, (1, 64, 90), torch.float32, torch.device("cpu")).data_ptr() == ptrs[-1]


_HEAP_SCRIPT = """
import os, torch
from anyup.engine.heap import release_free_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
big = torch.ones(8 << 20); del big  # a freed 32 MB mmap raises glibc's dynamic mmap threshold
base = rss()
blocks = [torch.ones(64 << 10) for _ in range(200)]  # 200 x 256 KiB, now from the heap, touched
keep = blocks.pop()  # the last one pins the heap's top: the others cannot be trimmed from it
del blocks
retained = rss() - base
if not release_free_memory():
    print("unavailable")
else:
    print(retained, retained - (rss() - base))
"""


def test_release_free_memory_returns_the_heaps_free_pages():
    """The engine's stage-boundary trim (glibc ``malloc_trim``) gives freed heap blocks back: without
    it 50 MB of freed 256 KiB tensors stay resident behind one live block (in a fresh process)."""
    out = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT], capture_output=True, text=True, check=True).stdout
    if out.strip() == "unavailable":
        pytest.skip(f"no glibc malloc_trim on this platform ({sys.platform})")
    retained, released = (int(v) for v in out.split())
    assert retained > 40e6, retained  # glibc kept the freed blocks' pages
    assert released > 40e6, released  # and malloc_trim returned them


# ------------------------------------------------------------------------------------------------
# Drop-in for the authors' API
def test_authors_forward_arguments(model):
    image, feats = _inputs(c=8, hw=(30, 40), low=(3, 4))
    with torch.no_grad():
        ref = model(image, feats, output_size=(30, 40))
        out = model(image, feats, output_size=(30, 40), q_chunk_size=128)
        vis = model(image, feats, output_size=(30, 40), vis_attn=True)
    assert (out - ref).abs().max() <= 1e-5 and (vis - ref).abs().max() <= 1e-5
    maps = model.last_attention
    assert maps.shape == (1, 9, 3, 4) and torch.allclose(maps.sum((-1, -2)), torch.ones(1, 9), atol=1e-5)
    assert len(model.last_attention_pixels) == 9


def test_torch_hub_load_as_in_the_authors_readme(tmp_path, golden_file, monkeypatch):
    """``torch.hub.load(repo, "anyup", use_natten=False, pretrained=True, device=...)`` from a local checkout."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("ANYUP_WEIGHTS_DIR", str(golden_file.parents[1] / "weights"))  # offline: the local copy
    upsampler = torch.hub.load(repo, "anyup", source="local", use_natten=False, pretrained=True, device="cpu")
    with pytest.raises(ValueError, match="NATTEN"):
        torch.hub.load(repo, "anyup", source="local", use_natten=True, pretrained=False)
    hr_image, lr_features = _inputs(c=384, hw=(56, 56), low=(4, 4))
    with torch.no_grad():
        hr = upsampler(hr_image, lr_features, output_size=(56, 56), q_chunk_size=256)
        ref = anyup.load(golden_file.parents[1] / "weights" / "anyup_paper.pth")(hr_image, lr_features)
    assert hr.shape == (1, 384, 56, 56) and torch.allclose(hr, ref, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Precision
def test_autocast_does_not_change_the_engines_dtypes(model):
    """Under CPU autocast the engine keeps its own dtypes (float32 logits and softmax): the same
    bits as without it, with and without gradients, and the same attention maps. Before, autocast
    ran the attention logits in bfloat16 (1e-2 relative error on a float32 call)."""
    image, feats = _inputs(b=2, c=5, hw=(19, 23), low=(4, 5))
    with torch.no_grad():
        want = model(image, feats, (17, 21), tile_size=6)
        want_bf16 = model(image, feats.bfloat16(), (17, 21))
    want_maps = model.attention_weights(image, feats, (17, 21), [(3, 4), (16, 0)])
    f = feats.clone().requires_grad_(True)
    model(image, f, (17, 21), tile_size=6).square().sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            got = model(image, feats, (17, 21), tile_size=6)
            got_bf16 = model(image, feats.bfloat16(), (17, 21))
        got_maps = model.attention_weights(image, feats, (17, 21), [(3, 4), (16, 0)])
        f2 = feats.clone().requires_grad_(True)
        out = model(image, f2, (17, 21), tile_size=6)
        assert torch.is_autocast_enabled("cpu")  # the caller's state is back after the call
    out.float().square().sum().backward()
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert got_bf16.dtype == torch.bfloat16 and torch.equal(got_bf16, want_bf16)
    assert torch.equal(got_maps, want_maps)
    assert out.dtype == torch.float32
    torch.testing.assert_close(f2.grad, f.grad, rtol=0, atol=0)


@pytest.mark.parametrize("grad_path", [False, True])
def test_iter_tiles_leaves_the_callers_state_between_tiles(grad_path):
    """The caller's loop body runs in its own grad and autocast mode, not the engine's (a head
    trained on each streamed tile gets its gradients)."""
    torch.manual_seed(0)
    m = AnyUp().eval().requires_grad_(grad_path)  # no parameter needs a gradient: the no-grad engine
    image, feats = _inputs(c=4, hw=(20, 22), low=(4, 4))
    head = torch.nn.Conv2d(4, 2, 1)
    seen = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for t in m.iter_tiles(image, feats, tile_size=8):
            seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
            head.zero_grad()
            head(t.data.detach().float()).float().square().mean().backward()
            assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert len(seen) == 9 and all(s == (True, True) for s in seen)


def test_bfloat16_on_cpu_computes_in_float32(model):
    image, feats = _inputs(hw=(32, 40), low=(4, 5))
    with torch.no_grad():
        out = model(image.bfloat16(), feats.bfloat16())
        ref = model(image.bfloat16().float(), feats.bfloat16().float())
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref.bfloat16())


@needs_cuda
def test_bfloat16_on_cuda(model):
    m = AnyUp().cuda().eval()
    m.load_state_dict(model.state_dict())
    image, feats = _inputs(c=32, hw=(64, 64), low=(8, 8), device="cuda")
    with torch.no_grad():
        ref = m(image, feats)
        out = m(image.bfloat16(), feats.bfloat16())
    assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().mean() < 0.05


def test_config_attention_field(model):
    m = AnyUp(AnyUpConfig(attention="sdpa")).eval()
    m.load_state_dict(model.state_dict())
    image, feats = _inputs()
    with torch.no_grad():
        assert (m(image, feats) - model(image, feats)).abs().max() <= 1e-5
