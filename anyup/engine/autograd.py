"""The engine under autograd: the modules' own maths, checkpointed so backward recomputes.

Each ResBlock and each attention tile is a checkpoint segment (``torch.utils.checkpoint``,
non-reentrant): forward keeps only segment inputs, backward recomputes one segment at a time.
Working memory is then about 13 full-resolution maps plus one tile, instead of every activation
and a dense (H'*W', h*w) attention (see :mod:`anyup.engine.plan`). Gradients are those of the
plain computation (tests compare with the dense reference by gradcheck in float64).

Inside :mod:`torch.func` transforms (``grad``, ``vjp``, ``jacrev``, ``vmap``, ...) the same maths
runs without checkpoints, which those transforms do not support (saved-tensor hooks), and the
output is assembled by concatenation instead of written into a preallocated tensor: working memory
is then that of the plain computation, not capped (:func:`functorch_active`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from anyup.engine.attention import AttentionBackend
from anyup.engine.plan import Plan
from anyup.layers import pixel_coordinates
from anyup.layers._func import functorch_active


class _WriteTile(torch.autograd.Function):
    """``out[:, :, y0:y1, x0:x1] = tile`` in place, differentiable, for tiles that do not overlap.

    PyTorch's own slice assignment (``CopySlices``) clones the whole output gradient in backward,
    once per tile: a 448² step with C = 384 spent 7.9 s on 121 copies of 300 MB. Here backward hands the tile
    its slice of the gradient (a view) and passes the gradient on unchanged. That is exact when
    every tile writes its own rectangle of a tensor that needs no gradient itself (the output
    :meth:`anyup.AnyUp.forward` allocates, or an ``out=`` of the caller's): the rectangle's earlier
    contents were not computed from anything that needs a gradient.
    """

    @staticmethod
    def forward(ctx, out: torch.Tensor, tile: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        y0, y1, x0, x1 = box
        ctx.box = box
        out[:, :, y0:y1, x0:x1] = tile
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y0, y1, x0, x1 = ctx.box
        return grad, grad[:, :, y0:y1, x0:x1], None


def write_tiles(out: torch.Tensor | None, tiles: Iterable) -> torch.Tensor:
    """Write each :class:`~anyup.engine.Tile` of ``tiles`` into ``out`` (B, C, H', W'); returns ``out``.

    Under autograd the writes are differentiable without a copy of the output's gradient per tile
    (:class:`_WriteTile`) when ``out`` itself needs no gradient (decided before the first write);
    otherwise plain slice assignments (``CopySlices``). ``out=None``: the tiles concatenated
    (:func:`assemble_tiles`), the only form inside :mod:`torch.func` transforms, which reject ``out``.
    """
    if functorch_active() and out is not None:
        raise ValueError(
            "out= cannot be used inside torch.func transforms (grad, vmap, jacrev, ...): they cannot write "
            "into a tensor created outside them; call the model without out="
        )
    if out is None:
        return assemble_tiles(tiles)
    pass_through = not out.requires_grad
    for t in tiles:
        if pass_through and torch.is_grad_enabled() and t.data.requires_grad:
            out = _WriteTile.apply(out, t.data, (t.y0, t.y1, t.x0, t.x1))
        else:
            out[:, :, t.y0 : t.y1, t.x0 : t.x1] = t.data
    return out


def assemble_tiles(tiles: Iterable) -> torch.Tensor:
    """The (B, C, H', W') output from row-major, non-overlapping tiles by concatenation, without
    in-place writes (the form :mod:`torch.func` transforms can trace)."""
    rows: list[list[torch.Tensor]] = []
    y0 = None
    for t in tiles:
        if t.y0 != y0:
            rows.append([])
            y0 = t.y0
        rows[-1].append(t.data)  # (B, C, th, tw)
    return torch.cat([torch.cat(r, dim=3) for r in rows], dim=2)  # (B, C, H', W')


def _ck(fn, *args):
    if functorch_active():  # torch.func does not support checkpoint's saved-tensor hooks
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False)


def _stack(stack, x: torch.Tensor, tail=None) -> torch.Tensor:
    """First layer + ResBlocks, each block a checkpoint; ``tail`` (e.g. pooling) joins the last one."""
    x = _ck(stack[0], x)
    blocks = stack.blocks
    for i, blk in enumerate(blocks):
        if tail is not None and i == len(blocks) - 1:
            x = _ck(lambda v, blk=blk: tail(blk(v)), x)
        else:
            x = _ck(blk, x)
    return x


def iter_tiles_autograd(
    model, image: torch.Tensor, features: torch.Tensor, out_hw: tuple[int, int], plan: Plan, backend: AttentionBackend
) -> Iterator:
    from anyup.engine.run import Tile, decoder_inputs, low_res_keys

    dtype = features.dtype if features.dtype == torch.float64 or features.device.type == "cuda" else torch.float32
    image, feats = image.to(dtype), features.to(dtype)
    b, c, h, w = feats.shape
    hi, wi = image.shape[-2:]
    hq, wq = out_hw
    ys, xs = pixel_coordinates(hi, image.device), pixel_coordinates(wi, image.device)
    e = _stack(model.image_encoder, image, tail=lambda v: model.rope(v, ys, xs))  # (B, D, H, W)
    kimg = _stack(model.key_encoder, e, tail=lambda v: F.adaptive_avg_pool2d(v, (h, w)))  # (B, D, h, w)
    q = _stack(model.query_encoder, e, tail=lambda v: F.adaptive_avg_pool2d(v, (hq, wq)))  # (B, D, H', W')
    del e
    keys = low_res_keys(model, kimg, feats, plan)  # (B, D, h, w)
    cd = model.cross_decode
    q = cd.decode_queries(q)  # (B, D, H', W')
    kh, values, window = decoder_inputs(model, keys, feats, out_hw)
    nh, hd = kh.shape[1], kh.shape[-1]
    t = plan.attention_side

    def tile_fn(q_t, k_sub, v_sub, mask):
        qh = cd.cross_attn.project_queries(q_t)  # (B, nh, th*tw, hd)
        return backend.attend(qh, k_sub, v_sub, mask)  # (B, th*tw, C)

    # The query map split into the tiles once: in backward each split gathers its pieces' gradients
    # with one concatenation, where a slice per tile would add a full-size zero-padded gradient per tile.
    rows = [(i0, min(hq, i0 + t)) for i0 in range(0, hq, t)]
    cols = [(j0, min(wq, j0 + t)) for j0 in range(0, wq, t)]
    q_rows = q.split([i1 - i0 for i0, i1 in rows], dim=2)  # (B, D, th, W') each
    del q
    for (i0, i1), q_row in zip(rows, q_rows, strict=True):
        q_tiles = q_row.split([j1 - j0 for j0, j1 in cols], dim=3)  # (B, D, th, tw) each
        for (j0, j1), q_t in zip(cols, q_tiles, strict=True):
            ra, rb, ca, cb = window.reach(i0, i1, j0, j1)
            k_sub = kh[:, :, ra:rb, ca:cb].reshape(b, nh, -1, hd)
            v_sub = values[:, ra:rb, ca:cb].reshape(b, -1, c)
            o = _ck(tile_fn, q_t, k_sub, v_sub, window.bias(i0, i1, j0, j1))
            yield Tile(i0, i1, j0, j1, o.transpose(1, 2).reshape(b, c, i1 - i0, j1 - j0).to(features.dtype))
