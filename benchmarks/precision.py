"""Precision of bfloat16 / float16 against float32, on a real photo and a real encoder.

python benchmarks/precision.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    import torch.nn.functional as F
    from skimage import data

    import anyup
    from anyup.encoders import create

    enc = create("efficientnet_lite0")
    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float().div(255)[None]  # (1, 3, 512, 512)
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        feats = enc(img)
        feats = feats[-1] if isinstance(feats, list) else feats
        model = anyup.load()
        guide = anyup.imagenet_normalize(img)
        ref = model(guide, feats)
        print("| dtype | max abs error | mean relative error | mean cosine |")
        print("|---|---|---|---|")
        for dtype in (torch.bfloat16, torch.float16):
            out = model(guide.to(dtype), feats.to(dtype)).float()
            rel = ((out - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)).mean().item()
            cos = F.cosine_similarity(out, ref, dim=1).mean().item()
            print(
                f"| {str(dtype).replace('torch.', '')} | {(out - ref).abs().max().item():.2e} | {rel:.2e} | {cos:.6f} |"
            )


if __name__ == "__main__":
    main()
