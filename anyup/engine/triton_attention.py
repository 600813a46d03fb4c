"""Two-pass Triton kernel for heads-averaged windowed attention (optional; never imported eagerly).

Pass 1 (``_stats_kernel``): per query and head, the running max ``m`` and sum ``l`` of
``exp(logit - m)`` over the allowed keys. Pass 2 (``_apply_kernel``): per block of keys, the
heads-averaged weights ``mean_h exp(logit_h - m_h) / l_h`` are formed once and multiplied with
the raw values, so the value product is done once, not once per head. The window arrives as an
additive float32 logit bias (0 or ``log(coverage)`` inside, ``-inf`` outside). Runs on CUDA, and on the
CPU under ``TRITON_INTERPRET=1`` (how the tests run it). Every ``tl.dot`` is full float32
(``input_precision="ieee"``): Triton's default for float32 on NVIDIA tensor cores is TF32 (10-bit
mantissa, about 1e-3 relative error), which the interpreter does not reproduce, so a kernel exact
here would have been off by orders of magnitude more than 1e-5 on a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from anyup.engine.window import window_bias


@triton.jit
def _stats_kernel(
    q_ptr,
    k_ptr,
    mask_ptr,
    m_ptr,
    l_ptr,
    nq,
    nk,
    scale,
    NH: tl.constexpr,
    HD: tl.constexpr,
    HDP: tl.constexpr,
    BQ: tl.constexpr,
    BK: tl.constexpr,
):
    pid_q = tl.program_id(0)
    b = tl.program_id(1)
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, HDP)
    q_ok = offs_q < nq
    d_ok = offs_d < HD
    for h in tl.static_range(NH):
        q_base = q_ptr + ((b * NH + h) * nq) * HD
        q = tl.load(q_base + offs_q[:, None] * HD + offs_d[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)
        m = tl.full((BQ,), float("-inf"), tl.float32)
        l = tl.zeros((BQ,), tl.float32)
        for k0 in range(0, nk, BK):
            offs_k = k0 + tl.arange(0, BK)
            k_ok = offs_k < nk
            k_base = k_ptr + ((b * NH + h) * nk) * HD
            k = tl.load(k_base + offs_k[:, None] * HD + offs_d[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0.0)
            bias = tl.load(
                mask_ptr + offs_q[:, None] * nk + offs_k[None, :],
                mask=q_ok[:, None] & k_ok[None, :],
                other=float("-inf"),
            )
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale + bias
            m_new = tl.maximum(m, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l = l * tl.exp(m - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), axis=1)
            m = m_new
        tl.store(m_ptr + (b * NH + h) * nq + offs_q, m, mask=q_ok)
        tl.store(l_ptr + (b * NH + h) * nq + offs_q, l, mask=q_ok)


@triton.jit
def _apply_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    m_ptr,
    l_ptr,
    o_ptr,
    nq,
    nk,
    c,
    scale,
    NH: tl.constexpr,
    HD: tl.constexpr,
    HDP: tl.constexpr,
    BQ: tl.constexpr,
    BK: tl.constexpr,
    BC: tl.constexpr,
):
    pid_q = tl.program_id(0)
    b = tl.program_id(1)
    pid_c = tl.program_id(2)
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, HDP)
    offs_c = pid_c * BC + tl.arange(0, BC)
    q_ok = offs_q < nq
    d_ok = offs_d < HD
    c_ok = offs_c < c
    acc = tl.zeros((BQ, BC), tl.float32)
    for k0 in range(0, nk, BK):
        offs_k = k0 + tl.arange(0, BK)
        k_ok = offs_k < nk
        bias = tl.load(
            mask_ptr + offs_q[:, None] * nk + offs_k[None, :], mask=q_ok[:, None] & k_ok[None, :], other=float("-inf")
        )
        w = tl.zeros((BQ, BK), tl.float32)
        for h in tl.static_range(NH):
            q = tl.load(
                q_ptr + ((b * NH + h) * nq) * HD + offs_q[:, None] * HD + offs_d[None, :],
                mask=q_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            k = tl.load(
                k_ptr + ((b * NH + h) * nk) * HD + offs_k[:, None] * HD + offs_d[None, :],
                mask=k_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            m = tl.load(m_ptr + (b * NH + h) * nq + offs_q, mask=q_ok, other=0.0)
            l = tl.load(l_ptr + (b * NH + h) * nq + offs_q, mask=q_ok, other=1.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale + bias
            w += tl.exp(s - m[:, None]) / l[:, None]
        v = tl.load(
            v_ptr + (b * nk + offs_k[:, None]) * c + offs_c[None, :], mask=k_ok[:, None] & c_ok[None, :], other=0.0
        )
        acc += tl.dot(w / NH, v, input_precision="ieee")
    tl.store(o_ptr + (b * nq + offs_q[:, None]) * c + offs_c[None, :], acc, mask=q_ok[:, None] & c_ok[None, :])


def windowed_attention(qh: torch.Tensor, kh: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """qh (B, nh, Nq, hd), kh (B, nh, Nk, hd), values (B, Nk, C), mask (Nq, Nk) bool or float bias -> (B, Nq, C).

    Computes in float32 (the result is cast to the values' dtype); float64 is not supported.
    """
    if qh.dtype == torch.float64:
        raise TypeError("the triton attention backend computes in float32; use attention='matmul' for float64")
    b, nh, nq, hd = qh.shape
    nk, c = kh.shape[2], values.shape[-1]
    q = qh.float().contiguous()
    k = kh.float().contiguous()
    v = values.float().contiguous()
    bias = window_bias(mask, torch.float32).contiguous()  # (Nq, Nk): 0 / log(coverage) inside, -inf outside
    m = torch.empty(b, nh, nq, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    out = torch.empty(b, nq, c, device=q.device, dtype=torch.float32)
    bq, bk = 16, 32
    bc = min(64, max(16, triton.next_power_of_2(c)))
    hdp = max(16, triton.next_power_of_2(hd))
    scale = 1.0 / math.sqrt(hd)
    _stats_kernel[(triton.cdiv(nq, bq), b)](q, k, bias, m, l, nq, nk, scale, NH=nh, HD=hd, HDP=hdp, BQ=bq, BK=bk)
    _apply_kernel[(triton.cdiv(nq, bq), b, triton.cdiv(c, bc))](
        q, k, v, bias, m, l, out, nq, nk, c, scale, NH=nh, HD=hd, HDP=hdp, BQ=bq, BK=bk, BC=bc
    )
    return out.to(values.dtype)
