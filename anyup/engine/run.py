"""The engine driver: per-pixel encoders in chunks, low-res keys, then windowed attention by tile.

``iter_tiles(model, image, features, out_hw, options, workspace)`` is everything :meth:`anyup.AnyUp.forward`
hands over. Without autograd it follows a :class:`~anyup.engine.plan.Plan`:

1. **Statistics and encodings** (:class:`PixelEncoders`). ``whole``: each encoder layer is one
   pass over the image in chunks, writing a full-resolution map and gathering the next
   GroupNorm's statistics on the way (the GEMM work of the method, once). ``resident`` /
   ``cached``: fewer maps kept (inner activations computed twice; the key branch recomputed from
   the kept encoding once per GroupNorm). ``streamed``: one pass per GroupNorm recomputes the
   chunks up to it from the image, so only chunk buffers (and a prefix of the encoding) live at
   full resolution. Maps may live in the output tensor (``workspace``, :func:`workspace_slots`).
2. **Keys** at the feature resolution: the key branch pooled to (h, w) (band by band when
   streamed), the feature-unification branch, the aggregation.
3. **Decode**: query rows band by band (3x3 conv with a one-row halo), then each tile of queries
   against only the rectangle of keys its windows reach, with the chosen attention backend.

With autograd the same maths runs through the modules, checkpointed per ResBlock and per tile,
so backward recomputes instead of storing (:mod:`anyup.engine.autograd`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F

from anyup._checks import parse_memory
from anyup.engine.attention import AttentionBackend, Scratch, resolve
from anyup.engine.heap import release_free_memory
from anyup.engine.kernels import EAGER, ChunkKernels, chunk_kernels
from anyup.engine.pixels import PassMoments, RopeTable, StackProgram
from anyup.engine.plan import CPU_LOGITS_BYTES, Geometry, Plan, default_max_memory, make_plan
from anyup.engine.window import Window
from anyup.engine.workers import ChunkWorkers, check_workers, default_workers
from anyup.layers import acc_dtype, adaptive_avg_pool_2d, pool_ranges
from anyup.layers._func import functorch_active

logger = logging.getLogger(__name__)
T = TypeVar("T")

KEY_BAND_PIXELS = 1 << 15  # image pixels of one float64 pooling band of the key map (whole mode)


class Tile(NamedTuple):
    """One rectangle of the output: rows ``[y0, y1)``, columns ``[x0, x1)``, ``data`` (B, C, y1-y0, x1-x0)."""

    y0: int
    y1: int
    x0: int
    x1: int
    data: torch.Tensor


@dataclass(frozen=True)
class EngineOptions:
    """Run-time settings of one call (never part of the weights)."""

    max_memory: int | str | None = None  # working-memory cap (bytes or '2GB'); None = automatic
    tile_size: int | None = None  # query tile side in output pixels; None = from the cap
    attention: str = "auto"  # see anyup.engine.attention
    compile: bool = False  # fused element-wise chunk kernels (see anyup.engine.kernels)
    cpu_workers: int | None = None  # threads for the encoders' chunks (anyup.engine.workers); None = automatic


def compute_dtype(features: torch.Tensor) -> torch.dtype:
    """float64 stays float64; on CUDA half types compute in their dtype; on CPU float32.

    CPU kernels for bfloat16/float16 GEMMs and element-wise ops are several times slower than
    float32 ones, so on the CPU half inputs compute in float32 (and the output keeps their dtype).
    """
    if features.dtype == torch.float64:
        return torch.float64
    if features.device.type == "cuda":
        return features.dtype
    return torch.float32


def geometry(
    model, image: torch.Tensor, features: torch.Tensor, out_hw: tuple[int, int], dtype: torch.dtype
) -> Geometry:
    cfg = model.config
    return Geometry(
        batch=features.shape[0],
        channels=features.shape[1],
        image_hw=(image.shape[-2], image.shape[-1]),
        low_hw=(features.shape[-2], features.shape[-1]),
        out_hw=(out_hw[0], out_hw[1]),
        dim=cfg.dim,
        heads=cfg.num_heads,
        ratio=cfg.window_ratio,
        mask_elem=torch.empty((), dtype=acc_dtype(features)).element_size(),  # Window.bias: the logits' dtype
        elem=torch.empty((), dtype=dtype).element_size(),
        logits_budget=CPU_LOGITS_BYTES if features.device.type == "cpu" else None,
    )


def plan_for(
    model,
    image: torch.Tensor,
    features: torch.Tensor,
    out_hw: tuple[int, int],
    options: EngineOptions,
    autograd: bool = False,
    out_slots: int = 0,
) -> Plan:
    """The plan :func:`iter_tiles` would use for these inputs (``out_slots``: :func:`workspace_slots`)."""
    cap = parse_memory(options.max_memory)
    if cap is None:
        cap = parse_memory(model.config.max_memory) or default_max_memory(image.device)
    if options.tile_size is not None and (
        isinstance(options.tile_size, bool) or not isinstance(options.tile_size, int) or options.tile_size < 1
    ):
        raise ValueError(f"tile_size must be a positive int, got {options.tile_size!r}")
    workers = check_workers(options.cpu_workers)
    if workers is None:
        workers = default_workers(features.device)
    elif features.device.type != "cpu":
        workers = 1
    g = geometry(model, image, features, out_hw, compute_dtype(features))
    if out_slots and not autograd:
        g = dataclasses.replace(g, out_slots=out_slots)
    return make_plan(g, cap, options.tile_size, autograd, workers)


def workspace_slots(model, image: torch.Tensor, features: torch.Tensor, out: torch.Tensor | None) -> int:
    """Full-resolution (B, D, H*W) encoder maps that fit in the output tensor ``out`` before the decode fills it.

    The output (B, C, H', W') is written band by band only after the encoders are done, so while
    they run its memory can hold ``C // D`` of their maps (the query map the decode reads last
    sits in the rows the decode overwrites after reading them). Only for an output of the image's
    size, contiguous, in the compute dtype, on the features' device; otherwise 0.
    """
    if out is None or needs_autograd(model, image, features):
        return 0
    if (
        tuple(out.shape[-2:]) != tuple(image.shape[-2:])
        or out.dtype != compute_dtype(features)
        or out.device != features.device
        or not out.is_contiguous()
    ):
        return 0
    return int(out.shape[1]) // int(model.config.dim)


def needs_autograd(model, image: torch.Tensor, features: torch.Tensor) -> bool:
    """Whether the call must run through the modules' maths (autograd, or a :mod:`torch.func` transform)."""
    if functorch_active():  # the streamed engine's threads and in-place buffers are invisible to it
        return True
    if not torch.is_grad_enabled():
        return False
    return image.requires_grad or features.requires_grad or any(p.requires_grad for p in model.parameters())


def iter_tiles(
    model,
    image: torch.Tensor,
    features: torch.Tensor,
    out_hw: tuple[int, int],
    options: EngineOptions,
    workspace: torch.Tensor | None = None,
) -> Iterator[Tile]:
    """Yield the upsampled output as non-overlapping tiles covering ``out_hw`` row-major.

    ``workspace``: the (B, C, H', W') tensor the caller writes every tile into, right after each
    yield (as :meth:`anyup.AnyUp.forward` does with the output it allocates). The engine may keep
    encoder maps in it until the decode overwrites them (:func:`workspace_slots`); every element is
    written by the tiles in the end. Pass it only with that promise; a caller's ``out=`` file
    mapping is not one (scratch writes would go to disk).
    """
    autograd = needs_autograd(model, image, features)  # in the caller's grad mode (first next())
    slots = workspace_slots(model, image, features, workspace)
    plan = plan_for(model, image, features, out_hw, options, autograd, slots)
    backend = resolve(options.attention, features.device)
    logger.debug("plan %s, attention %s", plan, backend.name)
    if autograd:
        from anyup.engine.autograd import iter_tiles_autograd

        tiles = iter_tiles_autograd(model, image, features, out_hw, plan, backend)
    else:
        tiles = _decoded_tiles(model, image, features, out_hw, plan, options, backend, workspace)
    yield from each_step_in(tiles, lambda: engine_mode(features.device, grad=autograd))


def _decoded_tiles(model, image, features, out_hw, plan, options, backend, workspace) -> Iterator[Tile]:
    enc, keys, feats_c = encode(model, image, features, plan, options, workspace if plan.out_slots else None)
    for t in decode(model, enc, keys, feats_c, out_hw, plan, backend):
        yield Tile(t.y0, t.y1, t.x0, t.x1, t.data.to(features.dtype))


@contextlib.contextmanager
def engine_mode(device: torch.device, grad: bool) -> Iterator[None]:
    """The state the engine computes in: ``torch.no_grad()`` unless ``grad``, and autocast off.

    The engine picks its own dtypes (:func:`compute_dtype`, float32 logits and softmax); under
    autocast its GEMMs would run in the autocast dtype behind that choice (a CPU bfloat16 autocast
    gave a float32 call 4x the error of bfloat16 features, from bfloat16 attention logits), and its
    CPU worker threads would not see the caller's autocast state. Pass bfloat16/float16 features
    to compute in half precision where that is faster.
    """
    with contextlib.ExitStack() as stack:
        if not grad:
            stack.enter_context(torch.no_grad())
        try:
            autocast_on = torch.is_autocast_enabled(device.type)
        except RuntimeError:  # a device type autocast does not know
            autocast_on = False
        if autocast_on:
            stack.enter_context(torch.autocast(device.type, enabled=False))
        yield


def each_step_in(steps: Iterator[T], context: Callable[[], contextlib.AbstractContextManager]) -> Iterator[T]:
    """Run every step of ``steps`` inside a fresh ``context()``, and none of the caller's code.

    A ``with`` block around a ``yield`` would stay active while the caller's loop body runs
    between tiles (e.g. ``torch.no_grad()`` around a head trained on each tile).
    """
    while True:
        with context():
            try:
                item = next(steps)
            except StopIteration:
                return
        yield item


def encode(
    model,
    image: torch.Tensor,
    features: torch.Tensor,
    plan: Plan,
    options: EngineOptions | None = None,
    workspace: torch.Tensor | None = None,
) -> tuple[PixelEncoders, torch.Tensor, torch.Tensor]:
    """Everything before the decoder (no autograd): the full-resolution encoders with their
    statistics gathered, the keys (B, D, h, w), and the features in the compute dtype."""
    feats_c = features.to(compute_dtype(features))
    enc = pixel_encoders(model, image, features, plan, options, workspace)
    release_free_memory(features.device)  # the encoders' temporaries are dead: their heap pages go back
    keys = low_res_keys(model, enc.image_keys(feats_c.shape[-2:]), feats_c, plan)  # (B, D, h, w)
    release_free_memory(features.device)  # and the keys' before the decode (anyup.engine.heap)
    return enc, keys, feats_c


def pixel_encoders(
    model,
    image: torch.Tensor,
    features: torch.Tensor,
    plan: Plan,
    options: EngineOptions | None = None,
    workspace: torch.Tensor | None = None,
) -> PixelEncoders:
    """The full-resolution encoders of ``image`` in the compute dtype of ``features``, with every
    GroupNorm's statistics gathered (the first stage of :func:`encode`)."""
    options = options or EngineOptions()
    enc = PixelEncoders(model, image.to(compute_dtype(features)), plan, chunk_kernels(options.compile), workspace)
    enc.gather_statistics()
    return enc


def low_res_keys(model, kimg: torch.Tensor, features: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Keys (B, D, h, w): aggregation of the pooled image keys and the unified, L2-normalised features."""
    feats_n = F.normalize(features.to(acc_dtype(features)), dim=1).to(features.dtype)  # L2 over channels
    kf = model.key_features_encoder
    x = kf[0].unify(feats_n, plan.fu_elements)  # (B, D, h, w)
    for blk in kf.blocks:
        x = blk(x)
    return model.aggregation(torch.cat([kimg.to(x.dtype), x], dim=1))  # (B, D, h, w)


class PixelEncoders:
    """The image encoder (+ RoPE) and the key/query branches at full resolution, for one image batch.

    Full-resolution maps (B, D, H*W) per mode (:mod:`anyup.engine.plan`): ``whole`` keeps the
    encoding, the branch stream and the inner activation; ``resident`` the encoding (turned into
    the query map in place) and the key map; ``cached`` the encoding only (keys recomputed band by
    band from it, then the query map in place); ``streamed`` at most a prefix of the encoding. The
    first ``plan.out_slots`` maps live in ``workspace`` (the output tensor, see
    :func:`workspace_slots`).
    """

    def __init__(
        self,
        model,
        image: torch.Tensor,
        plan: Plan,
        kernels: ChunkKernels = EAGER,
        workspace: torch.Tensor | None = None,
    ) -> None:
        self.plan = plan
        self.b, _, self.h, self.w = image.shape
        self.n = self.h * self.w
        self.dtype, self.device = image.dtype, image.device
        self.image = image.reshape(self.b, 3, self.n)  # (B, 3, H*W)
        self.img = StackProgram(model.image_encoder, self.dtype, kernels)
        self.key = StackProgram(model.key_encoder, self.dtype, kernels)
        self.query = StackProgram(model.query_encoder, self.dtype, kernels)
        self.rope = RopeTable(model.rope, self.h, self.w, self.device, self.dtype)
        d = model.config.dim
        self.d = d
        p = plan.chunk
        self.workers = ChunkWorkers(plan.workers)
        self._buf = [
            [torch.empty(self.b, d, p, dtype=self.dtype, device=self.device) for _ in range(8)]
            for _ in range(self.workers.count)
        ]  # per worker thread; 7: the statistics' scratch
        self._rope_buf = [self.rope.scratch(d, p) for _ in range(self.workers.count)]
        self._workspace = None if workspace is None else workspace.view(self.b, workspace.shape[1], self.n)
        self._slots_used = 0
        self.encoding: torch.Tensor | None = None  # (B, D, H*W) RoPE'd image encoding (or a prefix: streamed)
        self.key_map: torch.Tensor | None = None  # (B, D, H*W) key branch output (whole, resident)
        self.query_map: torch.Tensor | None = None  # (B, D, H*W) query branch output (whole, resident, cached)
        self.query_pooled: torch.Tensor | None = None  # (B, D, H', W') pooled queries (whole)
        self._halo: tuple[int, torch.Tensor] | None = None  # a query row the decode has overwritten, kept
        self._queries_pending = False  # cached mode: the query map is made after the keys
        self.key_prefix: torch.Tensor | None = None  # (B, D, prefix) key branch output, leading pixels (cached)

    def _map(self) -> torch.Tensor:
        """A full-resolution map (B, D, H*W): the next slot of the workspace, else new memory."""
        i = self._slots_used
        self._slots_used += 1
        if self._workspace is not None and i < self.plan.out_slots:
            return self._workspace[:, i * self.d : (i + 1) * self.d]
        return torch.empty(self.b, self.d, self.n, dtype=self.dtype, device=self.device)

    def _in_workspace(self, t: torch.Tensor) -> bool:
        ws = self._workspace
        if ws is None:
            return False
        start = ws.untyped_storage().data_ptr()
        return start <= t.data_ptr() < start + ws.untyped_storage().nbytes()

    # -- chunks ------------------------------------------------------------------------------
    def _chunks(self, p_start: int = 0, p_stop: int | None = None) -> Iterator[tuple[int, int]]:
        """Pixel ranges of at most ``plan.chunk`` pixels; none straddles the end of the encoding cache
        or of the kept key prefix."""
        stop = self.n if p_stop is None else p_stop
        ends = (self.plan.cache_pixels, self.plan.key_prefix)
        p0 = p_start
        while p0 < stop:
            p1 = min(stop, p0 + self.plan.chunk)
            for keep in ends:
                if p0 < keep < p1:
                    p1 = keep
            yield p0, p1
            p0 = p1

    def _b(self, i: int, n: int, w: int = 0) -> torch.Tensor:
        """Scratch buffer ``i`` of worker ``w``, its first ``n`` pixels: (B, D, n)."""
        return self._buf[w][i][:, :, :n]

    def _encoding_chunk(self, p0: int, p1: int, w: int = 0) -> torch.Tensor:
        """RoPE'd image encoding of pixels [p0, p1): (B, D, n), cached or recomputed.

        :meth:`_chunks` never straddles the end of the cache, so a chunk is either inside the
        cached prefix or outside it."""
        if self.encoding is not None and p1 <= self.encoding.shape[-1]:
            return self.encoding[:, :, p0:p1]
        n = p1 - p0
        x = self.img.run(self.image[:, :, p0:p1], self._b(0, n, w), self._b(1, n, w), self._b(2, n, w))
        return self.rope.apply(x, p0, self._b(3, n, w), self._rope_buf[w])

    # -- statistics --------------------------------------------------------------------------
    def gather_statistics(self) -> None:
        mode = self.plan.mode
        if mode == "whole":
            self._whole()
        elif mode in ("resident", "cached"):
            self.encoding = self._image_encoding(self._map())
            if mode == "resident":
                self.key_map = self._layerwise_in_place(self.key, self.encoding, self._map())
                self.query_map = self._layerwise_in_place(self.query, self.encoding, self.encoding)
                self.encoding = None
            else:  # keys band by band from the encoding (one pass per GroupNorm), queries in place later
                self._cached_keys()
                self._queries_pending = True
        else:
            self._streamed_statistics()

    def _streamed_statistics(self) -> None:
        img = self.img
        for i in range(img.num_norms):

            def upto(p0: int, p1: int, w: int, i: int = i) -> tuple[torch.Tensor]:
                n = p1 - p0
                return (img.run(self.image[:, :, p0:p1], self._b(0, n, w), self._b(1, n, w), self._b(2, n, w), stop=i),)

            self._pass(upto, (img,), i)
        keep = self.plan.cache_pixels
        if keep:
            enc = torch.empty(self.b, self.d, keep, dtype=self.dtype, device=self.device)

            def fill(p0: int, p1: int, w: int) -> None:
                enc[:, :, p0:p1] = self._encoding_chunk(p0, p1, w)

            self.workers.map(fill, list(self._chunks(0, keep)))
            self.encoding = enc  # (B, D, keep): a prefix of the pixels
        self._branch_statistics((self.key, self.query))

    def _branch_statistics(self, progs: tuple[StackProgram, ...]) -> None:
        """One pass per GroupNorm of the branches ``progs``, recomputing each chunk up to that norm."""
        for i in range(self.key.num_norms):

            def upto(p0: int, p1: int, w: int, i: int = i) -> list[torch.Tensor]:
                n = p1 - p0
                e = self._encoding_chunk(p0, p1, w)  # in buffer 3 or the cache: buffers 0-2 are free again
                scratch = ((4, 5, 6), (0, 1, 2))  # each branch its own, so both activations survive to the moments
                return [
                    prog.run(e, self._b(a, n, w), self._b(b, n, w), self._b(c, n, w), stop=i)
                    for prog, (a, b, c) in zip(progs, scratch, strict=True)
                ]

            self._pass(upto, progs, i)

    def _cached_keys(self) -> None:
        """``cached`` mode: the key branch's statistics, one pass per GroupNorm over all pixels.

        The leading ``plan.key_prefix`` pixels keep their key-branch activation (B, D, prefix),
        advanced one layer per pass (each pixel's layers once, the inner activations twice); the
        other pixels recompute the branch from the kept encoding up to each norm."""
        prog, keep = self.key, self.plan.key_prefix
        store = torch.empty(self.b, self.d, keep, dtype=self.dtype, device=self.device) if keep else None
        for i in range(prog.num_norms):

            def upto(p0: int, p1: int, w: int, i: int = i) -> tuple[torch.Tensor]:
                n = p1 - p0
                e = self._encoding_chunk(p0, p1, w)
                if store is not None and p1 <= keep:
                    return (self._advance(prog, i, e, store[:, :, p0:p1], w),)
                return (prog.run(e, self._b(4, n, w), self._b(5, n, w), self._b(6, n, w), stop=i),)

            self._pass(upto, (prog,), i)
        if store is not None:  # the last ResBlock's second half: the key branch's output
            last = len(prog.blocks) - 1

            def finish(p0: int, p1: int, w: int) -> None:
                n = p1 - p0
                xs = store[:, :, p0:p1]
                prog.half2(last, prog.half1(last, xs, self._b(0, n, w), self._b(1, n, w)), self._b(0, n, w), xs)

            self.workers.map(finish, list(self._chunks(0, keep)))
        self.key_prefix = store

    def _advance(self, prog: StackProgram, i: int, e: torch.Tensor, xs: torch.Tensor, w: int = 0) -> torch.Tensor:
        """A kept chunk's activation ``xs`` (B, D, n) brought to GroupNorm ``i``'s input, which is returned."""
        n = xs.shape[-1]
        if i == 0:
            return prog.first_into(e, xs)
        j = (i - 1) // 2
        a, y = self._b(0, n, w), self._b(1, n, w)
        if i % 2:  # the inner activation of ResBlock j (not kept)
            return prog.half1(j, xs, a, y)
        prog.half2(j, prog.half1(j, xs, a, y), a, xs)  # ResBlock j done
        return xs

    def _image_encoding(self, x_map: torch.Tensor) -> torch.Tensor:
        """The RoPE'd image encoding over all pixels into ``x_map`` (B, D, H*W), one map of memory."""
        self._layerwise_in_place(self.img, self.image, x_map)
        self._rope_in_place(x_map)
        return x_map

    def _rope_in_place(self, x_map: torch.Tensor) -> None:
        def rope(p0: int, p1: int, w: int) -> None:
            x_map[:, :, p0:p1] = self.rope.apply(x_map[:, :, p0:p1], p0, self._b(1, p1 - p0, w), self._rope_buf[w])

        self._pass(rope)

    def _pass(
        self,
        fn: Callable[[int, int, int], Sequence[torch.Tensor] | None],
        progs: Sequence[StackProgram] = (),
        index: int = 0,
    ) -> None:
        """One pass over all pixels, chunk by chunk on the workers: ``fn(p0, p1, worker)``.

        With ``progs``, ``fn`` returns for each of them its chunk (B, D, n) of GroupNorm ``index``'s
        input; their moments are kept per chunk, merged in chunk order after the pass, and the norm
        frozen. Without, what ``fn`` returns is not used."""
        chunks = list(self._chunks())
        parts = [PassMoments(chunks, self.b, self.d, self.device) for _ in progs]

        def run(p0: int, p1: int, w: int) -> None:
            acts = fn(p0, p1, w)
            if not progs:
                return
            assert acts is not None, "a statistics pass returns each branch's activation"
            for prog, part, act in zip(progs, parts, acts, strict=True):
                part.put(p0, prog.stats.moments(act, self._b(7, p1 - p0, w)))

        self.workers.map(run, chunks)
        for prog, part in zip(progs, parts, strict=True):
            prog.stats.merge(index, part)
            prog.stats.freeze(self.dtype)

    def _first_layer(self, prog: StackProgram, source: torch.Tensor, x_map: torch.Tensor) -> None:
        in_place = x_map.data_ptr() == source.data_ptr()

        def first(p0: int, p1: int, w: int) -> tuple[torch.Tensor]:
            xs = x_map[:, :, p0:p1]
            if in_place:  # in place over the source: go through scratch
                xs.copy_(prog.first_into(source[:, :, p0:p1], self._b(0, p1 - p0, w)))
            else:
                prog.first_into(source[:, :, p0:p1], xs)
            return (xs,)

        self._pass(first, (prog,) if prog.num_norms else ())

    def _layerwise(self, prog: StackProgram, source: torch.Tensor, x_map: torch.Tensor, y_map: torch.Tensor) -> None:
        """Run ``prog`` layer by layer over full maps: ``x_map`` ends with the output (B, D, H*W)."""
        self._first_layer(prog, source, x_map)
        for j in range(len(prog.blocks)):
            last = j == len(prog.blocks) - 1

            def inner(p0: int, p1: int, w: int, j: int = j) -> tuple[torch.Tensor]:
                ys = y_map[:, :, p0:p1]
                prog.half1(j, x_map[:, :, p0:p1], self._b(0, p1 - p0, w), ys)
                return (ys,)

            def outer(p0: int, p1: int, w: int, j: int = j) -> tuple[torch.Tensor]:
                xs = x_map[:, :, p0:p1]
                prog.half2(j, y_map[:, :, p0:p1], self._b(0, p1 - p0, w), xs)
                return (xs,)

            self._pass(inner, (prog,), 2 * j + 1)
            self._pass(outer, () if last else (prog,), 2 * j + 2)

    def _layerwise_in_place(self, prog: StackProgram, source: torch.Tensor, x_map: torch.Tensor) -> torch.Tensor:
        """As :meth:`_layerwise` with one map: each ResBlock's inner activation is computed twice
        per chunk (once for its statistics, once to apply them) instead of being stored.
        ``x_map`` may be ``source`` (the branch then replaces its input). Returns ``x_map``."""
        self._first_layer(prog, source, x_map)
        for j in range(len(prog.blocks)):
            last = j == len(prog.blocks) - 1

            def inner(p0: int, p1: int, w: int, j: int = j) -> tuple[torch.Tensor]:
                n = p1 - p0
                return (prog.half1(j, x_map[:, :, p0:p1], self._b(0, n, w), self._b(1, n, w)),)

            def block(p0: int, p1: int, w: int, j: int = j) -> tuple[torch.Tensor]:
                n = p1 - p0
                xs = x_map[:, :, p0:p1]
                prog.half2(j, prog.half1(j, xs, self._b(0, n, w), self._b(1, n, w)), self._b(0, n, w), xs)
                return (xs,)

            self._pass(inner, (prog,), 2 * j + 1)
            self._pass(block, () if last else (prog,), 2 * j + 2)
        return x_map

    def _whole(self) -> None:
        x, k, y = self._map(), self._map(), self._map()
        self._layerwise(self.img, self.image, x, y)
        self._rope_in_place(x)
        self.encoding = x
        self._layerwise(self.key, x, k, y)
        self.key_map = k
        self._layerwise(self.query, x, x, y)  # the encoding is not needed after this branch's first layer
        self.query_map, self.encoding = x, None

    # -- outputs -----------------------------------------------------------------------------
    def branch_rows(self, prog: StackProgram, y0: int, y1: int) -> torch.Tensor:
        """The branch ``prog`` on image rows [y0, y1): (B, D, y1-y0, W) (streamed modes)."""
        band = torch.empty(self.b, self.d, (y1 - y0) * self.w, dtype=self.dtype, device=self.device)
        kept = self.key_prefix if prog is self.key else None

        def rows(p0: int, p1: int, w: int) -> None:
            n = p1 - p0
            dst = band[:, :, p0 - y0 * self.w : p1 - y0 * self.w]
            if kept is not None and p1 <= kept.shape[-1]:
                dst.copy_(kept[:, :, p0:p1])
                return
            e = self._encoding_chunk(p0, p1, w)
            dst.copy_(prog.run(e, self._b(4, n, w), self._b(5, n, w), self._b(6, n, w)))

        self.workers.map(rows, list(self._chunks(y0 * self.w, y1 * self.w)))
        return band.view(self.b, self.d, y1 - y0, self.w)

    def image_keys(self, low_hw) -> torch.Tensor:
        """Key branch pooled to the feature grid: (B, D, h, w).

        Band by band of feature rows in float64 (so bands pool to the same bits as the whole map):
        slices of the key map in ``whole`` and ``resident`` modes, recomputed image rows otherwise."""
        h, w = int(low_hw[0]), int(low_hw[1])
        starts, ends = pool_ranges(self.h, h)
        key_map = None if self.key_map is None else self.key_map.view(self.b, self.d, self.h, self.w)
        self.key_map = None
        rows = self.plan.key_rows if key_map is None else max(1, KEY_BAND_PIXELS // max(1, self.n // h))
        # Written band by band into one tensor allocated first: small per-band results kept among the
        # bands' MiB-sized temporaries fragmented the heap (a 128 MiB cap peaked 1.3-1.5x over it).
        keys = torch.empty(self.b, self.d, h, w, dtype=self.dtype, device=self.device)
        # The bands' float64 copies share one buffer: a fresh one per band came from mmap, and its
        # page faults made the float64 cast 28 ms of each 2048-wide band (128 bands at 2048² from 128²).
        tallest = max(ends[min(h, l0 + rows) - 1] - starts[l0] for l0 in range(0, h, rows))
        buf64 = torch.empty(self.b * self.d * tallest * self.w, dtype=torch.float64, device=self.device)
        for l0 in range(0, h, rows):
            l1 = min(h, l0 + rows)
            s, e = starts[l0], ends[l1 - 1]
            band = key_map[:, :, s:e] if key_map is not None else self.branch_rows(self.key, s, e)  # (B, D, e-s, W)
            band64 = buf64[: band.numel()].view(band.shape).copy_(band)  # (B, D, e-s, W) float64
            keys[:, :, l0:l1] = adaptive_avg_pool_2d(band64, (self.h, self.w), (h, w), (l0, l1), s)
            del band, band64
        self.key_prefix = None
        return keys  # (B, D, h, w)

    def query_rows(self, out_hw: tuple[int, int], a: int, z: int) -> torch.Tensor:
        """Query branch pooled to the output size, output rows [a, z): (B, D, z-a, W').

        The decode asks for bands top to bottom, each with a one-row halo, and writes a band's
        output rows after reading its queries: when the query map lives in the output tensor, the
        row above a band has been overwritten by then, so the last row a band may still need is
        copied aside when it is read."""
        hq, wq = out_hw
        if self._queries_pending:  # cached mode: the key branch is done, the encoding turns into the queries
            assert self.encoding is not None
            self.query_map = self._layerwise_in_place(self.query, self.encoding, self.encoding)
            self.encoding, self._queries_pending = None, False
        if self.query_map is not None and (hq, wq) == (self.h, self.w):
            q = self.query_map.view(self.b, self.d, self.h, self.w)
            rows = q[:, :, a:z]
            if self._in_workspace(q):
                if self._halo is not None and self._halo[0] == a:
                    rows = torch.cat([self._halo[1], q[:, :, a + 1 : z]], dim=2)
                self._halo = (z - 2, q[:, :, z - 2 : z - 1].clone()) if z - 2 >= a else None
            return rows
        if self.query_map is not None and self.plan.mode == "whole":  # pool once, keep the pooled map
            q = self.query_map.view(self.b, self.d, self.h, self.w)
            self.query_map = None
            self.query_pooled = adaptive_avg_pool_2d(q, (self.h, self.w), (hq, wq))
        if self.query_pooled is not None:
            return self.query_pooled[:, :, a:z]
        starts, ends = pool_ranges(self.h, hq)
        s, e = starts[a], ends[z - 1]
        if self.query_map is not None:  # resident, cached: pool the band from the full-resolution map
            band = self.query_map.view(self.b, self.d, self.h, self.w)[:, :, s:e]
        else:
            band = self.branch_rows(self.query, s, e)
        return adaptive_avg_pool_2d(band, (self.h, self.w), (hq, wq), (a, z), s)


def decoder_inputs(
    model, keys: torch.Tensor, values_map: torch.Tensor, out_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, Window]:
    """Projected keys (B, nh, h, w, hd), values as (B, h, w, C) and the window of one decode."""
    b, _, h, w = values_map.shape
    kh = model.cross_decode.cross_attn.project_keys(keys)  # (B, nh, h*w, hd)
    kh = kh.view(b, kh.shape[1], h, w, kh.shape[-1])
    # (B, h, w, C) channels-last, one copy per decode (none when the map is already channels-last): a
    # tile's values are then whole rows of C; gathered from the channels-first map they were strided
    # reads, 0.1-0.2 ms of each 2048² tile's ~2 ms
    values = values_map.permute(0, 2, 3, 1).contiguous()
    cfg = model.config
    bias = acc_dtype(values_map)  # the logits' dtype
    window = Window.build(out_hw, (h, w), cfg.window_ratio, values_map.device, cfg.window_edge, bias)
    return kh, values, window


def decode(
    model,
    enc: PixelEncoders,
    keys: torch.Tensor,
    values_map: torch.Tensor,
    out_hw: tuple[int, int],
    plan: Plan,
    backend: AttentionBackend,
) -> Iterator[Tile]:
    """Windowed attention tile by tile: queries band by band (``plan.tile`` rows), each attention tile
    (``plan.attention_side``) against its key rectangle."""
    b, c, h, w = values_map.shape
    hq, wq = out_hw
    cd = model.cross_decode
    kh, values, window = decoder_inputs(model, keys, values_map, out_hw)
    nh, hd = kh.shape[1], kh.shape[-1]
    t, s = plan.tile, plan.attention_side
    scratch = Scratch()  # the tiles' bias and logits buffers, reused (no page faults per tile)
    bias_dtype = window.row_bias.dtype
    for b0 in range(0, hq, t):
        b1 = min(hq, b0 + t)
        a, z = max(0, b0 - 1), min(hq, b1 + 1)  # one halo row each side for the 3x3 conv
        q = cd.decode_queries(enc.query_rows(out_hw, a, z), pad_top=b0 == 0, pad_bottom=b1 == hq)  # (B, D, tb, W')
        qh_band = cd.cross_attn.project_queries(q).view(b, nh, b1 - b0, wq, hd)  # (B, nh, tb, W', hd)
        for i0 in range(b0, b1, s):
            i1 = min(b1, i0 + s)
            for j0 in range(0, wq, s):
                j1 = min(wq, j0 + s)
                ra, rb, ca, cb = window.reach(i0, i1, j0, j1)
                nq, nk = (i1 - i0) * (j1 - j0), (rb - ra) * (cb - ca)
                bias = window.bias(i0, i1, j0, j1, scratch.buffer(Scratch.BIAS, (nq, nk), bias_dtype, kh.device))
                qh = qh_band[:, :, i0 - b0 : i1 - b0, j0:j1].reshape(b, nh, -1, hd)  # (B, nh, th*tw, hd)
                k_sub = kh[:, :, ra:rb, ca:cb].reshape(b, nh, -1, hd)  # (B, nh, nr*nc, hd)
                v_sub = values[:, ra:rb, ca:cb].reshape(b, -1, c)  # (B, nr*nc, C)
                o = backend.attend(qh, k_sub, v_sub, bias, scratch)  # (B, th*tw, C)
                yield Tile(i0, i1, j0, j1, o.transpose(1, 2).unflatten(2, (i1 - i0, j1 - j0)))  # a view, no copy


def attention_maps(
    model, image: torch.Tensor, features: torch.Tensor, out_hw: tuple[int, int], pixels, options: EngineOptions
) -> torch.Tensor:
    """Heads-averaged attention of output pixels over the feature grid: (B, P, h, w) float32.

    Each map is non-negative, sums to 1 and is zero outside the pixel's window.
    """
    with engine_mode(features.device, grad=False):
        return _attention_maps(model, image, features, out_hw, pixels, options)


def _attention_maps(model, image, features, out_hw, pixels, options) -> torch.Tensor:
    from anyup.engine.attention import attention_weights

    plan = plan_for(model, image, features, out_hw, options)
    enc, keys, feats_c = encode(model, image, features, plan, options)
    b, _, h, w = feats_c.shape
    hq, wq = out_hw
    cd = model.cross_decode
    kh, _, window = decoder_inputs(model, keys, feats_c, out_hw)
    kh = kh.flatten(2, 3)  # (B, nh, h*w, hd)
    maps = []
    for y, x in pixels:
        a, z = max(0, y - 1), min(hq, y + 2)
        q = cd.decode_queries(enc.query_rows(out_hw, a, z), pad_top=y == 0, pad_bottom=y + 1 == hq)  # (B, D, 1, W')
        qh = cd.cross_attn.project_queries(q[..., x : x + 1])  # (B, nh, 1, hd)
        maps.append(attention_weights(qh, kh, window.pixel_mask(y, x)).view(b, h, w).float())
    return torch.stack(maps, dim=1)
