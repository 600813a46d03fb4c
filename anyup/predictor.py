"""One call from an image to upsampled features: encoder + AnyUp + preprocessing.

Two tiers, as in segment-anything's predictor:

* :func:`upsample` — one image in (path, PIL, numpy array or tensor), one :class:`UpsampleResult` out;
* :class:`Upsampler` — keeps the encoder and AnyUp loaded; ``predict`` returns one result per
  requested layer, ``predict_batch`` batches images that share a size.

Preprocessing: the image is loaded as RGB in [0, 1] (EXIF orientation applied, grey/RGBA
converted), resized keeping its aspect ratio so its short side is about ``input_size`` and both
sides are multiples of the encoder's patch size / stride, and fed to the encoder (which applies
its own normalisation). AnyUp is guided by the image resized to the output size and normalised
with ImageNet mean/std.

>>> from anyup.predictor import upsample                                     # doctest: +SKIP
>>> res = upsample("photo.jpg", encoder="efficientnet_lite0")                 # doctest: +SKIP
>>> res.lowres.shape, res.features.shape                                      # doctest: +SKIP
(torch.Size([1, 112, 28, 42]), torch.Size([1, 112, 448, 672]))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from anyup._checks import check_output_memory, parse_memory
from anyup.image import (
    ImageLike,
    image_size,
    imagenet_normalize,
    load_image,
    multiple_size,
    resize_image,
    resize_to_multiple,
)
from anyup.weights import DEFAULT_WEIGHTS

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "efficientnet_lite0"
DEFAULT_MODEL = DEFAULT_WEIGHTS  # our offline weights; the published ones are one argument away
DEFAULT_INPUT_SIZE = 448
MAX_INPUT_SIDE = 4096  # largest input_size (short side of the encoder input)
MAX_INPUT_PIXELS = 4096 * 4096  # largest encoder input, whatever its shape
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROGRESS_MIN_PIXELS = 1 << 20  # outputs from ~1 megapixel get a per-image progress bar (tiles)
CALIBRATION_PIXELS = 1 << 16  # output pixels of the timing run behind Upsampler.estimate


@dataclass(frozen=True)
class RunEstimate:
    """What one image will cost (from :meth:`Upsampler.estimate`)."""

    output_size: tuple[int, int]  # (H', W')
    output_bytes: int  # all requested layers' outputs, in the run's dtype
    working_bytes: int  # AnyUp's working-memory cap (tiles, streamed encoders)
    guide_bytes: int  # full-resolution guide image (RGB in [0, 1] and ImageNet-normalised, float32)
    seconds: float  # rough: a small calibration run scaled by the pixel count

    @property
    def peak_bytes(self) -> int:
        """Upper estimate of the extra memory the run needs (outputs + working memory + guide)."""
        return self.output_bytes + self.working_bytes + self.guide_bytes

    def describe(self) -> str:
        gib = 1 << 30
        return (
            f"output {self.output_size[0]}x{self.output_size[1]}: about {self.peak_bytes / gib:.1f} GiB "
            f"({self.output_bytes / gib:.2f} GiB features + {self.working_bytes / gib:.2f} GiB AnyUp working-memory "
            f"cap + {self.guide_bytes / gib:.2f} GiB guide) and at least ~{_duration(self.seconds)} "
            "(a small calibration run, scaled; streamed encoders add passes it does not see)"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class UpsampleResult:
    """Upsampled features of one image and one encoder layer."""

    features: torch.Tensor  # (1, C, H, W) AnyUp output
    lowres: torch.Tensor  # (1, C, h, w) encoder features
    image: torch.Tensor  # (1, 3, H, W) RGB in [0, 1]: the guidance image at the output size
    layer: str
    encoder: str
    model: str
    input_size: tuple[int, int]  # (H, W) of the encoder input
    original_size: tuple[int, int]  # (H, W) of the image as loaded
    extra: dict[str, str] = field(default_factory=dict)  # e.g. the source path

    @property
    def output_size(self) -> tuple[int, int]:
        return tuple(self.features.shape[-2:])  # type: ignore[return-value]

    def bilinear(self) -> torch.Tensor:
        """The low-res features resized bilinearly to the output size (the usual baseline): (1, C, H, W)."""
        return F.interpolate(self.lowres.float(), size=self.output_size, mode="bilinear", align_corners=False)

    def metadata(self) -> dict[str, str]:
        from anyup import __version__

        def hw(size) -> str:
            return f"{size[0]}x{size[1]}"

        return {
            "encoder": self.encoder,
            "layer": self.layer,
            "model": self.model,
            "original_size": hw(self.original_size),
            "input_size": hw(self.input_size),
            "lowres_size": hw(self.lowres.shape[-2:]),
            "output_size": hw(self.output_size),
            "channels": str(self.features.shape[1]),
            "dtype": str(self.features.dtype).replace("torch.", ""),
            "anyup_version": __version__,
            **self.extra,
        }


def load_model(model: str | os.PathLike | torch.nn.Module, device: str | torch.device = "cpu"):
    """An AnyUp model from a registered name, a weights file, or an existing module; and its label."""
    from anyup.model import AnyUp
    from anyup.weights import load

    if isinstance(model, AnyUp):
        return model.to(device).eval(), "custom"
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a weights name, a file path or an AnyUp module, got {type(model).__name__}")
    return load(model, device=device), str(model)


def guide_from_rgb(rgb: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The guidance image AnyUp takes, from RGB ``(B, 3, H, W)`` in ``[0, 1]``: ImageNet-normalised.

    The one place the guide is normalised: callers hold ``[0, 1]`` RGB and go through this (or
    :func:`run_anyup`); the model itself keeps the published signature (a normalised guide).
    ``dtype``: cast the result (the model's compute dtype); ``None`` keeps the input's.
    """
    guide = imagenet_normalize(rgb)  # (B, 3, H, W)
    return guide if dtype is None else guide.to(dtype)


def run_anyup(
    model: torch.nn.Module,
    rgb: torch.Tensor,
    features: torch.Tensor,
    output_size: Sequence[int] | None = None,
    **kwargs,
) -> torch.Tensor:
    """``model`` (AnyUp, or anything with its call signature) guided by RGB ``(B, 3, H, W)`` in ``[0, 1]``.

    Args:
        rgb: the guidance image, RGB in [0, 1] (normalised here, cast to the features' dtype).
        features: low-res features (B, C, h, w).
        output_size: (H', W'); None: the guide's size.
        kwargs: passed on (``attention=``, ``max_memory=``, ...).

    Returns:
        (B, C, H', W') upsampled features.
    """
    size = None if output_size is None else tuple(output_size)
    return model(guide_from_rgb(rgb, features.dtype), features, output_size=size, **kwargs)


def output_size_for(
    input_hw: tuple[int, int], output_size: Sequence[int] | int | None = None, scale: float | None = None
) -> tuple[int, int]:
    """Output (H, W): explicit ``output_size``, else ``scale`` x the encoder input size, else the input size."""
    from anyup._checks import check_size

    if output_size is not None and scale is not None:
        raise ValueError("pass either output_size or scale, not both")
    if scale is not None:
        if not (isinstance(scale, (int, float)) and 0 < scale <= 64):
            raise ValueError(f"scale must be a number in (0, 64], got {scale!r}")
        return max(1, round(input_hw[0] * scale)), max(1, round(input_hw[1] * scale))
    return check_size(output_size, "output_size", tuple(input_hw))


class Upsampler:
    """Keeps an encoder and AnyUp loaded and turns images into upsampled features.

    Args:
        encoder: a name from :func:`anyup.encoders.list_encoders`, or a built :class:`~anyup.encoders.Encoder`.
        model: AnyUp weights name (``"anyup_multi_backbone"``), a ``.pth``/``.safetensors`` path,
            or an :class:`~anyup.model.AnyUp` module.
        weights: local weights file for the encoder (needed offline for hub encoders).
        pretrained: ``False`` uses a random-init encoder (tests, architecture checks).
        layers: encoder layer(s) (see :func:`anyup.encoders.create`).
        input_size: short side of the encoder input in pixels (rounded to the encoder's multiple);
            ``None`` keeps the image's own size (rounded).
        device: torch device for encoder and model.
        dtype: ``torch.float32`` / ``bfloat16`` / ``float16`` (or its name) for both networks.
        max_memory: AnyUp's working-memory cap in bytes (default: automatic, see
            :func:`anyup.engine.default_max_memory`); the output itself comes on top.
        progress: show a tqdm bar over each image's output pixels (tile by tile) when the output
            has at least ``PROGRESS_MIN_PIXELS`` pixels.
        compile: fuse AnyUp's per-pixel element-wise work with ``torch.compile``
            (:mod:`anyup.engine.kernels`; the first call compiles for a few seconds).
        window_edge: ``"hard"`` or ``"soft"`` (:mod:`anyup.engine.window`); ``None`` keeps the edge
            stored with the weights (``"hard"`` for the published ones).
        attention: AnyUp's attention backend, ``"auto"``, ``"matmul"``, ``"sdpa"``, ``"flex"`` or
            ``"triton"`` (:mod:`anyup.engine.attention`; all give the same result within 1e-5);
            ``None`` means ``"auto"``. One that cannot run on ``device`` fails here, naming why.
        cpu_workers: CPU threads running AnyUp's per-pixel encoders, one core each
            (:mod:`anyup.engine.workers`); ``None``: ``torch.get_num_threads()`` on the CPU, 1 elsewhere.
            Changes speed; results agree to float32 rounding.

    Example:
        >>> up = Upsampler("efficientnet_lite0", "anyup_multi_backbone")    # doctest: +SKIP
        >>> res = up("photo.jpg", scale=2)                                    # doctest: +SKIP
    """

    def __init__(
        self,
        encoder="efficientnet_lite0",
        model=DEFAULT_MODEL,
        *,
        weights: str | os.PathLike | None = None,
        pretrained: bool = True,
        layers=None,
        input_size: int | None = DEFAULT_INPUT_SIZE,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        max_memory: int | str | None = None,
        progress: bool = False,
        compile: bool = False,
        window_edge: str | None = None,
        attention: str | None = None,
        cpu_workers: int | None = None,
    ) -> None:
        from anyup.encoders import Encoder, create
        from anyup.engine.attention import resolve
        from anyup.engine.window import check_edge
        from anyup.engine.workers import check_workers

        if window_edge is not None:
            check_edge(window_edge)
        check_workers(cpu_workers)

        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype}")
        if input_size is not None and (
            isinstance(input_size, bool) or not isinstance(input_size, int) or not 1 <= input_size <= MAX_INPUT_SIDE
        ):
            raise ValueError(f"input_size must be a positive int up to {MAX_INPUT_SIDE} or None, got {input_size!r}")
        self.device = torch.device(device)
        if attention is not None:
            resolve(attention, self.device)  # unknown or unavailable here: fails now, not on the first image
        self.dtype = dtype
        self.max_memory = parse_memory(max_memory)  # bytes, or a size such as "2GB"
        self.progress = progress
        self.input_size = input_size
        if isinstance(encoder, Encoder):
            if weights is not None or layers is not None:
                raise ValueError("weights/layers apply to encoder names; this encoder is already built")
            self.encoder = encoder
        else:
            self.encoder = create(encoder, weights=weights, pretrained=pretrained, layers=layers, device=self.device)
        self.encoder = self.encoder.to(self.device, dtype)
        self.model, self.model_name = load_model(model, self.device)
        self.model = self.model.to(dtype)
        self.model.config.compile = bool(compile)
        if window_edge is not None:
            self.model.config.window_edge = window_edge
        if attention is not None:
            self.model.config.attention = attention
        if cpu_workers is not None:
            self.model.config.cpu_workers = cpu_workers

    @property
    def encoder_name(self) -> str:
        return self.encoder.info.name

    @property
    def layers(self) -> tuple[str, ...]:
        return self.encoder.info.layer_names

    def encoder_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the encoder input for an image of ``hw`` (short side ``input_size``, long side capped).

        Refuses an input over :data:`MAX_INPUT_PIXELS` (e.g. ``input_size=None`` on a huge photo).
        """
        m = self.encoder.info.multiple
        h, w = multiple_size(hw[0], hw[1], m, short_side=self.input_size)
        if h * w > MAX_INPUT_PIXELS:
            raise ValueError(
                f"the encoder input would be {h}x{w} = {h * w} pixels, more than {MAX_INPUT_PIXELS} "
                f"(4096 x 4096); pass a smaller input_size (--input-size), e.g. {DEFAULT_INPUT_SIZE}"
            )
        return h, w

    def prepare(self, image: ImageLike, min_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(image as loaded (3, H0, W0), encoder input (3, H, W)) both RGB in [0, 1].

        ``min_size``: the largest size the image will be resized to; a very large file is then
        decoded reduced (see :func:`anyup.image.load_image`).
        """
        img = load_image(image, min_size=min_size)  # (3, H0, W0)
        m = self.encoder.info.multiple
        if self.input_size is None:
            enc_in = resize_to_multiple(img, m)
        else:
            enc_in = resize_to_multiple(img, m, short_side=self.input_size)
        return img, enc_in

    def load(
        self, image: ImageLike, output_size: Sequence[int] | int | None = None, scale: float | None = None
    ) -> torch.Tensor:
        """The image (3, H, W) in [0, 1] as this upsampler needs it: a very large file is decoded reduced."""
        return load_image(image, min_size=self.needed_size(image, output_size, scale))

    def needed_size(
        self, image: ImageLike, output_size: Sequence[int] | int | None = None, scale: float | None = None
    ) -> tuple[int, int]:
        """The largest (H, W) an image is resized to (encoder input or output), from its header only.

        Also refuses an output whose features would not fit in memory (before anything is computed).
        """
        enc_hw = self.encoder_size(image_size(image))
        out_hw = output_size_for(enc_hw, output_size, scale)
        channels = sum(layer.channels for layer in self.encoder.info.layers)
        check_output_memory((1, channels, *out_hw), self.dtype, self.device, what="upsampled features")
        return max(enc_hw[0], out_hw[0]), max(enc_hw[1], out_hw[1])

    @torch.no_grad()
    def predict(
        self, image: ImageLike, output_size: Sequence[int] | int | None = None, scale: float | None = None
    ) -> list[UpsampleResult]:
        """Upsampled features of every requested layer of one image (one :class:`UpsampleResult` each)."""
        return self.predict_batch([image], output_size=output_size, scale=scale)[0]

    def __call__(
        self, image: ImageLike, output_size: Sequence[int] | int | None = None, scale: float | None = None
    ) -> UpsampleResult:
        """Upsampled features of the (first) requested layer of one image."""
        return self.predict(image, output_size=output_size, scale=scale)[0]

    @torch.no_grad()
    def predict_batch(
        self,
        images: Sequence[ImageLike],
        output_size: Sequence[int] | int | None = None,
        scale: float | None = None,
    ) -> list[list[UpsampleResult]]:
        """Like :meth:`predict` for several images; images whose sizes match run as one batch."""
        if isinstance(images, (str, os.PathLike, torch.Tensor)) or not isinstance(images, Sequence):
            raise TypeError(f"images must be a list of images, got {type(images).__name__}")
        sizes = [image_size(im) for im in images]  # as stored: a large file may be decoded reduced
        prepared = [self.prepare(im, self.needed_size(im, output_size, scale)) for im in images]
        groups: dict[tuple, list[int]] = {}
        for i, (_, enc_in) in enumerate(prepared):
            in_hw = (enc_in.shape[-2], enc_in.shape[-1])
            groups.setdefault((in_hw, output_size_for(in_hw, output_size, scale)), []).append(i)
        results: list[list[UpsampleResult] | None] = [None] * len(prepared)
        for (_in_hw, out_hw), idx in groups.items():
            channels = sum(layer.channels for layer in self.encoder.info.layers)
            check_output_memory((len(idx), channels, *out_hw), self.dtype, self.device, what="upsampled features")
            batch = torch.stack([prepared[i][1] for i in idx]).to(self.device)  # (B, 3, H, W)
            per_image = self._run(batch, out_hw, [prepared[i][0] for i in idx])
            for i, res in zip(idx, per_image):
                for r in res:
                    r.original_size = sizes[i]
                results[i] = res
        return results  # type: ignore[return-value]

    def _run(
        self, enc_in: torch.Tensor, out_hw: tuple[int, int], originals: list[torch.Tensor]
    ) -> list[list[UpsampleResult]]:
        maps = self.encoder(enc_in.to(self.dtype))  # per layer: (B, C, h, w)
        if out_hw == (enc_in.shape[-2], enc_in.shape[-1]):
            guide01 = enc_in.float()
        else:  # resize from the original image: it has the most detail
            guide01 = torch.stack([resize_image(o[None].to(self.device), out_hw)[0] for o in originals])
        guide = guide_from_rgb(guide01, self.dtype)  # (B, 3, H', W')
        out: list[list[UpsampleResult]] = [[] for _ in originals]
        for layer, low in zip(self.encoder.info.layers, maps):
            up = self._upsample(guide, low, out_hw, layer.name)  # (B, C, H', W')
            for b, orig in enumerate(originals):
                out[b].append(
                    UpsampleResult(
                        features=up[b : b + 1],
                        lowres=low[b : b + 1],
                        image=guide01[b : b + 1],
                        layer=layer.name,
                        encoder=self.encoder_name,
                        model=self.model_name,
                        input_size=(enc_in.shape[-2], enc_in.shape[-1]),
                        original_size=(orig.shape[-2], orig.shape[-1]),
                        extra={"encoder_weights": self.encoder.info.weights},
                    )
                )
        return out

    def _upsample(self, guide: torch.Tensor, low: torch.Tensor, out_hw: tuple[int, int], label: str) -> torch.Tensor:
        """AnyUp tile by tile into one (B, C, H', W') tensor, with a progress bar over pixels if large."""
        b, c = low.shape[:2]
        pixels = b * out_hw[0] * out_hw[1]
        if not (self.progress and pixels >= PROGRESS_MIN_PIXELS):
            return self.model(guide, low, out_hw, max_memory=self.max_memory)
        from tqdm import tqdm

        out = torch.empty(b, c, *out_hw, dtype=low.dtype, device=low.device)
        desc = f"AnyUp {out_hw[0]}x{out_hw[1]} {label}"
        with tqdm(total=pixels, desc=desc, unit="px", unit_scale=True, leave=False, disable=None) as bar:
            for t in self.model.iter_tiles(guide, low, out_hw, max_memory=self.max_memory, workspace=out):
                out[:, :, t.y0 : t.y1, t.x0 : t.x1] = t.data
                bar.update(b * (t.y1 - t.y0) * (t.x1 - t.x0))
        return out

    @torch.no_grad()
    def estimate(
        self, image: ImageLike, output_size: Sequence[int] | int | None = None, scale: float | None = None
    ) -> RunEstimate:
        """Memory and (rough) time that :meth:`predict` will need for ``image``, before running it.

        Memory: the outputs (every layer, in ``dtype``) plus AnyUp's working-memory cap plus the
        full-resolution guide. Time: one calibration run of encoder + AnyUp at a small output
        (about ``CALIBRATION_PIXELS``), scaled by the output's pixel count (AnyUp's cost per output
        pixel is roughly constant; streamed mode's extra passes are not counted, so it is a lower
        bound for outputs much larger than the working-memory cap allows at once).
        """
        import math
        import time

        from anyup.engine import default_max_memory

        img, enc_in = self.prepare(image)
        in_hw = (enc_in.shape[-2], enc_in.shape[-1])
        out_hw = output_size_for(in_hw, output_size, scale)
        elem = torch.finfo(self.dtype).bits // 8
        channels = sum(l.channels for l in self.encoder.info.layers)
        output_bytes = channels * out_hw[0] * out_hw[1] * elem
        cap = self.max_memory if self.max_memory is not None else default_max_memory(self.device)
        guide_bytes = 2 * 3 * out_hw[0] * out_hw[1] * 4
        f = min(1.0, math.sqrt(CALIBRATION_PIXELS / (out_hw[0] * out_hw[1])))
        cal_hw = (max(8, round(out_hw[0] * f)), max(8, round(out_hw[1] * f)))
        progress, self.progress = self.progress, False
        try:
            start = time.perf_counter()
            self._run(enc_in[None].to(self.device), cal_hw, [img])
            seconds = (time.perf_counter() - start) * (out_hw[0] * out_hw[1]) / (cal_hw[0] * cal_hw[1])
        finally:
            self.progress = progress
        return RunEstimate(out_hw, output_bytes, int(cap), guide_bytes, seconds)

    @torch.no_grad()
    def attention(
        self,
        image: ImageLike,
        pixels: Sequence[tuple[int, int]],
        output_size: Sequence[int] | int | None = None,
        layer: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """AnyUp's attention of output pixels over the low-res tokens.

        Args:
            pixels: (y, x) in output-image coordinates (the output size defaults to the encoder input size).
            layer: index into the encoder's requested layers.

        Returns:
            (maps (P, h, w) float32 each summing to 1, guidance image (3, H', W') RGB in [0, 1]).
        """
        img, enc_in = self.prepare(image, self.needed_size(image, output_size))
        enc_in = enc_in[None].to(self.device)
        out_hw = output_size_for((enc_in.shape[-2], enc_in.shape[-1]), output_size)
        low = self.encoder(enc_in.to(self.dtype))[layer]  # (1, C, h, w)
        guide01 = (
            enc_in.float()
            if out_hw == (enc_in.shape[-2], enc_in.shape[-1])
            else resize_image(img[None].to(self.device), out_hw)
        )
        maps = self.model.attention_weights(guide_from_rgb(guide01, self.dtype), low, out_hw, pixels=list(pixels))
        return maps[0].float(), guide01[0]


def save_result(
    results: Sequence[UpsampleResult], path: str | os.PathLike, extra: dict[str, str] | None = None
) -> Path:
    """Write results of one image to ``path`` (.safetensors), atomically.

    One layer: tensors ``features`` (C, H, W) and ``lowres`` (C, h, w). Several layers:
    ``features.<layer>`` and ``lowres.<layer>`` for each. The metadata (strings) says encoder,
    layer(s), model and sizes.
    """
    from safetensors.torch import save_file

    from anyup.viz.io import atomic_write

    if not results:
        raise ValueError("no results to save")
    tensors: dict[str, torch.Tensor] = {}
    if len(results) == 1:
        tensors["features"] = results[0].features[0].contiguous().cpu()
        tensors["lowres"] = results[0].lowres[0].contiguous().cpu()
    else:
        for r in results:
            tensors[f"features.{r.layer}"] = r.features[0].contiguous().cpu()
            tensors[f"lowres.{r.layer}"] = r.lowres[0].contiguous().cpu()
    meta = results[0].metadata()
    for key in ("layer", "lowres_size", "channels"):  # per-layer values, comma-separated
        meta[key] = ",".join(r.metadata()[key] for r in results)
    meta.update(extra or {})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def result_is_complete(path: str | os.PathLike, expected: dict[str, str] | None = None) -> bool:
    """Whether ``path`` is a readable result file whose metadata has every ``expected`` value.

    Results are written atomically, so a readable file is complete; a folder run skips such
    outputs (``--overwrite`` redoes them) and recomputes ones made with other settings.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False
    if not any(k == "features" or k.startswith("features.") for k in keys):
        return False
    return all(meta.get(k) == v for k, v in (expected or {}).items())


def pending_jobs(
    up: Upsampler, jobs: Sequence[tuple[Path, str]], out_dir: str | os.PathLike, pictures: bool = True
) -> list[tuple[Path, str]]:
    """The ``(image path, output stem)`` jobs of a folder run whose outputs are not complete in ``out_dir``.

    Complete: ``<stem>.safetensors`` readable and made from that image with ``up``'s encoder and
    model, plus (with ``pictures``) every ``<stem>[_<layer>]_pca.png``. Logs how many are skipped.
    """
    out_dir = Path(out_dir)
    expected = {"encoder": up.encoder_name, "model": up.model_name}
    pngs = ["_pca.png"] if len(up.layers) == 1 else [f"_{layer}_pca.png" for layer in up.layers]

    def complete(path: Path, stem: str) -> bool:
        if not result_is_complete(out_dir / f"{stem}.safetensors", {**expected, "image": str(path)}):
            return False
        return not pictures or all((out_dir / f"{stem}{end}").is_file() for end in pngs)

    todo = [(p, stem) for p, stem in jobs if not complete(p, stem)]
    if len(todo) < len(jobs):
        logger.warning(
            "skipping %d image(s) whose outputs exist in %s (--overwrite redoes them)", len(jobs) - len(todo), out_dir
        )
    return todo


def upsample(
    image: ImageLike,
    encoder: str = DEFAULT_ENCODER,
    model=DEFAULT_MODEL,
    output_size: Sequence[int] | int | None = None,
    *,
    scale: float | None = None,
    weights: str | os.PathLike | None = None,
    layer: str | int | None = None,
    input_size: int | None = DEFAULT_INPUT_SIZE,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> UpsampleResult:
    """Upsampled features of one image in one call (loads encoder and model; reuse :class:`Upsampler` for many).

    Args:
        image: path, PIL image, numpy array (H, W[, 3|4]) or tensor (3, H, W) in [0, 1].
        encoder: encoder name; ``model``: AnyUp weights name, path or module.
        output_size: (H, W) of the result; default the encoder input size (short side ``input_size``).
        scale: alternatively, the output size as a multiple of the encoder input size.

    Returns:
        :class:`UpsampleResult` with ``features`` (1, C, H, W), ``lowres`` (1, C, h, w) and ``image``.
    """
    up = Upsampler(encoder, model, weights=weights, layers=layer, input_size=input_size, device=device, dtype=dtype)
    return up(image, output_size=output_size, scale=scale)
