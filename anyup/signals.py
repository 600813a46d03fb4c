"""Upsample signals other than encoder features, guided by an image: masks, logits, depth.

AnyUp takes any number of channels and returns convex combinations of the input vectors, so the
same weights upsample a low-resolution label map (one-hot in, argmax out), class logits or
probabilities, or a depth map (one channel), with edges that follow the image.

>>> from anyup.signals import upsample_signal
>>> labels = upsample_signal("photo.jpg", lowres_labels, kind="mask")     # (H, W) int64  # doctest: +SKIP
>>> depth = upsample_signal("photo.jpg", lowres_depth, kind="depth")      # (H, W) float  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anyup._checks import check_output_memory
from anyup.image import ImageLike, image_size, load_image
from anyup.predictor import guide_from_rgb, load_model, resize_image
from anyup.weights import DEFAULT_WEIGHTS

__all__ = ["KINDS", "MAX_MASK_LABELS", "label_palette", "read_signal", "upsample_signal", "write_signal"]

KINDS = ("auto", "mask", "logits", "depth")
MAX_MASK_LABELS = 4096  # one-hot channels; more distinct labels is almost surely not a label map


def _infer_kind(signal: torch.Tensor) -> str:
    if not signal.is_floating_point():
        return "mask"
    return "depth" if signal.ndim == 2 else "logits"


def _to_bchw(signal: torch.Tensor, kind: str) -> tuple[torch.Tensor, int]:
    """Signal -> (B, C, h, w) plus its original number of dims (to give the result the same rank)."""
    nd = signal.ndim
    if kind == "mask":
        if nd == 2:
            return signal[None, None], nd  # (1, 1, h, w)
        if nd == 3:
            return signal[:, None], nd  # (B, 1, h, w)
        if nd == 4 and signal.shape[1] == 1:
            return signal, nd
        raise ValueError(
            f"a mask must be an integer label map (h, w), (B, h, w) or (B, 1, h, w); got {tuple(signal.shape)}"
        )
    if kind == "depth":
        if nd == 2:
            return signal[None, None], nd
        if nd == 3 and signal.shape[0] == 1:
            return signal[None], nd  # (1, 1, h, w)
        if nd == 4 and signal.shape[1] == 1:
            return signal, nd
        raise ValueError(f"depth must be (h, w), (1, h, w) or (B, 1, h, w); got {tuple(signal.shape)}")
    if nd == 2:
        return signal[None, None], nd
    if nd == 3:
        return signal[None], nd  # (1, C, h, w)
    if nd == 4:
        return signal, nd
    raise ValueError(f"{kind} must be (h, w), (C, h, w) or (B, C, h, w); got {tuple(signal.shape)}")


def _from_bchw(x: torch.Tensor, nd: int, kind: str) -> torch.Tensor:
    if kind == "mask":  # x is (B, H, W) labels
        return {2: x[0], 3: x, 4: x[:, None]}[nd]
    return {2: x[0, 0], 3: x[0], 4: x}[nd]


def upsample_signal(
    image: ImageLike,
    signal: torch.Tensor | np.ndarray,
    output_size: Sequence[int] | int | None = None,
    model=DEFAULT_WEIGHTS,
    kind: str = "auto",
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Upsample ``signal`` to ``output_size`` guided by ``image``.

    Args:
        image: the guidance image (path, PIL, array or tensor; see :func:`anyup.image.load_image`).
        signal: the low-resolution signal, same batch as the image (B = 1 for one image):
            ``"mask"``: integer labels (h, w) / (B, h, w) / (B, 1, h, w) — upsampled as one-hot
            channels, returned as the argmax label (the original label values, int64);
            ``"logits"``: (C, h, w) / (B, C, h, w) float (logits, probabilities, any features);
            ``"depth"``: (h, w) / (1, h, w) / (B, 1, h, w) float;
            ``"auto"``: integer dtype -> mask, 2-D float -> depth, else logits.
        output_size: (H, W); default the image's size.
        model: AnyUp weights name, file path or module.
        device: where to run.

    Returns:
        The upsampled signal with the input's rank and (H, W) instead of (h, w): float32 for
        logits/depth, int64 labels for masks. Every output value (vector) is a convex combination
        of input values, so depth stays within the input's range.
    """
    from anyup._checks import check_size

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    sig = torch.as_tensor(np.asarray(signal) if isinstance(signal, np.ndarray) else signal).detach()
    if sig.dtype == torch.bool:
        sig = sig.to(torch.int64)
    kind = _infer_kind(sig) if kind == "auto" else kind
    if kind == "mask" and sig.is_floating_point():
        if not torch.equal(sig, sig.round()):
            raise ValueError("a mask must hold integer labels; got non-integer float values (use kind='logits')")
        sig = sig.to(torch.int64)
    if kind != "mask" and not sig.is_floating_point():
        sig = sig.float()
    x, nd = _to_bchw(sig, kind)
    if min(x.shape) < 1:
        raise ValueError(f"the signal is empty: shape {tuple(sig.shape)}")
    out_hw = check_size(output_size, "output_size", image_size(image))
    channels = x.shape[1] if kind != "mask" else min(int(torch.unique(x).numel()), MAX_MASK_LABELS)  # one-hot
    # the result and the full-resolution RGB guide are both held at the output size
    check_output_memory((x.shape[0], channels + 3, *out_hw), torch.float32, device, what="upsampled signal")
    img = load_image(image, min_size=out_hw)  # (3, H0, W0); a very large file decoded reduced
    net, _ = load_model(model, device)
    dtype = next(net.parameters()).dtype
    guide = guide_from_rgb(resize_image(img[None].to(device), out_hw), dtype)  # (1, 3, H, W)
    if x.shape[0] > 1:
        guide = guide.expand(x.shape[0], -1, -1, -1)
    with torch.no_grad():
        if kind == "mask":
            labels, index = torch.unique(x, return_inverse=True)  # index: (B, 1, h, w) in [0, K)
            if labels.numel() > MAX_MASK_LABELS:
                raise ValueError(f"mask has {labels.numel()} distinct labels (> {MAX_MASK_LABELS}); is it a label map?")
            onehot = F.one_hot(index[:, 0], labels.numel()).permute(0, 3, 1, 2).to(dtype)  # (B, K, h, w)
            up = net(guide, onehot.to(device), out_hw)  # (B, K, H, W)
            result = labels.to(up.device)[up.argmax(dim=1)]  # (B, H, W)
        else:
            result = net(guide, x.to(device, dtype), out_hw).float()  # (B, C, H, W)
    return _from_bchw(result, nd, kind)


# --------------------------------------------------------------------------------------------
# Files (used by `anyup upsample-signal`)
def read_signal(path: str | os.PathLike, kind: str) -> np.ndarray:
    """Read a signal from ``.npy``, ``.safetensors`` (tensor ``signal`` or the only one) or an image (masks, depth)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"signal file not found: {str(p)!r}")
    suffix = p.suffix.lower()
    try:
        return _read_signal(p, suffix, kind)
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise ValueError(f"cannot read signal {str(p)!r}: {' '.join(str(err).split())}") from None
    except Exception as err:  # noqa: BLE001 - e.g. SafetensorError: a broken file, said in one line
        raise ValueError(f"cannot read signal {str(p)!r}: {err.__class__.__name__}: {err}") from None


def _read_signal(p, suffix: str, kind: str) -> np.ndarray:
    if suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise ValueError(f"expected a numeric array, got dtype {getattr(arr, 'dtype', type(arr).__name__)}")
        return arr
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(p))
        if "signal" in tensors:
            return tensors["signal"].numpy()
        if len(tensors) == 1:
            return next(iter(tensors.values())).numpy()
        raise ValueError(f"{str(p)!r} holds tensors {sorted(tensors)}; name the signal 'signal'")
    if kind == "logits":
        raise ValueError(f"logits are read from .npy or .safetensors, not {suffix!r}")
    from PIL import Image

    with Image.open(p) as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1", "F"):
            raise ValueError(
                f"a {kind} image must be single-channel (grey, palette or 16-bit); {str(p)!r} is {im.mode}"
            )
        arr = np.asarray(im)
    if kind == "depth":
        return arr.astype(np.float32)
    return arr.astype(np.int64)


def write_signal(array: np.ndarray, path: str | os.PathLike, kind: str, metadata: dict[str, str] | None = None) -> None:
    """Write an upsampled signal atomically: ``.npy``, ``.safetensors`` or ``.png``.

    PNG: masks as 8- or 16-bit label images; logits as the argmax label image; depth only when its
    values are integers in [0, 65535] (e.g. millimetres), otherwise use ``.npy``/``.safetensors``.
    """
    from pathlib import Path

    from anyup.viz.io import atomic_write

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        atomic_write(p, lambda tmp: np.save(tmp, array, allow_pickle=False))
        return
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        t = torch.from_numpy(np.ascontiguousarray(array))
        atomic_write(p, lambda tmp: save_file({"signal": t}, tmp, metadata=metadata or {}))
        return
    if suffix != ".png":
        raise ValueError(f"output must end in .npy, .safetensors or .png, got {str(p)!r}")
    from PIL import Image

    arr = np.asarray(array)
    if kind == "logits":
        arr = arr.argmax(axis=0) if arr.ndim == 3 else arr.argmax(axis=1)[0] if arr.ndim == 4 else arr
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"only one (H, W) map fits a PNG; got shape {array.shape} (use .npy)")
    if kind == "depth" and not np.array_equal(arr, np.round(arr)):
        raise ValueError("float depth does not fit a PNG losslessly; write .npy or .safetensors")
    if arr.min() < 0 or arr.max() > 65535:
        raise ValueError(f"values {arr.min()}..{arr.max()} do not fit a 16-bit PNG; write .npy")
    if arr.max() >= 256:
        im = Image.fromarray(arr.astype(np.uint16))  # 16-bit grey: labels/depth beyond 255 kept exactly
    elif kind in ("mask", "logits"):
        im = Image.fromarray(arr.astype(np.uint8)).convert("P")  # pixel values stay the labels
        im.putpalette(label_palette())  # ... shown in distinct colours (a 0/1 mask is not black on black)
    else:
        im = Image.fromarray(arr.astype(np.uint8))
    atomic_write(p, lambda tmp: im.save(tmp, format="PNG"))


def label_palette() -> list[int]:
    """RGB triplets for labels 0..255 as a flat list of 768 ints (PASCAL VOC colours; 0 = black, 255 = white).

    The label PNGs of ``upsample-signal --kind mask|logits`` use it: their pixel values are the
    labels (``np.asarray(Image.open(path))`` gives them back), and any viewer shows them in colour.
    """
    out = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):  # spread the label's bits over the high bits of R, G, B
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out += [r, g, b]
    out[-3:] = [255, 255, 255]  # 255: the usual "ignore" label
    return out
