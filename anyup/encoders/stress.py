"""Cross-encoder stress test: the same AnyUp weights over many encoder families, no retraining.

For each encoder: its features of one image (real weights for the offline encoders, random init
for hub encoders unless ``hub=True``), upsampled by one AnyUp model to the image size. A row passes
when the output has the input's C and the image's size, is finite, and stays inside the per-channel
range of the input features (every output vector is a convex combination of input vectors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from anyup.image import ImageLike, load_image, resize_to_multiple
from anyup.predictor import run_anyup

logger = logging.getLogger(__name__)

# One encoder per family (ViTs: the small ones, so the test stays cheap).
DEFAULT_STRESS_ENCODERS: tuple[str, ...] = (
    "dinov2_vits14",
    "dinov2_vits14_reg",
    "dinov3_vits16",
    "clip_vitb16",
    "siglip_vitb16",
    "siglip2_vitb16",
    "vit_s16",
    "resnet50",
    "convnext_tiny",
    "efficientnet_lite0",
    "vgg16_bn_craft",
    "vgg16_hed",
)


@dataclass
class StressRow:
    encoder: str
    family: str
    weights: str
    channels: int = 0
    image: str = ""  # encoder input / guidance size HxW
    lowres: str = ""
    output: str = ""
    finite: bool = False
    in_range: bool = False
    edges_anyup: float = float("nan")  # edge alignment (see anyup.viz.edges) of AnyUp's output
    edges_bilinear: float = float("nan")  # ... and of bilinear upsampling, for comparison
    ok: bool = False
    seconds: float = 0.0
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def stress_test(
    model,
    encoders: Sequence[str] = DEFAULT_STRESS_ENCODERS,
    image: ImageLike | None = None,
    input_size: int = 112,
    hub: bool = False,
    device: str | torch.device = "cpu",
) -> list[StressRow]:
    """Run one AnyUp model over several encoders; one :class:`StressRow` per encoder.

    Args:
        model: AnyUp weights name, file path or module.
        encoders: encoder names.
        image: the test image (default ``skimage.data.chelsea()``, else a synthetic pattern).
        input_size: short side of the encoder input (rounded to each encoder's multiple).
        hub: fetch hub weights for timm encoders (needs the network); default random init.
    """
    import torch.nn.functional as F

    from anyup.encoders import create, get_spec
    from anyup.predictor import load_model
    from anyup.viz.edges import edge_alignment

    net, _ = load_model(model, device)
    img = _default_image() if image is None else load_image(image)
    rows = []
    for name in encoders:
        spec = get_spec(name)
        pretrained = spec.offline or hub
        row = StressRow(name, spec.family, "pending")
        t0 = time.perf_counter()
        try:
            enc = create(name, pretrained=pretrained, device=device)
            row.weights = enc.info.weights
            x = resize_to_multiple(img, enc.info.multiple, short_side=input_size)[None].to(device)  # (1, 3, H, W)
            with torch.no_grad():
                low = enc(x)[0]  # (1, C, h, w)
                out = run_anyup(net, x, low)  # (1, C, H, W)
            row.channels = low.shape[1]
            row.image = "x".join(map(str, x.shape[-2:]))
            row.lowres = "x".join(map(str, low.shape[-2:]))
            row.output = "x".join(map(str, out.shape[-2:]))
            row.finite = bool(torch.isfinite(out).all())
            lo = low.amin(dim=(2, 3), keepdim=True)
            hi = low.amax(dim=(2, 3), keepdim=True)
            tol = 1e-4 * (1 + low.abs().amax())
            row.in_range = bool(((out >= lo - tol) & (out <= hi + tol)).all())
            bilinear = F.interpolate(low.float(), size=out.shape[-2:], mode="bilinear", align_corners=False)
            row.edges_anyup = round(edge_alignment(out, x), 3)
            row.edges_bilinear = round(edge_alignment(bilinear, x), 3)
            shape_ok = out.shape == (1, low.shape[1], *x.shape[-2:])
            row.ok = shape_ok and row.finite and row.in_range
            if not shape_ok:
                row.error = f"output {tuple(out.shape)} != {(1, low.shape[1], *x.shape[-2:])}"
        except Exception as err:  # noqa: BLE001 - report and go on: the table shows what failed and why
            row.error = f"{err.__class__.__name__}: {err}"
            logger.warning("stress test of %s failed: %s", name, row.error)
        row.seconds = round(time.perf_counter() - t0, 2)
        rows.append(row)
    return rows


def _default_image() -> torch.Tensor:
    try:
        import skimage.data

        return load_image(skimage.data.chelsea())
    except ImportError:  # a synthetic image with edges and texture
        yy, xx = torch.meshgrid(torch.linspace(0, 1, 240), torch.linspace(0, 1, 320), indexing="ij")
        return torch.stack([(xx > 0.5).float(), (yy - 0.5).abs() * 2, torch.sin(20 * xx * yy) * 0.5 + 0.5])


def format_rows(rows: Sequence[StressRow]) -> str:
    """Markdown table of stress-test rows."""
    head = (
        "| encoder | family | C | image | low-res | output | finite | in range | edges AnyUp | edges bilinear "
        "| ok | s | weights |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        weights = r.weights if not r.error else f"{r.weights} — {r.error[:80]}"
        lines.append(
            f"| {r.encoder} | {r.family} | {r.channels} | {r.image} | {r.lowres} | {r.output} | {r.finite} | "
            f"{r.in_range} | {r.edges_anyup} | {r.edges_bilinear} | {'PASS' if r.ok else 'FAIL'} | {r.seconds} | "
            f"{weights} |"
        )
    return "\n".join(lines)
