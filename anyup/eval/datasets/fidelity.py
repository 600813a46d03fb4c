"""Input pairs for the label-free feature-fidelity check.

The encoder's features of the *full* image are the target; the encoder's features of the
*downscaled* image, upsampled by a method to the full image's feature grid (guided by the full
image), are the prediction. The metric itself lives in :mod:`anyup.eval.metrics`.
"""

from __future__ import annotations

import torch


def fidelity_pair(
    image: torch.Tensor, factor: int = 2, multiple: int = 14, short_side: int | None = 448
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(small, full)`` RGB tensors in ``[0, 1]`` for one image ``(3, H, W)`` or ``(B, 3, H, W)``.

    ``full`` is the image resized (antialiased bilinear, aspect kept) so its short side is about
    ``short_side`` and both sides are multiples of ``multiple * factor``; ``small`` is ``full``
    downscaled by exactly ``factor`` (antialiased), so its sides are multiples of ``multiple``.
    An encoder of stride ``multiple`` then gives a ``(H/(multiple*factor), W/(multiple*factor))``
    grid on ``small`` and a grid ``factor`` times finer on ``full``, which is the target.
    """
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"image must be (3, H, W) or (B, 3, H, W), got shape {tuple(image.shape)}")
    if factor < 1 or multiple < 1:
        raise ValueError(f"factor and multiple must be >= 1, got factor={factor}, multiple={multiple}")
    from anyup.image import resize, resize_to_multiple

    full = resize_to_multiple(image, multiple * factor, short_side=short_side)
    x = full.unsqueeze(0) if full.ndim == 3 else full
    h, w = x.shape[-2] // factor, x.shape[-1] // factor
    small = resize(x.float(), (h, w), antialias=True, clamp=True).to(image.dtype)
    return (small[0] if full.ndim == 3 else small), full
