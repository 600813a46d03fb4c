"""Attention backends: one small interface, chosen by name, all exact to the reference semantics.

Every backend computes, for one tile of queries against the rectangle of keys they can reach,

    out[b, q] = sum_k mean_h softmax_k(mask(q, k) ? <qh[b,h,q], kh[b,h,k]> / sqrt(hd) : -inf) * v[b, k]

i.e. the heads-averaged softmax weights applied to the raw values. Arguments: ``qh`` (B, nh, Nq, hd),
``kh`` (B, nh, Nk, hd), ``values`` (B, Nk, C), ``mask`` (Nq, Nk) bool, or float32 for the soft
window edge (an additive logit bias, ``-inf`` outside; see :mod:`anyup.engine.window`, then
``mask(q, k) ? l : -inf`` above reads ``l + bias(q, k)``); result (B, Nq, C) in the
values' dtype (any strides: ``matmul`` returns a transposed view of a (B, C, Nq) product, so the
engine's channels-first tiles need no copy). Logits and softmax run in float32 (float64 stays).

Backends (``attention=`` of :class:`anyup.AnyUp` / :class:`anyup.engine.EngineOptions`):

* ``matmul``: two GEMMs and a masked softmax (PyTorch ops; every device).
* ``sdpa``: ``F.scaled_dot_product_attention`` with V broadcast to every head, then the head mean
  (equal to the averaged-weights product; the value product is done once per head).
* ``flex``: ``torch.nn.attention.flex_attention`` with the window as a block mask (compiled;
  needs a working ``torch.compile`` for the device).
* ``triton``: a two-pass Triton kernel (per-head max/sum first, then one weighted pass over V, so
  the value product is not repeated per head). CUDA, or the CPU under ``TRITON_INTERPRET=1``.
* ``auto``: the fastest available exact backend for the device (see :func:`resolve`).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anyup.engine.window import window_bias
from anyup.layers.norms import acc_dtype

AttendFn = Callable[..., torch.Tensor]  # (qh, kh, values, mask, scratch=None) -> (B, Nq, C)


class Scratch:
    """Buffers one decode reuses from tile to tile (no autograd): the window bias, the logits, their
    softmax and the averaged weights.

    A tile's logits are megabytes (B*nh*Nq*Nk float32); allocated afresh per tile, such a block
    comes from ``mmap`` and every tile pays a page fault per 4 KiB before it can be written
    (1 ms of the 2048² tile's ~3 ms for the tiles that reach 28x28 cells; the bias's sum took 6x
    its in-cache time). The buffers only grow, to the largest tile; each call of the decode holds
    its own (threads share none).
    """

    BIAS, LOGITS, SOFTMAX, WEIGHTS = range(4)

    def __init__(self) -> None:
        self._bufs: list[torch.Tensor | None] = [None] * 4

    def buffer(self, i: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Buffer ``i`` (one of the class constants) as a contiguous ``shape`` of ``dtype`` on ``device``."""
        n = math.prod(shape)
        buf = self._bufs[i]
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = self._bufs[i] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    attend: AttendFn
    available: Callable[[torch.device], bool]
    description: str


def attention_weights(
    qh: torch.Tensor, kh: torch.Tensor, mask: torch.Tensor, scratch: Scratch | None = None
) -> torch.Tensor:
    """Heads-averaged masked softmax weights (B, Nq, Nk), float32 (float64 stays).

    ``qh`` (B, nh, Nq, hd), ``kh`` (B, nh, Nk, hd), ``mask`` (Nq, Nk) bool or float bias. The logits
    are one ``baddbmm``: the window bias is the GEMM's addend and ``1/sqrt(hd)`` its scale, instead
    of a GEMM followed by a scaling pass and a masking pass over the logits (the logits are the
    largest tensor of a tile; 20 % less time per tile at 2048² from 128²). With ``scratch`` (no
    autograd) the logits, their softmax and the weights live in its reused buffers, and the result
    is a view of them, valid until the next tile.
    """
    acc = acc_dtype(qh)
    b, nh, nq, hd = qh.shape
    nk = kh.shape[-2]
    q = qh.to(acc).reshape(b * nh, nq, hd)
    k = kh.to(acc).reshape(b * nh, nk, hd)
    bias = window_bias(mask, acc).expand(b * nh, nq, nk)  # no copy: baddbmm reads it once per head
    alpha = 1.0 / math.sqrt(hd)
    if scratch is None:
        logits = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=alpha)  # (B*nh, Nq, Nk)
        return logits.view(b, nh, nq, nk).softmax(dim=-1).mean(dim=1)  # (B, Nq, Nk)
    dev = q.device
    logits = scratch.buffer(Scratch.LOGITS, (b * nh, nq, nk), acc, dev)
    torch.baddbmm(bias, q, k.transpose(1, 2), alpha=alpha, out=logits)  # (B*nh, Nq, Nk)
    probs = torch.softmax(logits, dim=-1, out=scratch.buffer(Scratch.SOFTMAX, (b * nh, nq, nk), acc, dev))
    return torch.mean(probs.view(b, nh, nq, nk), dim=1, out=scratch.buffer(Scratch.WEIGHTS, (b, nq, nk), acc, dev))


def attend_matmul(
    qh: torch.Tensor, kh: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scratch: Scratch | None = None
) -> torch.Tensor:
    weights = attention_weights(qh, kh, mask, scratch)  # (B, Nq, Nk)
    out = torch.matmul(values.transpose(1, 2), weights.to(values.dtype).transpose(1, 2))  # (B, C, Nq)
    return out.transpose(1, 2)  # (B, Nq, C), a view: channels-first tiles need no copy


def attend_sdpa(
    qh: torch.Tensor, kh: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scratch: Scratch | None = None
) -> torch.Tensor:
    acc = acc_dtype(qh)
    nh = qh.shape[1]
    v = values.to(acc).unsqueeze(1).expand(-1, nh, -1, -1)  # (B, nh, Nk, C), no copy
    attn_mask = mask if mask.dtype == torch.bool else mask.to(acc)  # float: added to the logits
    out = F.scaled_dot_product_attention(qh.to(acc), kh.to(acc), v, attn_mask=attn_mask)  # (B, nh, Nq, C)
    return out.mean(dim=1).to(values.dtype)  # (B, Nq, C)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


FLEX_BLOCK = 128  # flex_attention's block size: tiles are padded to multiples of it


def _pad_to(x: torch.Tensor, dim: int, size: int, value: float = 0.0) -> torch.Tensor:
    """``x`` padded with ``value`` at the end of ``dim`` to ``size`` (``x`` itself when it is that long)."""
    extra = size - x.shape[dim]
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, extra]
    return F.pad(x, pad, value=value)


def attend_flex(
    qh: torch.Tensor, kh: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scratch: Scratch | None = None
) -> torch.Tensor:
    """flex_attention on one tile, padded to multiples of :data:`FLEX_BLOCK` queries and keys.

    The compiled kernel is specialised to its shapes (``dynamic=False``), and a call's tiles come
    in many (queries, keys) shapes: unpadded, one call at 224² compiled eight times (70 s) and then
    hit dynamo's recompile limit, after which flex runs unfused. Padded keys are masked out and
    padded queries dropped, so the result is unchanged; a call compiles a few shapes at most.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    acc = acc_dtype(qh)
    nh, nq, nk = qh.shape[1], qh.shape[2], kh.shape[2]
    nq_p, nk_p = (-(-n // FLEX_BLOCK) * FLEX_BLOCK for n in (nq, nk))

    allowed = mask if mask.dtype == torch.bool else torch.isfinite(mask)
    allowed = _pad_to(_pad_to(allowed, 0, nq_p, False), 1, nk_p, False)  # (nq_p, nk_p): padding never attends
    bias = None if mask.dtype == torch.bool else _pad_to(_pad_to(mask.to(acc), 0, nq_p), 1, nk_p)
    qh, kh, values = _pad_to(qh, 2, nq_p), _pad_to(kh, 2, nk_p), _pad_to(values, 1, nk_p)

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[q_idx, kv_idx]

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias[q_idx, kv_idx]

    block = create_block_mask(mask_mod, None, None, nq_p, nk_p, device=qh.device)
    v = values.to(acc).unsqueeze(1).expand(-1, nh, -1, -1)
    out = _compiled_flex()(
        qh.to(acc), kh.to(acc), v.contiguous(), block_mask=block, score_mod=None if bias is None else score_mod
    )  # (B, nh, Nq_p, C)
    return out[:, :, :nq].mean(dim=1).to(values.dtype)  # the padded queries dropped


def attend_triton(
    qh: torch.Tensor, kh: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scratch: Scratch | None = None
) -> torch.Tensor:
    from anyup.engine.triton_attention import windowed_attention

    return windowed_attention(qh, kh, values, mask)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _triton_ok(device: torch.device) -> bool:
    if not _has("triton"):
        return False
    if device.type == "cpu":  # Triton's interpreter (triton.runtime.interpreter, Triton >= 3.0)
        return os.environ.get("TRITON_INTERPRET") == "1" and _has("triton.runtime.interpreter")
    return device.type == "cuda"


def _flex_ok(device: torch.device) -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return device.type in ("cuda", "cpu")


BACKENDS: dict[str, AttentionBackend] = {
    b.name: b
    for b in (
        AttentionBackend("matmul", attend_matmul, lambda d: True, "two GEMMs + masked softmax (PyTorch ops)"),
        AttentionBackend("sdpa", attend_sdpa, lambda d: True, "F.scaled_dot_product_attention, V broadcast to heads"),
        AttentionBackend("flex", attend_flex, _flex_ok, "flex_attention with a block mask (torch.compile)"),
        AttentionBackend(
            "triton", attend_triton, _triton_ok, "two-pass Triton kernel (CUDA; CPU with TRITON_INTERPRET=1)"
        ),
    )
}
ATTENTION_CHOICES = ("auto", *BACKENDS)


def resolve(name: str, device: torch.device) -> AttentionBackend:
    """The backend called ``name`` (``auto``: triton on CUDA when installed, else matmul).

    On the CPU ``matmul`` is the fastest exact backend here (``benchmarks/attention_backends.py``
    measures all of them): its logits are small per tile and MKL's GEMMs beat the fused kernels,
    which repeat the value product per head.
    """
    if name == "auto":
        if device.type == "cuda" and _triton_ok(device):
            return BACKENDS["triton"]
        return BACKENDS["matmul"]
    if name not in BACKENDS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}; got {name!r}")
    backend = BACKENDS[name]
    if not backend.available(device):
        raise RuntimeError(f"attention backend {name!r} is not available on {device}: {backend.description}")
    return backend
