"""Where CosMSE blows up on CNN features: its per-image value with a bilinear prediction, per photo.

CosMSE min-max normalises prediction and target by the target's per-pixel channel range
(``anyup.train.losses.cos_mse``). A target pixel whose channels are all (nearly) equal makes that
range ~0 and the pixel's squared error ~1e12 times larger. This prints, per encoder layer, the
median over the training photos and the photos with the largest values (448 px image, prediction
= the bilinear upsampling of the features of its 224 px downsampling, as in the 224-px recipe).

    python docs/scripts/cosmse_spikes.py runs/issue14/photos/train --every 2
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anyup.encoders import create
from anyup.image import load_image
from anyup.train.losses import cos_mse

LAYERS = [
    ("vgg16_hed", "conv3_3"),
    ("vgg16_hed", "conv4_3"),
    ("vgg16_bn_craft", "conv4_3"),
    ("efficientnet_lite0", "stage4"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photos", type=Path, help="folder of training photos")
    parser.add_argument("--every", type=int, default=1, help="use every N-th photo (sorted by name)")
    parser.add_argument("--size", type=int, default=448, help="side of the high-res image")
    args = parser.parse_args()
    files = sorted(p for p in args.photos.iterdir() if p.is_file())[:: args.every]
    print("| layer | median CosMSE | largest (photo: CosMSE, smallest channel range) |")
    print("|---|---|---|")
    for name, layer in LAYERS:
        enc = create(name, layers=layer).eval()
        rows = []
        for f in files:
            img = load_image(f, min_size=(args.size, args.size))[None]  # (1, 3, H, W) in [0, 1]
            hr = F.interpolate(img, size=(args.size, args.size), mode="bicubic", antialias=True).clamp(0, 1)
            lr = F.interpolate(hr, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
            with torch.no_grad():
                target, low = enc(hr)[0], enc(lr)[0]  # (1, C, h, w), (1, C, h/2, w/2)
            pred = F.interpolate(low, size=target.shape[-2:], mode="bilinear", align_corners=False)
            rng = (target.amax(1) - target.amin(1)).min()
            rows.append((float(cos_mse(pred, target)), float(rng), f.name))
        rows.sort(reverse=True)
        top = "; ".join(f"{n}: {v:.3g}, {r:.3g}" for v, r, n in rows[:2])
        print(f"| {name} {layer} | {np.median([v for v, _, _ in rows]):.3g} | {top} |", flush=True)


if __name__ == "__main__":
    main()
