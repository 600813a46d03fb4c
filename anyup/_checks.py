"""Input validation for the whole package: every error names the bad value and what is allowed.

One module for the checks at the public boundary, used by the model (:mod:`anyup.model`), every
upsampling method (:mod:`anyup.baselines`), every encoder (:mod:`anyup.encoders`), the image
reader (:mod:`anyup.image`) and the one-call API (:mod:`anyup.predictor`):

* :func:`check_image_and_features` — the ``(guide, features)`` pair of every upsampler;
* :func:`check_size` / :func:`parse_output_size` — an ``(H, W)`` argument;
* :func:`check_encoder_input` — an encoder's ``(B, 3, H, W)`` input in ``[0, 1]``;
* :func:`check_output_memory` — refuse an output that cannot fit in memory before allocating it;
* :func:`check_out` — a caller's preallocated ``out=`` tensor;
* :func:`parse_memory` — ``max_memory`` as bytes, from ``1 << 30``, ``"1GB"`` or ``"512MiB"``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import torch

from anyup.layers._func import vmap_active

MAX_SIDE = 1 << 16  # 65536 pixels per side: anything larger is almost surely a mistake
# An ImageNet-normalised [0, 1] image lies in about [-2.12, 2.64]. Beyond GUIDE_WARN the guide is
# suspicious (warning); beyond GUIDE_MAX it cannot be one (0..255 pixels, say): an error.
GUIDE_WARN = 5.0
GUIDE_MAX = 25.0
# A [0, 1] image fed to an encoder may overshoot a little after resampling; beyond this it is not [0, 1].
UNIT_TOLERANCE = 0.5

OutputSize = int | Sequence[int] | None


def error_summary(err: BaseException, with_type: bool = True) -> str:
    """One line for an error inside another message: ``"OSError: first line"`` (or the first line only);
    the type name alone when the error has no text."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    first = text.splitlines()[0]
    return f"{type(err).__name__}: {first}" if with_type else first


def one_map(x: Any, what: str = "features") -> torch.Tensor:
    """A single map ``(C, H, W)`` (detached tensor) from ``(C, H, W)`` or ``(1, C, H, W)`` (tensor or numpy)."""
    x = torch.as_tensor(x).detach()
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"{what} must be one map (1, C, H, W) or (C, H, W), got {tuple(x.shape)}")
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"{what} must be (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    return x


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_image_and_features(image: torch.Tensor, features: torch.Tensor) -> None:
    """Check an upsampler's guide ``(B, 3, H, W)`` (ImageNet-normalised float) and features ``(B, C, h, w)``.

    Raises ``TypeError`` for non-tensors or non-float dtypes and ``ValueError`` for wrong ranks,
    channels, batch mismatch, empty or oversized maps, different devices, NaN/inf, or a guide whose
    values cannot be ImageNet-normalised (``|x| > 25``, e.g. 0..255 pixels); warns for ``|x| > 5``.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if image.ndim != 4:
        raise ValueError(f"image must be (B, 3, H, W), got shape {tuple(image.shape)} ({image.ndim} dims)")
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, h, w), got shape {tuple(features.shape)} ({features.ndim} dims)")
    if image.shape[1] != 3:
        raise ValueError(
            f"image must be (B, 3, H, W), got shape {tuple(image.shape)}: "
            f"it needs 3 channels (RGB, ImageNet-normalised), not {image.shape[1]}"
        )
    if features.shape[1] < 1:
        raise ValueError(f"features must have at least 1 channel, got C = {features.shape[1]}")
    if image.shape[0] != features.shape[0]:
        raise ValueError(
            f"batch sizes differ: image has batch {image.shape[0]}, features have batch {features.shape[0]}"
        )
    if image.shape[0] < 1:
        raise ValueError("batch size must be >= 1, got 0")
    for name, t in (("image", image), ("features", features)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (float32, bfloat16, float16), got {t.dtype}")
        if min(t.shape[-2:]) < 1:
            raise ValueError(f"{name} spatial size must be >= 1, got {tuple(t.shape[-2:])}")
        if max(t.shape[-2:]) > MAX_SIDE:
            raise ValueError(f"{name} spatial size {tuple(t.shape[-2:])} exceeds the maximum side {MAX_SIDE}")
    if image.device != features.device:
        raise ValueError(f"image is on {image.device} but features are on {features.device}")
    if vmap_active():  # under vmap a value cannot decide control flow; shapes are checked above
        return
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or inf values")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or inf values")
    check_guide_range(image)


def check_guide_range(image: torch.Tensor) -> None:
    """Refuse (``|x| > 25``) or warn about (``|x| > 5``) a guide that is not ImageNet-normalised."""
    lo, hi = (float(v) for v in torch.aminmax(image.detach().float()))
    peak = max(abs(lo), abs(hi))
    if peak > GUIDE_MAX:
        raise ValueError(
            f"image values span [{lo:.4g}, {hi:.4g}]; the guide must be ImageNet-normalised RGB (about "
            f"[-2.1, 2.6]): load it with anyup.load_image (0..255 -> [0, 1]) and apply anyup.imagenet_normalize"
        )
    if peak > GUIDE_WARN:
        warnings.warn(
            f"image values span [{lo:.4g}, {hi:.4g}], wider than an ImageNet-normalised guide (about "
            f"[-2.1, 2.6]); is it normalised twice, or not scaled to [0, 1] first?",
            stacklevel=3,
        )


def check_size(size: Sequence[int] | int | None, name: str, default: Sequence[int]) -> tuple[int, int]:
    """Normalise an ``(H, W)`` size argument (an int means square; ``None`` means ``default``).

    Entries must be integers (Python or NumPy) in ``[1, MAX_SIDE]``.
    """
    if size is None:
        return int(default[0]), int(default[1])
    if isinstance(size, torch.Size):
        size = tuple(size)
    if isinstance(size, Integral) and not isinstance(size, bool):
        size = (int(size), int(size))
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"{name} must be an int or a pair (H, W), got {size!r}")
    out = []
    for v in size:
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise ValueError(f"{name} must be a pair of integers, got {tuple(size)!r}")
        if not 1 <= int(v) <= MAX_SIDE:
            raise ValueError(f"{name} must be in [1, {MAX_SIDE}] per side, got {tuple(size)}")
        out.append(int(v))
    return out[0], out[1]


def parse_output_size(output_size: OutputSize, image: torch.Tensor | None = None) -> tuple[int, int]:
    """``(H', W')`` from an int, a pair of ints or ``None`` (the image's own size)."""
    if output_size is None:
        if image is None:
            raise ValueError("output_size=None needs an image to take the size from")
        return int(image.shape[-2]), int(image.shape[-1])
    return check_size(output_size, "output_size", (0, 0))


def check_ratio(ratio: float) -> float:
    """``window_ratio``: a finite float in ``(0, 1]``."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0.0 < float(ratio) <= 1.0):
        raise ValueError(f"window_ratio must be a float in (0, 1], got {ratio!r}")
    return float(ratio)


def check_encoder_input(image: object, name: str, multiple: int) -> torch.Tensor:
    """An encoder's input: ``(B, 3, H, W)`` float RGB in ``[0, 1]``, ``H`` and ``W`` multiples of ``multiple``."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"{name}: expected an RGB tensor (B, 3, H, W) in [0, 1], got {_shape(image)}")
    if not image.is_floating_point():
        raise ValueError(f"{name}: expected a float image in [0, 1], got dtype {image.dtype}")
    h, w = image.shape[-2:]
    if min(image.shape[0], h, w) < 1:
        raise ValueError(f"{name}: expected a non-empty image, got shape {tuple(image.shape)}")
    if h % multiple or w % multiple:
        raise ValueError(
            f"{name}: input size {h}x{w} is not a multiple of {multiple}; resize first, e.g. "
            f"anyup.image.resize_to_multiple(image, {multiple})"
        )
    lo, hi = (float(v) for v in torch.aminmax(image.detach().float()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name}: the image contains NaN or inf values")
    if lo < -UNIT_TOLERANCE or hi > 1 + UNIT_TOLERANCE:
        raise ValueError(
            f"{name}: image values span [{lo:.4g}, {hi:.4g}] but encoders take RGB in [0, 1] "
            f"(they normalise themselves): divide 0..255 pixels by 255, do not ImageNet-normalise"
        )
    return image


# --------------------------------------------------------------------------------------------- memory
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_memory(value: int | float | str | None, name: str = "max_memory") -> int | None:
    """Bytes from ``None`` (automatic), a positive number, or a string like ``"1GB"``, ``"512MiB"``, ``"2 G"``.

    Decimal units (kB, MB, GB, TB = powers of 1000) and binary ones (KiB, MiB, GiB, TiB).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number of bytes or a size like '1GB' / '512MiB', got {value!r}")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(
                f"{name} must be a number of bytes or a size like '1GB', '512MiB' (units: "
                f"B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), got {value!r}"
            )
        number = float(m.group(1)) * _UNITS[unit]
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ValueError(f"{name} must be a number of bytes or a size string, got {type(value).__name__}")
    if not math.isfinite(number) or number < 1:
        raise ValueError(f"{name} must be a positive number of bytes, got {value!r}")
    return int(number)


def format_bytes(n: float) -> str:
    """``3.2 GiB``-style text for an error message."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def meminfo_bytes(field: str) -> int | None:
    """A ``/proc/meminfo`` field (e.g. ``"MemTotal"``, ``"MemAvailable"``) in bytes; None where unreadable."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory(device: torch.device | str | None = None) -> int:
    """Free memory in bytes: the GPU's for a CUDA device, else ``MemAvailable`` (4 GiB if unknown)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    free = meminfo_bytes("MemAvailable")
    return free if free is not None else 4 << 30


def check_output_memory(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device | str | None = None, what: str = "output"
) -> int:
    """Refuse a tensor that cannot fit in the memory free on ``device``, before allocating it.

    Returns the tensor's size in bytes. The error names the shape, the bytes it needs and the
    bytes available, and says how to get a smaller output.
    """
    need = math.prod(int(s) for s in shape) * torch.empty((), dtype=dtype).element_size()
    free = available_memory(device)
    if need > free:
        raise ValueError(
            f"the {what} {tuple(int(s) for s in shape)} {str(dtype).replace('torch.', '')} needs "
            f"{format_bytes(need)} but only {format_bytes(free)} is available on "
            f"{torch.device(device) if device is not None else 'cpu'}: ask for a smaller output size, or "
            f"stream it with AnyUp.iter_tiles / out= a memory-mapped tensor"
        )
    return need


def check_out(out: object, shape: Sequence[int]) -> torch.Tensor:
    """A caller's ``out=`` tensor: a floating-point tensor of exactly ``shape``."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if not out.is_floating_point():
        raise TypeError(f"out must be a floating-point tensor (features would be truncated), got dtype {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    return out


# --------------------------------------------------------------------------------------------- architecture
# AnyUp architecture fields: (type, lowest, highest); dim and heads/groups are also checked together.
ARCH_CHOICES: dict[str, tuple[str, ...]] = {"window_edge": ("hard", "soft")}  # string fields: allowed values
ARCH_RULES: dict[str, tuple[type, float, float]] = {
    "dim": (int, 4, 4096),
    "num_heads": (int, 1, 256),
    "num_groups": (int, 1, 4096),
    "num_blocks": (int, 0, 64),
    "lfu_kernel_size": (int, 1, 63),
    "window_ratio": (float, 0.0, 1.0),
}


def check_arch_fields(fields: object, source: str, names: Sequence[str] = (*ARCH_RULES, *ARCH_CHOICES)) -> dict:
    """Validated AnyUp architecture values from untrusted input (weights metadata, config.json, a config).

    Takes only ``names`` (the architecture fields; run-time settings are ignored). Each must have
    the right type and range; ``dim`` a multiple of 4 that ``num_heads`` and ``num_groups`` divide
    (checked when both are given: pass every field, e.g. ``AnyUpConfig().to_dict()`` updated with the
    input); ``lfu_kernel_size`` odd. Errors name ``source``, the field, its value and the rule.
    """
    if not isinstance(fields, dict):
        raise ValueError(f"{source}: the architecture must be a JSON object, got {type(fields).__name__}")
    values: dict = {}
    for key in names:
        if key in fields and key in ARCH_CHOICES:
            if fields[key] not in ARCH_CHOICES[key]:
                allowed = ", ".join(map(repr, ARCH_CHOICES[key]))
                raise ValueError(
                    f"{source}: architecture field {key}={fields[key]!r} is invalid; it must be one of {allowed}"
                )
            values[key] = str(fields[key])
            continue
        if key not in fields or key not in ARCH_RULES:
            continue
        tp, lo, hi = ARCH_RULES[key]
        v = fields[key]
        if tp is int:
            ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
            rule = f"an integer in [{lo}, {hi}]"
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo < v <= hi
            rule = f"a number in ({lo}, {hi}]"
        if not ok:
            raise ValueError(f"{source}: architecture field {key}={v!r} is invalid; it must be {rule}")
        values[key] = float(v) if tp is float else int(v)
    dim = values.get("dim")
    if dim is not None and dim % 4:
        raise ValueError(f"{source}: dim={dim} must be a multiple of 4")
    for key in ("num_heads", "num_groups"):
        if dim is not None and key in values and dim % values[key]:
            raise ValueError(f"{source}: {key}={values[key]} must divide dim={dim}")
    if values.get("lfu_kernel_size", 1) % 2 == 0:
        raise ValueError(f"{source}: lfu_kernel_size={values['lfu_kernel_size']} must be odd")
    return values
