"""The cell-border artifact of the README's quick-start picture, per weights (one run, no timing).

The quick-start case: scikit-image's astronaut at 224 px, EfficientNet-Lite0 (its default layer),
upsampled by AnyUp to every pixel; :func:`anyup.eval.artifacts.cell_border_energy` on the flattest
30 % of the photo (border ratio and grid-phase peak ratio, 1 = no grid). Usage::

    python benchmarks/quickstart_artifact.py --weights "published=../shared/weights/anyup_multi_backbone.pth"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch
    import torch.nn.functional as F
    from skimage import data

    import anyup
    from anyup.eval.artifacts import cell_border_energy
    from anyup.model import AnyUpConfig
    from anyup.predictor import Upsampler
    from anyup.train.heldout import parse_weights

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="*", default=[], metavar="LABEL=FILE", help="more weights to measure")
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    img = torch.from_numpy(data.astronaut().copy()).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(args.size, args.size), mode="bilinear", antialias=True).clamp(0, 1)
    up = Upsampler("efficientnet_lite0", input_size=args.size)
    with torch.no_grad():
        low = up.encoder(img)[0].float()  # (1, C, h, w)
    models = {
        "anyup_offline (default)": anyup.load("anyup_offline"),
        "anyup_offline, hard edge": anyup.load("anyup_offline", config=AnyUpConfig(window_edge="hard")),
    }
    for label, path in parse_weights(args.weights).items():  # the heldout command's LABEL=FILE checks
        models[label] = anyup.load(path)
    from anyup.image import imagenet_normalize

    print(f"| weights (astronaut, efficientnet_lite0, {args.size} px) | border ratio | peak ratio |")
    print("|---|---|---|")
    bil = F.interpolate(low, size=(args.size, args.size), mode="bilinear", align_corners=False)
    r = cell_border_energy(bil[0], tuple(low.shape[-2:]), img[0])
    print(f"| bilinear | {r.ratio:.3f} | {r.peak_ratio:.3f} |")
    for label, m in models.items():
        with torch.no_grad():
            out = m(imagenet_normalize(img), low, output_size=(args.size, args.size))
        r = cell_border_energy(out[0], tuple(low.shape[-2:]), img[0])
        print(f"| {label} | {r.ratio:.3f} | {r.peak_ratio:.3f} |")  # the script's result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
