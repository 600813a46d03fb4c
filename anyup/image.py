"""The one image module: loading, resizing and the two normalisations every pipeline needs.

Value convention (the same for every source):

* an *RGB image tensor* is ``(3, H, W)`` or ``(B, 3, H, W)``, float32, values in ``[0, 1]``;
* integer pixels are scaled by their type's full range: ``uint8`` / 8-bit PIL modes by 255,
  ``uint16`` / 16-bit PIL modes (``I;16``, 16-bit PNG, ``I``) by 65535, ``bool`` / mode ``1`` as 0/1;
* float pixels (arrays, tensors, PIL mode ``F``) must already be in ``[0, 1]``; values outside
  (beyond a 1e-3 rounding margin) are refused with an error saying how to scale them, never clamped;
* other integer types (``int32``, ``int64`` ...) are refused: 8- or 16-bit is ambiguous;
* grey becomes RGB, transparency is composited onto white, CMYK/YCbCr/palette are converted,
  and a file's EXIF orientation is applied;
* AnyUp's *guidance image* is that tensor normalised with ImageNet mean/std (:func:`imagenet_normalize`);
* encoders receive the ``[0, 1]`` tensor and apply their own normalisation.

Size limits: files over :data:`MAX_IMAGE_PIXELS` pixels are refused before decoding; with
``min_size`` a large file is decoded reduced (JPEG ``draft``) and shrunk in uint8 before it is
converted to float, so memory stays proportional to what the caller needs.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    import PIL.Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)  # SigLIP, plain ViTs: [0, 1] -> [-1, 1]
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_IMAGE_PIXELS = 178_956_970  # ~13400 x 13400 (PIL's own hard limit): larger files are refused before decoding
REDUCE_ABOVE_PIXELS = 1 << 24  # with min_size, files above 16.7 M pixels are decoded/shrunk in uint8 first
MAX_ASPECT = 8  # a short-side resize keeps the long side under MAX_ASPECT x the short side
FLOAT_TOLERANCE = 1e-3  # float pixels within this of [0, 1] are rounding, clamped; further out is an error

ImageLike = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, torch.Tensor]


def imagenet_normalize(image: torch.Tensor) -> torch.Tensor:
    """Normalise an RGB tensor in ``[0, 1]`` (``(..., 3, H, W)``) with ImageNet mean/std."""
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ValueError(f"expected an RGB tensor (..., 3, H, W), got shape {tuple(image.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean) / std


def imagenet_denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`imagenet_normalize`; returns values (roughly) in ``[0, 1]``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return image * std + mean


# --------------------------------------------------------------------------------------------- loading
def load_image(source: ImageLike, *, min_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Load any image into an RGB float32 tensor ``(3, H, W)`` in ``[0, 1]`` (see the module docstring).

    Args:
        source: a file path, a ``PIL.Image``, a ``numpy`` array ``(H, W)`` / ``(H, W, 1|3|4)``, or a
            tensor ``(3, H, W)`` / ``(1, H, W)`` / ``(H, W)`` / ``(4, H, W)``.
        min_size: ``(H, W)`` the caller will resize to. A file or PIL image of more than
            :data:`REDUCE_ABOVE_PIXELS` pixels is then decoded at reduced scale / shrunk in uint8 by
            an integer factor that keeps both sides at least twice this size. Smaller images are
            returned at full size.

    Raises:
        FileNotFoundError: no such file. ``ValueError``: unreadable, empty, too large, or values
        outside the convention (the message names the value and the rule). ``TypeError``: other types.
    """
    from PIL import Image, ImageOps

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {str(path)!r}")
        try:
            with _open(path) as im:
                _check_pixels(im.size, str(path))
                _draft(im, min_size)
                im.load()
                return _pil_to_tensor(ImageOps.exif_transpose(_reduce(im, min_size)))
        except Image.DecompressionBombError as err:
            raise ValueError(f"cannot read image {str(path)!r}: {err}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:  # PIL raises these for broken files
            raise ValueError(f"cannot read image {str(path)!r}: {err}") from None
    if isinstance(source, Image.Image):
        _check_pixels(source.size, "PIL image")
        return _pil_to_tensor(ImageOps.exif_transpose(_reduce(source, min_size)))
    if isinstance(source, np.ndarray):
        return _array_to_tensor(source)
    if isinstance(source, torch.Tensor):
        return _tensor_to_image(source)
    if source is None:
        raise TypeError("image is None; pass a file path, PIL image, numpy array or tensor")
    raise TypeError(f"cannot load an image from {type(source).__name__}; pass a path, PIL image, array or tensor")


def image_size(source: ImageLike) -> tuple[int, int]:
    """``(H, W)`` of an image as :func:`load_image` would return it, reading only a file's header."""
    from PIL import Image

    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise FileNotFoundError(f"image file not found: {str(source)!r}")
        try:
            with _open(source) as im:
                w, h = im.size
                orientation = im.getexif().get(0x0112, 1)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot read image {str(source)!r}: {err}") from None
        return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    if isinstance(source, Image.Image):
        w, h = source.size
        return (w, h) if source.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (h, w)
    if isinstance(source, np.ndarray) and source.ndim >= 2:
        return int(source.shape[0]), int(source.shape[1])
    if isinstance(source, torch.Tensor) and source.ndim >= 2:
        return int(source.shape[-2]), int(source.shape[-1])
    if isinstance(source, (np.ndarray, torch.Tensor)):
        raise ValueError(f"an image needs at least 2 dimensions, got shape {tuple(source.shape)}")
    raise TypeError(f"cannot load an image from {type(source).__name__}; pass a path, PIL image, array or tensor")


def _open(path: str | os.PathLike) -> PIL.Image.Image:
    """``PIL.Image.open`` without PIL's decompression-bomb warning (:data:`MAX_IMAGE_PIXELS` is checked instead)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _check_pixels(size: tuple[int, int], what: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"{what} is empty ({w}x{h} pixels)")
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{what} has {w}x{h} = {w * h} pixels, more than the limit anyup.image.MAX_IMAGE_PIXELS = "
            f"{MAX_IMAGE_PIXELS}; shrink it first (or raise the limit)"
        )


def _reduction(size_wh: tuple[int, int], min_size: tuple[int, int] | None) -> int:
    """Integer shrink factor that keeps both sides >= 2 x ``min_size`` (1: keep full size)."""
    w, h = size_wh
    if min_size is None or w * h <= REDUCE_ABOVE_PIXELS:
        return 1
    need_h, need_w = (max(1, int(v)) for v in min_size)
    return max(1, min(h // (2 * need_h), w // (2 * need_w)))


def _draft(im: PIL.Image.Image, min_size: tuple[int, int] | None) -> None:
    """JPEG: let the decoder scale by 1/2, 1/4 or 1/8 (it keeps the result >= the requested size)."""
    factor = _reduction(im.size, _stored(im, min_size))
    if factor > 1 and im.format == "JPEG":
        w, h = im.size
        im.draft(im.mode if im.mode in ("RGB", "L") else "RGB", (w // factor, h // factor))


def _stored(im: PIL.Image.Image, min_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """``min_size`` (displayed H, W) in the file's stored orientation."""
    if min_size is None:
        return None
    return (min_size[1], min_size[0]) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else min_size


def _reduce(im: PIL.Image.Image, min_size: tuple[int, int] | None) -> PIL.Image.Image:
    """Shrink a big image by an integer factor in its own (uint8) pixels: box filter, before any float copy."""
    factor = _reduction(im.size, _stored(im, min_size))
    if factor <= 1:
        return im
    exif = im.getexif()
    out = im.reduce(factor)
    if exif:
        out.info["exif"] = exif.tobytes()  # keep the orientation for exif_transpose
        out.getexif().update(exif)
    return out


def _pil_to_tensor(im: PIL.Image.Image) -> torch.Tensor:
    """Every PIL mode to ``(3, H, W)`` float32 in [0, 1] (see the module docstring)."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16"):  # 16-bit grey (16-bit PNG/TIFF)
        return _array_to_tensor(np.asarray(im).astype(np.uint16), what=f"PIL mode {mode}")
    if mode in ("I", "I;32"):  # 32-bit int: PIL's container for 16-bit grey files
        arr = np.asarray(im, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(
                f"PIL mode {mode} image values span [{arr.min()}, {arr.max()}]; anyup reads mode I as "
                f"16-bit (0..65535): convert it to 8- or 16-bit first"
            )
        return _array_to_tensor(arr.astype(np.uint16), what=f"PIL mode {mode}")
    if mode == "F":
        return _array_to_tensor(np.asarray(im, dtype=np.float32), what="PIL mode F")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        im = background
    try:
        rgb = im.convert("RGB")
    except ValueError as err:
        raise ValueError(f"cannot convert a PIL mode {mode} image to RGB: {err}") from None
    return _array_to_tensor(np.asarray(rgb))


def _array_to_tensor(arr: np.ndarray, what: str = "image array") -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what} must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {arr.shape}")
    if min(arr.shape[:2]) < 1:
        raise ValueError(f"{what} is empty: shape {arr.shape}")
    if not arr.flags.writeable:  # e.g. np.asarray of a PIL image: torch wants writable memory
        arr = arr.copy()
    if arr.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(arr)).float() / 255.0
    elif arr.dtype == np.uint16:
        t = torch.from_numpy(arr.astype(np.float32)) / 65535.0
    elif arr.dtype == np.bool_:
        t = torch.from_numpy(arr.astype(np.float32))
    elif np.issubdtype(arr.dtype, np.floating):
        t = _unit_float(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), what)
    else:
        raise ValueError(
            f"{what} dtype must be uint8 (0..255), uint16 (0..65535), bool, or float in [0, 1]; got {arr.dtype}"
            + (
                ": 8- or 16-bit is ambiguous, convert with .astype(np.uint8) or .astype(np.uint16)"
                if np.issubdtype(arr.dtype, np.integer)
                else ""
            )
        )
    t = t.permute(2, 0, 1)  # (c, H, W)
    return _to_rgb(t)


def _tensor_to_image(source: torch.Tensor) -> torch.Tensor:
    t = source.detach().cpu()
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise ValueError(f"image tensor must be (3, H, W), (1, H, W), (4, H, W) or (H, W); got {tuple(source.shape)}")
    if min(t.shape[-2:]) < 1:
        raise ValueError(f"image tensor is empty: shape {tuple(source.shape)}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype == getattr(torch, "uint16", None):  # torch.uint16 exists since torch 2.3
        t = t.to(torch.int32).float() / 65535.0
    elif t.dtype == torch.bool:
        t = t.float()
    elif t.is_floating_point():
        t = _unit_float(t.float(), "image tensor")
    else:
        raise ValueError(
            f"image tensor dtype must be uint8 (0..255), uint16, bool or float in [0, 1]; got {t.dtype} "
            f"(8- or 16-bit is ambiguous: convert with .to(torch.uint8) or divide by 255 yourself)"
        )
    return _to_rgb(t)


def _unit_float(t: torch.Tensor, what: str) -> torch.Tensor:
    """Float pixels must lie in [0, 1] (a rounding margin is clamped); NaN/inf or wider ranges are refused."""
    if t.numel() == 0:
        return t
    lo, hi = (float(v) for v in torch.aminmax(t))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{what} contains NaN or inf values")
    if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
        hint = " (it looks like 0..255: divide by 255, or pass uint8)" if hi > 1.5 and lo >= 0 else ""
        raise ValueError(f"float {what} values span [{lo:.4g}, {hi:.4g}] but must be in [0, 1]{hint}")
    return t.clamp(0, 1)


def _to_rgb(t: torch.Tensor) -> torch.Tensor:
    """(1|3|4, H, W) -> (3, H, W): grey is repeated; an alpha channel is composited onto white."""
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:
        alpha = t[3:4]
        t = t[:3] * alpha + (1 - alpha)
    return t.contiguous().float()  # (3, H, W)


def list_images(paths: list[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """Expand files and folders into a sorted list of image files (by suffix; hidden files skipped)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            out.extend(
                sorted(
                    q for q in it if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".")
                )
            )
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {str(p)!r}")
    return out


# --------------------------------------------------------------------------------------------- resizing
def resize(
    x: torch.Tensor, size: tuple[int, int], *, antialias: bool | str = True, clamp: bool = False
) -> torch.Tensor:
    """Bilinear resize of ``(..., C, H, W)`` to ``(..., C, *size)`` with ``align_corners=False``.

    The one resize of the package (images, guides, feature maps). ``antialias``: ``True``,
    ``False``, or ``"shrink"`` (only when a side gets smaller). ``clamp``: clip to ``[0, 1]``
    (for RGB images). Computes in the input's float dtype (float32 for integer input) and returns
    the input's dtype; the same size returns the input itself.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if antialias == "shrink":
        antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    lead = x.shape[:-3]
    y = x.reshape(-1, *x.shape[-3:]) if x.ndim != 4 else x  # (N, C, H, W)
    work = y if y.is_floating_point() else y.float()
    out = F.interpolate(work, size=size, mode="bilinear", align_corners=False, antialias=bool(antialias))
    if clamp:
        out = out.clamp(0, 1)
    out = out.to(x.dtype) if x.is_floating_point() else out
    return out.reshape(*lead, *out.shape[-3:]) if x.ndim != 4 else out


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RGB ``(..., 3, H, W)`` in [0, 1] -> float32 ``(..., 3, *size)``: antialiased bilinear, clipped to [0, 1]."""
    return resize(image.float(), size, antialias=True, clamp=True)


def resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize (``nearest-exact``) of label/depth/mask maps ``(H, W)`` or ``(C, H, W)``.

    Never mixes values (classes, valid and invalid pixels); keeps the dtype (bool included).
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    squeeze = x.ndim == 2
    y = x[None, None] if squeeze else x[None]  # (1, c, h, w)
    work = y.float() if y.dtype == torch.bool else y.to(torch.float64)
    y = F.interpolate(work, size=size, mode="nearest-exact").to(x.dtype)
    return y[0, 0] if squeeze else y[0]


def multiple_size(
    h: int,
    w: int,
    multiple: int,
    *,
    short_side: int | None = None,
    long_side: int | None = None,
    max_aspect: float | None = MAX_ASPECT,
) -> tuple[int, int]:
    """The ``(H', W')`` :func:`resize_to_multiple` produces for an ``h x w`` image.

    With ``short_side`` the long side is capped at ``max_aspect * short_side`` (an image more
    elongated than that gets a shorter short side instead), so a 4 x 4096 strip cannot ask for a
    448 x 458752 input.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be an int >= 1, got {multiple!r}")
    if short_side is not None and long_side is not None:
        raise ValueError("pass at most one of short_side and long_side")
    for name, v in (("short_side", short_side), ("long_side", long_side)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if min(h, w) < 1:
        raise ValueError(f"cannot resize an empty image ({h}x{w})")
    scale = 1.0
    if short_side is not None:
        scale = short_side / min(h, w)
        if max_aspect is not None and max(h, w) * scale > max_aspect * short_side:
            scale = max_aspect * short_side / max(h, w)
    elif long_side is not None:
        scale = long_side / max(h, w)
    new_h = max(multiple, int(round(h * scale / multiple)) * multiple)
    new_w = max(multiple, int(round(w * scale / multiple)) * multiple)
    return new_h, new_w


def resize_to_multiple(
    image: torch.Tensor, multiple: int, *, short_side: int | None = None, long_side: int | None = None
) -> torch.Tensor:
    """Resize ``(..., 3, H, W)`` so both sides are multiples of ``multiple``, keeping aspect ratio.

    With ``short_side`` (or ``long_side``) the image is first scaled so that side has that
    length (see :func:`multiple_size` for the aspect cap); each side is then rounded to the
    nearest multiple (at least one ``multiple``). Antialiased bilinear, clipped to [0, 1];
    returns the same dtype.
    """
    h, w = image.shape[-2:]
    new_hw = multiple_size(h, w, multiple, short_side=short_side, long_side=long_side)
    if new_hw == (h, w):
        return image
    return resize(image.float(), new_hw, antialias=True, clamp=True).to(image.dtype)


def short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """``(H', W')`` with the short side ``size`` and the aspect ratio kept (the long side rounded)."""
    if min(h, w) == size:
        return h, w
    scale = size / min(h, w)
    return max(size, round(h * scale)), max(size, round(w * scale))


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centred ``size`` window of ``(..., H, W)`` (the top-left one when the margin is odd)."""
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def square_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(3, H, W)`` in [0, 1] so the short side is ``size`` (antialiased bilinear), centre-crop to square."""
    h, w = image.shape[-2:]
    x = resize(image, short_side_size(h, w, size), antialias=True)
    return center_crop(x, (size, size)).clamp(0, 1).contiguous()  # (3, size, size)
