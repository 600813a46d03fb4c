"""The AnyUp model: image-guided, encoder-agnostic feature upsampling (the method, nothing else).

1. ``image_encoder`` + RoPE turn the full-resolution image into a per-pixel encoding ``e'``.
2. ``query_encoder(e')`` pooled to the output size gives the queries.
3. ``key_encoder(e')`` pooled to the feature size, concatenated with ``key_features_encoder``
   of the L2-normalised features and fused by ``aggregation``, gives the keys.
4. ``cross_decode``: a 3x3 conv on the queries, then windowed attention whose heads-averaged
   weights mix the *raw* low-resolution features, so every output vector is a convex
   combination of input vectors.

How this runs within a memory cap (chunks, passes, tiles, attention kernels) is
:mod:`anyup.engine`'s business; the result does not depend on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from anyup._checks import (
    check_arch_fields,
    check_image_and_features,
    check_out,
    check_output_memory,
    check_ratio,
    check_size,
)
from anyup.engine import EngineOptions, Tile, iter_tiles
from anyup.engine.autograd import write_tiles
from anyup.engine.workers import check_workers
from anyup.layers import (
    CrossDecode,
    EncoderStack,
    EncoderStackSpec,
    FeatureUnification,
    PointwiseConv2d,
    ReflectConv2d,
    RoPE2d,
)
from anyup.layers._func import functorch_active


@dataclass
class AnyUpConfig:
    """Architecture and run-time settings. The defaults are those of the published weights."""

    dim: int = 128  # working width D of all encoders, keys and queries
    num_heads: int = 4  # attention heads (their weights are averaged)
    num_groups: int = 8  # GroupNorm groups in every ResBlock
    num_blocks: int = 2  # ResBlocks after each encoder's first layer
    lfu_kernel_size: int = 5  # spatial size of the feature-unification filters
    window_ratio: float = 0.1  # half-width r of the attention window, as a fraction of the image side
    window_edge: str = "hard"  # "hard" (published) or "soft": cells fade in by coverage (anyup.engine.window)
    # Run-time only (never stored with weights):
    max_memory: int | str | None = None  # working-memory cap (bytes or '2GB'); None = automatic
    tile_size: int | None = None  # query tile side in output pixels; None = from the cap
    attention: str = "auto"  # attention backend: auto | matmul | sdpa | flex | triton
    compile: bool = False  # fuse the per-pixel element-wise work with torch.compile (anyup.engine.kernels)
    cpu_workers: int | None = None  # CPU threads for the per-pixel encoders' chunks; None = torch.get_num_threads()

    def to_dict(self) -> dict:
        return asdict(self)


# The fields that define the architecture (stored with exported weights); the rest are run-time settings.
ARCH_FIELDS = ("dim", "num_heads", "num_groups", "num_blocks", "lfu_kernel_size", "window_ratio", "window_edge")


class AnyUp(nn.Module):
    """Upsample any encoder's features ``(B, C, h, w)`` to ``(B, C, H', W')``, guided by the image.

    Args:
        config: architecture and run-time settings; ``AnyUpConfig()`` matches the published weights.

    Example:
        >>> model = AnyUp()
        >>> image = torch.randn(1, 3, 56, 84)        # ImageNet-normalised
        >>> feats = torch.randn(1, 384, 4, 6)        # any encoder, any C
        >>> model(image, feats).shape
        torch.Size([1, 384, 56, 84])
    """

    def __init__(self, config: AnyUpConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or AnyUpConfig()
        check_arch_fields(cfg.to_dict(), "AnyUpConfig")
        check_ratio(cfg.window_ratio)
        d = cfg.dim
        spec = EncoderStackSpec(dim=d, num_blocks=cfg.num_blocks, num_groups=cfg.num_groups)
        self.image_encoder = EncoderStack(PointwiseConv2d(3, d), spec)
        self.key_encoder = EncoderStack(PointwiseConv2d(d, d), spec)
        self.query_encoder = EncoderStack(PointwiseConv2d(d, d), spec)
        self.key_features_encoder = EncoderStack(FeatureUnification(d, cfg.lfu_kernel_size), spec)
        self.aggregation = EncoderStack(ReflectConv2d(2 * d, d, 3), spec)
        self.cross_decode = CrossDecode(d, cfg.num_heads)
        self.rope = RoPE2d(d)

    @property
    def window_ratio(self) -> float:
        return self.config.window_ratio

    @window_ratio.setter
    def window_ratio(self, value: float) -> None:
        self.config.window_ratio = check_ratio(value)

    def forward(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        output_size: Sequence[int] | int | None = None,
        *,
        out: torch.Tensor | None = None,
        max_memory: int | str | None = None,
        tile_size: int | None = None,
        attention: str | None = None,
        cpu_workers: int | None = None,
        q_chunk_size: int | None = None,
        vis_attn: bool = False,
    ) -> torch.Tensor:
        """Upsample ``features`` guided by ``image``.

        Args:
            image: (B, 3, H, W) float, ImageNet-normalised RGB.
            features: (B, C, h, w) float (float32, bfloat16, float16 or float64), any C >= 1.
            output_size: (H', W') or an int; default (H, W). May be smaller or larger than the image.
            out: optional preallocated (B, C, H', W') float tensor to write into; returned.
            max_memory: working-memory cap for this call, bytes or a string such as ``"2GB"``
                (default: ``config.max_memory``, else automatic). Changes memory and speed, not the result.
            tile_size: side of a query tile in output pixels (default: from the cap).
            attention: attention backend (default ``config.attention``; see :mod:`anyup.engine.attention`).
            cpu_workers: CPU threads running the per-pixel encoders' chunks, one core each (default
                ``config.cpu_workers``, else ``torch.get_num_threads()``; see :mod:`anyup.engine.workers`).
            q_chunk_size: the authors' memory hint (queries per chunk); mapped to a square tile of
                about that many queries. Accepted for drop-in compatibility.
            vis_attn: as in the authors' code, also keep the attention of a 3x3 grid of output
                pixels: ``self.last_attention`` (B, 9, h, w) and ``self.last_attention_pixels``.

        Returns:
            (B, C, H', W') in the dtype of ``features`` (or ``out``'s), every vector a convex
            combination of input feature vectors.
        """
        check_image_and_features(image, features)
        b, c = features.shape[:2]
        size = check_size(output_size, "output_size", tuple(image.shape[-2:]))
        if tile_size is None and q_chunk_size is not None:
            tile_size = max(1, int(q_chunk_size**0.5))
        if vis_attn:
            pixels = [(int((i + 0.5) * size[0] / 3), int((j + 0.5) * size[1] / 3)) for i in range(3) for j in range(3)]
            self.last_attention_pixels = pixels
            self.last_attention = self.attention_weights(image, features, size, pixels)
        if out is not None:
            check_out(out, (b, c, *size))
        else:
            check_output_memory((b, c, *size), features.dtype, features.device)
        workspace = None
        if (
            out is None and not functorch_active()
        ):  # ours: the engine may keep encoder maps in it until the decode fills it
            out = workspace = torch.empty(b, c, *size, dtype=features.dtype, device=features.device)
        tiles = self.iter_tiles(
            image,
            features,
            size,
            max_memory=max_memory,
            tile_size=tile_size,
            attention=attention,
            cpu_workers=cpu_workers,
            workspace=workspace,
        )
        return write_tiles(out, tiles)  # out[:, :, t.y0:t.y1, t.x0:t.x1] = t.data per tile t (None: concatenated)

    def iter_tiles(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        output_size: Sequence[int] | int | None = None,
        *,
        max_memory: int | str | None = None,
        tile_size: int | None = None,
        attention: str | None = None,
        cpu_workers: int | None = None,
        workspace: torch.Tensor | None = None,
    ) -> Iterator[Tile]:
        """Yield the output as non-overlapping :class:`~anyup.engine.Tile` rectangles covering (H', W') row-major.

        Lets a caller stream a huge output (e.g. 4096x4096x384) to disk without holding it twice.
        Arguments as in :meth:`forward`. ``workspace``: the in-memory (B, C, H', W') tensor you write
        each tile into right after it is yielded; the engine may keep encoder maps in it until the
        decode overwrites them (less working memory, a faster plan under a tight cap).
        """
        check_image_and_features(image, features)
        size = check_size(output_size, "output_size", tuple(image.shape[-2:]))
        if workspace is not None:
            check_out(workspace, (features.shape[0], features.shape[1], *size))
        options = self._options(max_memory, tile_size, attention, cpu_workers)
        yield from iter_tiles(self, image, features, size, options, workspace=workspace)

    def attention_weights(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        output_size: Sequence[int] | int | None = None,
        pixels: Sequence[tuple[int, int]] = ((0, 0),),
    ) -> torch.Tensor:
        """Where output pixels look: heads-averaged attention over the low-res grid.

        Args:
            pixels: (y, x) output-pixel coordinates, each inside ``output_size``.

        Returns:
            (B, P, h, w) float32, non-negative, each map summing to 1 (zero outside the window).
        """
        from anyup.engine.run import attention_maps

        check_image_and_features(image, features)
        size = check_size(output_size, "output_size", tuple(image.shape[-2:]))
        for y, x in pixels:
            if not (0 <= y < size[0] and 0 <= x < size[1]):
                raise ValueError(f"pixel {(y, x)} lies outside the output size {size}")
        return attention_maps(self, image, features, size, list(pixels), self._options(None, None, None))

    def _options(self, max_memory, tile_size, attention, cpu_workers=None) -> EngineOptions:
        cfg = self.config
        workers = check_workers(cpu_workers if cpu_workers is not None else cfg.cpu_workers)
        return EngineOptions(
            max_memory=max_memory if max_memory is not None else cfg.max_memory,
            tile_size=tile_size if tile_size is not None else cfg.tile_size,
            attention=attention if attention is not None else cfg.attention,
            compile=cfg.compile,
            cpu_workers=workers,
        )

    def save_pretrained(self, folder: str, push_to_hub: str | None = None):
        """Write ``config.json`` + ``model.safetensors`` (see :mod:`anyup.hf`)."""
        from anyup.hf import save_pretrained

        return save_pretrained(self, folder, push_to_hub=push_to_hub)

    @classmethod
    def from_pretrained(cls, repo_or_folder: str, device: str = "cpu", **hub_kwargs) -> AnyUp:
        """Load a folder written by :meth:`save_pretrained` or a Hugging Face Hub repository id."""
        from anyup.hf import from_pretrained

        return from_pretrained(repo_or_folder, device=device, **hub_kwargs)
