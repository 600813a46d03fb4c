"""The pure layers: feature unification's (K, C) reindexing on both of its code paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anyup.layers import FeatureUnification


def _naive(fu: FeatureUnification, x: torch.Tensor) -> torch.Tensor:
    """The reference's computation, spelled out: all C*K responses, flat index c*K + k, viewed as (K, C)."""
    b, c, h, w = x.shape
    k, p = fu.out_channels, fu.kernel_size // 2
    resp = torch.stack(
        [F.conv2d(F.pad(x[:, ci : ci + 1], (p,) * 4), fu.basis[ki : ki + 1]) for ci in range(c) for ki in range(k)],
        dim=1,
    )[:, :, 0]  # (B, C*K, h, w)
    taps = F.conv2d(
        F.pad(torch.ones(1, 1, h, w, dtype=x.dtype), (p,) * 4), torch.ones(1, 1, *fu.basis.shape[-2:], dtype=x.dtype)
    )
    grid = (resp / taps).view(b, k, c, h, w)  # row-major reinterpretation
    return grid.softmax(dim=1).mean(dim=2)


@pytest.mark.parametrize("c", [1, 3, 7])
@pytest.mark.parametrize("chunk", [1 << 30, 40])  # one-conv path, chunked path
def test_feature_unification_matches_reference_indexing(c, chunk):
    torch.manual_seed(c)
    fu = FeatureUnification(out_channels=4, kernel_size=3).double()
    x = torch.randn(2, c, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        out = fu.unify(x, max_chunk_elements=chunk)
        want = _naive(fu, x)
    assert out.shape == (2, 4, 5, 6)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    assert (out >= 0).all() and torch.allclose(out.sum(dim=1), torch.ones(2, 5, 6, dtype=torch.float64))


def _one_conv(fu: FeatureUnification, x: torch.Tensor) -> torch.Tensor:
    """The reference's own float32 arithmetic: one conv over all responses, one softmax, one mean."""
    b, c, h, w = x.shape
    k, p = fu.out_channels, fu.kernel_size // 2
    resp = F.conv2d(F.pad(x, (p,) * 4).reshape(b * c, 1, h + 2 * p, w + 2 * p), fu.basis)  # (B*C, K, h, w)
    taps = F.conv2d(F.pad(torch.ones(1, 1, h, w), (p,) * 4), torch.ones(1, 1, fu.kernel_size, fu.kernel_size))
    return (resp / taps).view(b, k, c, h, w).softmax(dim=1).mean(dim=2)


@pytest.mark.parametrize("shape", [(1, 384, 16, 16), (1, 768, 8, 12), (2, 17, 7, 9), (1, 64, 13, 11)])
def test_feature_unification_chunks_keep_the_reference_bits_float32(shape):
    """Position chunks (every one >= MIN_CHUNK positions) give bit-identical float32 output: the
    published weights amplify rounding differences in this branch ~1000x, so exact bits matter."""
    from anyup.layers.feature_unification import MIN_CHUNK

    torch.manual_seed(0)
    fu = FeatureUnification(out_channels=128, kernel_size=5)
    x = F.normalize(torch.randn(shape), dim=1)
    b, c, h, w = shape
    with torch.no_grad():
        want = _one_conv(fu, x)
        for chunk in (1 << 40, b * c * 128 * MIN_CHUNK, b * c * 128 * (MIN_CHUNK * 2 + 1)):
            assert torch.equal(fu.unify(x, max_chunk_elements=chunk), want), chunk


def test_rmsnorm_fallback_matches_torch():
    """The fallback used before torch 2.4 has nn.RMSNorm's keys, attributes and outputs."""
    from anyup.layers.norms import _RMSNorm

    if not hasattr(nn, "RMSNorm"):
        pytest.skip(f"torch {torch.__version__} has no nn.RMSNorm to compare with")
    ours, theirs = _RMSNorm(16), nn.RMSNorm(16)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert (ours.eps, ours.normalized_shape) == (theirs.eps, theirs.normalized_shape)
    w = torch.rand(16) + 0.5
    ours.load_state_dict({"weight": w}), theirs.load_state_dict({"weight": w})
    xf = torch.randn(3, 16) * 100
    torch.testing.assert_close(ours(xf), theirs(xf), rtol=2e-6, atol=1e-6)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(ours.double()(x), theirs.double()(x))


@pytest.mark.parametrize("batch", [1, 3])
def test_pointwise_conv_is_the_1x1_convolution(batch):
    """PointwiseConv2d runs as a GEMM; it equals F.conv2d with its weight, for contiguous and strided
    (channels-last, sliced) inputs, in float64 and with gradients, and keeps nn.Conv2d's keys."""
    from anyup.layers.blocks import PointwiseConv2d

    torch.manual_seed(0)
    layer = PointwiseConv2d(5, 7).double()
    assert list(layer.state_dict()) == ["weight"] and layer.weight.shape == (7, 5, 1, 1)
    x = torch.randn(batch, 5, 9, 11, dtype=torch.float64)
    for inp in (x, x.to(memory_format=torch.channels_last), x[:, :, 2:7, 1:10]):
        inp = inp.detach().requires_grad_(True)
        got = layer(inp)
        want = F.conv2d(inp, layer.weight)
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-12
        g_got = torch.autograd.grad(got.square().sum(), (inp, layer.weight))
        g_want = torch.autograd.grad(want.square().sum(), (inp, layer.weight))
        assert all((a - b).abs().max() <= 1e-10 for a, b in zip(g_got, g_want, strict=True))
    assert layer(x.float()).dtype == torch.float32  # the weight is cast to the input's dtype


@pytest.mark.parametrize("bias", [True, False])
def test_rms_norm_linear_is_the_norm_then_the_linear_map(bias):
    """The folded projection equals RMSNorm then ``F.linear``: float64 to rounding, float32 within a
    few ulps on a channels-first map's transposed view, half dtypes bit for bit (they keep the
    unfolded order); zero rows stay finite; gradients pass gradcheck."""
    from anyup.layers.norms import rms_norm, rms_norm_linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 45, generator=g, dtype=torch.float64).transpose(1, 2) * 3  # (B, N, D), strided
    x[0, 7] = 0.0  # a zero row: its norm is 0 and 1/rms is 1/sqrt(eps)
    nw = torch.rand(16, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(8, 16, generator=g, dtype=torch.float64) / 4
    b = torch.randn(8, generator=g, dtype=torch.float64) if bias else None
    for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 0.0)]:
        args = [t if t is None else t.to(dtype) for t in (x, nw, w, b)]
        ref = F.linear(rms_norm(args[0], args[1], None, dim=-1), args[2].to(dtype), args[3])
        out = rms_norm_linear(args[0], args[1], None, args[2], args[3])
        assert out.dtype == dtype and out.shape == (2, 45, 8) and torch.isfinite(out).all()
        assert (out.double() - ref.double()).abs().max() <= tol * max(1.0, float(ref.abs().max()))
    small = x[:, 5:9]  # the zero row among three others: gradcheck's cost grows with the inputs
    leaves = [t.clone().requires_grad_() for t in (small, nw, w) + ((b,) if bias else ())]
    assert torch.autograd.gradcheck(
        lambda xx, nn_, ww, *bb: rms_norm_linear(xx, nn_, 1e-6, ww, bb[0] if bb else None), tuple(leaves)
    )
