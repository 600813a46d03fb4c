"""Image loading and the two normalisations every pipeline needs.

Conventions used across the package:

* an *RGB image tensor* is ``(3, H, W)`` or ``(B, 3, H, W)``, float32, values in ``[0, 1]``;
* AnyUp's *guidance image* is that tensor normalised with ImageNet mean/std
  (:func:`imagenet_normalize`);
* encoders receive the ``[0, 1]`` tensor and apply their own normalisation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageLike = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821


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


def load_image(source: ImageLike) -> torch.Tensor:
    """Load any image into an RGB float tensor ``(3, H, W)`` in ``[0, 1]``.

    Accepts a file path (EXIF orientation applied; grey, palette, RGBA, 16-bit converted to RGB),
    a ``PIL.Image``, a ``numpy`` array (``(H, W)``, ``(H, W, 3|4)``; uint8 in 0..255 or float in
    0..1) or a tensor (``(3, H, W)`` float in 0..1, or uint8).
    """
    from PIL import Image, ImageOps

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {str(path)!r}")
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                return _pil_to_tensor(im)
        except (OSError, SyntaxError, ValueError) as err:  # PIL raises these for broken files
            raise ValueError(f"cannot read image {str(path)!r}: {err}") from err
    if isinstance(source, Image.Image):
        return _pil_to_tensor(ImageOps.exif_transpose(source))
    if isinstance(source, np.ndarray):
        return _array_to_tensor(source)
    if isinstance(source, torch.Tensor):
        t = source.detach()
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise ValueError(f"image tensor must be (3, H, W), (1, H, W) or (H, W); got {tuple(source.shape)}")
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        elif not t.is_floating_point():
            raise ValueError(f"image tensor must be float in [0, 1] or uint8, got dtype {t.dtype}")
        t = t.float()
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return t[:3].clamp(0, 1).contiguous()
    raise TypeError(f"cannot load an image from {type(source).__name__}; pass a path, PIL image, array or tensor")


def _pil_to_tensor(im: "PIL.Image.Image") -> torch.Tensor:  # noqa: F821
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        arr = arr / max(float(arr.max()), 1.0)
        return _array_to_tensor(arr)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        from PIL import Image

        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        im = background
    return _array_to_tensor(np.array(im.convert("RGB")))


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {arr.shape}")
    if arr.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(arr)).float() / 255.0
    elif arr.dtype == np.uint16:
        t = torch.from_numpy(arr.astype(np.float32)) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    elif arr.dtype == np.bool_:
        t = torch.from_numpy(arr.astype(np.float32))
    else:
        raise ValueError(f"image array dtype must be uint8, uint16, bool or float; got {arr.dtype}")
    t = t.permute(2, 0, 1)  # (c, H, W)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t[:3].clamp(0, 1).contiguous()  # (3, H, W)


def resize_to_multiple(
    image: torch.Tensor, multiple: int, *, short_side: int | None = None, long_side: int | None = None
) -> torch.Tensor:
    """Resize ``(..., 3, H, W)`` so both sides are multiples of ``multiple``, keeping aspect ratio.

    With ``short_side`` (or ``long_side``) the image is first scaled so that side has that
    length; each side is then rounded to the nearest multiple (at least one ``multiple``).
    Uses antialiased bilinear resampling. Returns a new tensor of the same dtype.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if short_side is not None and long_side is not None:
        raise ValueError("pass at most one of short_side and long_side")
    h, w = image.shape[-2:]
    scale = 1.0
    if short_side is not None:
        scale = short_side / min(h, w)
    elif long_side is not None:
        scale = long_side / max(h, w)
    new_h = max(multiple, int(round(h * scale / multiple)) * multiple)
    new_w = max(multiple, int(round(w * scale / multiple)) * multiple)
    if (new_h, new_w) == (h, w):
        return image
    squeeze = image.ndim == 3
    x = image.unsqueeze(0) if squeeze else image
    x = F.interpolate(x.float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    x = x.clamp(0, 1).to(image.dtype)
    return x[0] if squeeze else x


def list_images(paths: list[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """Expand files and folders into a sorted list of image files (by suffix)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            out.extend(sorted(q for q in it if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {str(p)!r}")
    return out
