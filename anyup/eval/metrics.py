"""Dense-prediction metrics for the probes and the label-free fidelity checks.

Everything here is plain torch on CPU-sized tensors, with no training state:

* segmentation: :class:`SegmentationMeter` accumulates a confusion matrix and reports mIoU,
  pixel accuracy and the same two restricted to a band around ground-truth class edges
  (:func:`boundary_band`), where upsampling matters most;
* depth: :func:`depth_metrics` (RMSE, AbsRel, delta thresholds, optionally after a per-image
  least-squares scale-and-shift alignment as in Probe3D) and :class:`DepthMeter` (mean over images);
* surface normals: :func:`angular_error` and :class:`NormalsMeter` (mean / median angle, RMSE and
  the share of pixels within 11.25, 22.5 and 30 degrees, pooled over all valid pixels);
* features: :func:`cosine_map`, :func:`feature_edges` and :class:`FidelityMeter` for the
  label-free comparison of upsampled features with an encoder's own high-resolution features.

Conventions: label maps are ``(B, H, W)`` (or ``(H, W)``) int64 with ``ignore_index`` marking
pixels to skip; depth is ``(B, H, W)`` float with ``0`` = invalid unless a ``valid`` mask is
given; normals are ``(B, 3, H, W)`` (need not be unit length); angles are in degrees.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "DepthMeter",
    "FidelityMeter",
    "NormalsMeter",
    "SegmentationMeter",
    "align_scale_shift",
    "angular_error",
    "bilinear_weights",
    "boundary_band",
    "cosine_map",
    "depth_metrics",
    "feature_edges",
    "label_edges",
]

NORMAL_THRESHOLDS: tuple[float, ...] = (11.25, 22.5, 30.0)
DEPTH_THRESHOLDS: tuple[float, ...] = (1.25, 1.25**2, 1.25**3)


def _as_batch(x: torch.Tensor, ndim: int, name: str) -> torch.Tensor:
    """Add a batch axis to an un-batched tensor (``ndim`` is the batched rank)."""
    if x.ndim == ndim - 1:
        return x.unsqueeze(0)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim - 1} or {ndim} dims, got shape {tuple(x.shape)}")
    return x


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------


def label_edges(labels: torch.Tensor) -> torch.Tensor:
    """Pixels with a 4-neighbour of a different label (both sides of every label change).

    Args:
        labels: ``(B, H, W)`` or ``(H, W)`` integer label map (the ignore label counts as a label,
            so the rim of an ignored region is an edge too).

    Returns:
        bool tensor of the same shape.
    """
    squeeze = labels.ndim == 2
    y = _as_batch(labels, 3, "labels")
    edge = torch.zeros_like(y, dtype=torch.bool)
    dv = y[:, 1:, :] != y[:, :-1, :]  # (B, H-1, W)
    dh = y[:, :, 1:] != y[:, :, :-1]  # (B, H, W-1)
    edge[:, 1:, :] |= dv
    edge[:, :-1, :] |= dv
    edge[:, :, 1:] |= dh
    edge[:, :, :-1] |= dh
    return edge[0] if squeeze else edge


def boundary_band(labels: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` pixels (Chebyshev distance) of a ground-truth label edge.

    The edge pixels themselves (:func:`label_edges`) are the band for ``width=0``; every extra
    unit of ``width`` grows the band by one pixel on each side. Example: a vertical class change
    between columns 4 and 5 gives columns 4..5 for ``width=0`` and 3..6 for ``width=1``.

    Args:
        labels: ``(B, H, W)`` or ``(H, W)`` integer label map.
        width: band half-width in pixels, ``>= 0``.

    Returns:
        bool tensor of the same shape.
    """
    if not isinstance(width, int) or isinstance(width, bool) or width < 0:
        raise ValueError(f"width must be an int >= 0, got {width!r}")
    edge = label_edges(labels)
    if width == 0:
        return edge
    squeeze = edge.ndim == 2
    e = _as_batch(edge, 3, "labels").float().unsqueeze(1)  # (B, 1, H, W)
    band = F.max_pool2d(e, kernel_size=2 * width + 1, stride=1, padding=width) > 0
    band = band[:, 0]  # (B, H, W)
    return band[0] if squeeze else band


class SegmentationMeter:
    """Confusion-matrix accumulator for semantic segmentation.

    ``update(pred, target)`` with ``(B, H, W)`` int class maps (``pred`` may also be logits
    ``(B, K, H, W)``); pixels whose target equals ``ignore_index`` are skipped. With
    ``boundary_width`` set, a second confusion matrix counts only pixels in
    :func:`boundary_band` of the target.

    mIoU averages the IoU over classes that occur in the target or the prediction of the
    accumulated pixels (a class absent from both has no IoU and is left out, as in
    torchmetrics / mmseg when counting present classes).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, boundary_width: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if boundary_width is not None and boundary_width < 0:
            raise ValueError(f"boundary_width must be >= 0 or None, got {boundary_width}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.boundary_width = boundary_width
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # [target, pred]
        self.confusion_band = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def _count(self, pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        k = self.num_classes
        t = target[keep]
        p = pred[keep]
        return torch.bincount(t * k + p, minlength=k * k).reshape(k, k)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.is_floating_point():
            pred = _as_batch(pred, 4, "logits").argmax(1)  # (B, H, W)
        pred = _as_batch(pred, 3, "pred").long().cpu()
        target = _as_batch(target, 3, "target").long().cpu()
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
        valid = target != self.ignore_index
        bad = valid & ((target < 0) | (target >= self.num_classes))
        if bad.any():
            raise ValueError(
                f"target has class ids outside [0, {self.num_classes}) that are not ignore_index "
                f"{self.ignore_index}: {sorted(set(target[bad].unique().tolist()))[:10]}"
            )
        if ((pred < 0) | (pred >= self.num_classes)).any():
            raise ValueError(f"pred has class ids outside [0, {self.num_classes})")
        self.confusion += self._count(pred, target, valid)
        if self.boundary_width is not None:
            band = boundary_band(target, self.boundary_width)
            self.confusion_band += self._count(pred, target, valid & band)

    @staticmethod
    def _iou(confusion: torch.Tensor) -> torch.Tensor:
        c = confusion.double()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        iou = torch.full_like(tp, float("nan"))
        present = union > 0
        iou[present] = tp[present] / union[present]
        return iou  # (K,), NaN for classes absent from target and prediction

    @staticmethod
    def _miou(confusion: torch.Tensor) -> float:
        iou = SegmentationMeter._iou(confusion)
        present = ~torch.isnan(iou)
        return float(iou[present].mean()) if present.any() else float("nan")

    @staticmethod
    def _acc(confusion: torch.Tensor) -> float:
        total = confusion.sum()
        return float(confusion.diag().sum().double() / total) if total > 0 else float("nan")

    def per_class_iou(self) -> torch.Tensor:
        """``(K,)`` float64 IoU per class (NaN where the class is absent from target and prediction)."""
        return self._iou(self.confusion)

    def compute(self) -> dict[str, float]:
        """``miou``, ``pixel_acc`` (fractions in [0, 1]) and, with a band, ``boundary_miou``, ``boundary_acc``."""
        out = {"miou": self._miou(self.confusion), "pixel_acc": self._acc(self.confusion)}
        if self.boundary_width is not None:
            out["boundary_miou"] = self._miou(self.confusion_band)
            out["boundary_acc"] = self._acc(self.confusion_band)
        return out


# --------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------


def _depth_valid(gt: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    ok = torch.isfinite(gt) & (gt > 0)
    if valid is not None:
        ok &= _as_batch(valid, 3, "valid").bool()
    return ok


def align_scale_shift(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image least-squares ``s * pred + t`` fitted to ``gt`` over valid pixels (Probe3D's alignment).

    Args:
        pred, gt: ``(B, H, W)`` float depth.
        valid: optional ``(B, H, W)`` bool; always intersected with ``gt > 0``.

    Returns:
        ``(B, H, W)`` aligned prediction (unchanged where the 2x2 system is singular).
    """
    pred = _as_batch(pred, 3, "pred").double()
    gt = _as_batch(gt, 3, "gt").double()
    m = _depth_valid(gt, valid).double()
    a00 = (m * pred * pred).sum((1, 2))
    a01 = (m * pred).sum((1, 2))
    a11 = m.sum((1, 2))
    b0 = (m * pred * gt).sum((1, 2))
    b1 = (m * gt).sum((1, 2))
    det = a00 * a11 - a01 * a01
    ok = det.abs() > 1e-12 * (a00 * a11).clamp(min=1e-30)
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / torch.where(ok, det, torch.ones_like(det)), torch.ones_like(det))
    shift = torch.where(ok, (a00 * b1 - a01 * b0) / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    return (pred * scale.view(-1, 1, 1) + shift.view(-1, 1, 1)).float()


def depth_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    align: bool = False,
    min_pred: float = 1e-3,
) -> dict[str, torch.Tensor]:
    """Per-image depth metrics over valid pixels (``gt > 0`` and ``valid``).

    Args:
        pred, gt: ``(B, H, W)`` float depth (metres or any consistent unit).
        valid: optional ``(B, H, W)`` bool mask.
        align: first fit a per-image scale and shift to ``gt`` (:func:`align_scale_shift`).
        min_pred: predictions are clamped to at least this value for the ratio metrics.

    Returns:
        dict of ``(B,)`` float64 tensors: ``rmse``, ``abs_rel`` (mean ``|p-g|/g``), ``log_rmse``
        (RMSE of natural-log depth), ``delta1/2/3`` (share with ``max(p/g, g/p) < 1.25**k``).
        Images without a valid pixel get NaN.
    """
    pred = _as_batch(pred, 3, "pred").float()
    gt = _as_batch(gt, 3, "gt").float()
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must have the same shape")
    ok = _depth_valid(gt, valid)
    if align:
        pred = align_scale_shift(pred, gt, ok)
    m = ok.double()
    n = m.sum((1, 2))
    nz = n.clamp(min=1)
    p = pred.double().clamp(min=min_pred)
    g = torch.where(ok, gt.double(), torch.ones_like(gt, dtype=torch.float64))
    err = (pred.double() - g) * m
    out = {
        "rmse": (err.pow(2).sum((1, 2)) / nz).sqrt(),
        "abs_rel": ((err.abs() / g) * m).sum((1, 2)) / nz,
        "log_rmse": (((p.log() - g.log()) * m).pow(2).sum((1, 2)) / nz).sqrt(),
    }
    ratio = torch.maximum(p / g, g / p)
    for k, t in enumerate(DEPTH_THRESHOLDS, start=1):
        out[f"delta{k}"] = ((ratio < t).double() * m).sum((1, 2)) / nz
    empty = n == 0
    if empty.any():
        for v in out.values():
            v[empty] = float("nan")
    return out


class DepthMeter:
    """Averages :func:`depth_metrics` over images (images without valid pixels are skipped).

    Reports ``rmse, abs_rel, log_rmse, delta1, delta2, delta3`` and, with ``aligned=True``, the
    same after per-image scale-and-shift alignment with an ``_aligned`` suffix.
    """

    def __init__(self, aligned: bool = True) -> None:
        self.aligned = aligned
        self._sums: dict[str, float] = {}
        self._count = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        runs = [("", False)] + ([("_aligned", True)] if self.aligned else [])
        per_image: dict[str, torch.Tensor] = {}
        for suffix, align in runs:
            for k, v in depth_metrics(pred, gt, valid, align=align).items():
                per_image[k + suffix] = v
        keep = ~torch.isnan(per_image["rmse"])
        for k, v in per_image.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v[keep].sum())
        self._count += int(keep.sum())

    def compute(self) -> dict[str, float]:
        if self._count == 0:
            return {k: float("nan") for k in self._sums}
        return {k: v / self._count for k, v in self._sums.items()}


# --------------------------------------------------------------------------------------------
# Surface normals
# --------------------------------------------------------------------------------------------


def angular_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between ``(B, 3, H, W)`` vector fields -> ``(B, H, W)`` in ``[0, 180]``."""
    pred = _as_batch(pred, 4, "pred").double()
    gt = _as_batch(gt, 4, "gt").double()
    if pred.shape != gt.shape or pred.shape[1] != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (B, 3, H, W)")
    cos = (pred * gt).sum(1) / (pred.norm(dim=1) * gt.norm(dim=1)).clamp(min=1e-12)
    cos = cos.clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


class NormalsMeter:
    """Surface-normal metrics pooled over all valid pixels of all images.

    ``mean_angle``, ``median_angle``, ``rmse_angle`` (degrees) and ``within_11.25``,
    ``within_22.5``, ``within_30`` (fractions). The median comes from a 0.01-degree histogram
    (exact to the bin), so memory stays constant however many pixels are seen.
    """

    BIN = 0.01

    def __init__(self) -> None:
        self._hist = torch.zeros(int(round(180 / self.BIN)) + 1, dtype=torch.int64)
        self._sum = 0.0
        self._sum_sq = 0.0
        self._within = [0] * len(NORMAL_THRESHOLDS)
        self._n = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        gt = _as_batch(gt, 4, "gt")
        ok = torch.isfinite(gt).all(1) & (gt.abs().sum(1) > 0)  # (B, H, W)
        if valid is not None:
            ok &= _as_batch(valid, 3, "valid").bool()
        err = angular_error(pred, gt)[ok]  # (N,)
        if err.numel() == 0:
            return
        self._n += err.numel()
        self._sum += float(err.sum())
        self._sum_sq += float(err.pow(2).sum())
        for i, t in enumerate(NORMAL_THRESHOLDS):
            self._within[i] += int((err < t).sum())
        idx = (err / self.BIN).round().long().clamp(0, self._hist.numel() - 1)
        self._hist += torch.bincount(idx, minlength=self._hist.numel())

    def _median(self) -> float:
        cum = self._hist.cumsum(0)
        half = self._n / 2.0
        lo = int(torch.searchsorted(cum, torch.tensor(math.ceil(half)), right=False))
        if self._n % 2 == 0:
            hi = int(torch.searchsorted(cum, torch.tensor(int(half) + 1), right=False))
            return (lo + hi) / 2.0 * self.BIN
        return lo * self.BIN

    def compute(self) -> dict[str, float]:
        names = ["mean_angle", "median_angle", "rmse_angle"] + [f"within_{t:g}" for t in NORMAL_THRESHOLDS]
        if self._n == 0:
            return {k: float("nan") for k in names}
        out = {
            "mean_angle": self._sum / self._n,
            "median_angle": self._median(),
            "rmse_angle": math.sqrt(self._sum_sq / self._n),
        }
        for t, c in zip(NORMAL_THRESHOLDS, self._within):
            out[f"within_{t:g}"] = c / self._n
        return out


# --------------------------------------------------------------------------------------------
# Label-free feature fidelity
# --------------------------------------------------------------------------------------------


def cosine_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel cosine similarity of ``(B, C, H, W)`` feature maps -> ``(B, H, W)`` in ``[-1, 1]``."""
    a = _as_batch(a, 4, "a").float()
    b = _as_batch(b, 4, "b").float()
    if a.shape != b.shape:
        raise ValueError(f"feature maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-8)


def feature_edges(features: torch.Tensor, quantile: float = 0.8) -> torch.Tensor:
    """Pixels where the feature map changes most: a label-free edge mask.

    Each pixel's edge strength is the largest cosine *distance* to its 4 neighbours; pixels at
    or above the per-image ``quantile`` of that strength are edges.

    Args:
        features: ``(B, C, H, W)`` float.
        quantile: in ``[0, 1)``; ``0.8`` keeps the 20 % strongest-changing pixels.

    Returns:
        ``(B, H, W)`` bool.
    """
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}")
    f = F.normalize(_as_batch(features, 4, "features").float(), dim=1, eps=1e-8)
    b, _, h, w = f.shape
    strength = torch.zeros(b, h, w)
    if h > 1:
        dv = 1 - (f[:, :, 1:] * f[:, :, :-1]).sum(1)  # (B, H-1, W)
        strength[:, 1:] = torch.maximum(strength[:, 1:], dv)
        strength[:, :-1] = torch.maximum(strength[:, :-1], dv)
    if w > 1:
        dh = 1 - (f[..., 1:] * f[..., :-1]).sum(1)  # (B, H, W-1)
        strength[..., 1:] = torch.maximum(strength[..., 1:], dh)
        strength[..., :-1] = torch.maximum(strength[..., :-1], dh)
    thr = torch.quantile(strength.reshape(b, -1), quantile, dim=1).view(b, 1, 1)
    return strength >= thr


class FidelityMeter:
    """Mean per-pixel cosine between upsampled and reference features, everywhere and at edges.

    ``update(pred, target, edges)``: ``(B, C, H, W)`` maps and a ``(B, H, W)`` bool edge mask
    (:func:`feature_edges` of the target). Reports ``cos`` and ``cos_edges`` as the mean over
    images of each image's pixel mean, plus ``mse_norm``: the mean squared error after L2
    normalising both maps per pixel (equal to ``2 - 2 cos`` per pixel).
    """

    def __init__(self) -> None:
        self._vals: dict[str, list[float]] = {"cos": [], "cos_edges": []}

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, edges: torch.Tensor | None = None) -> None:
        cos = cosine_map(pred, target)  # (B, H, W)
        if edges is None:
            edges = torch.zeros_like(cos, dtype=torch.bool)
        edges = _as_batch(edges, 3, "edges")
        for i in range(cos.shape[0]):
            self._vals["cos"].append(float(cos[i].mean()))
            if edges[i].any():
                self._vals["cos_edges"].append(float(cos[i][edges[i]].mean()))

    def compute(self) -> dict[str, float]:
        out = {}
        for k, v in self._vals.items():
            out[k] = sum(v) / len(v) if v else float("nan")
        return out


def bilinear_weights(in_size: tuple[int, int], out_size: tuple[int, int], y: int, x: int) -> torch.Tensor:
    """The implicit weights of bilinear upsampling (``align_corners=False``) for one output pixel.

    Returns the ``(h, w)`` map over the input grid whose weighted sum gives output pixel ``(y, x)``
    of ``F.interpolate(..., size=out_size, mode="bilinear", align_corners=False)`` (sums to 1).
    """

    def axis(n_in: int, n_out: int, i: int) -> torch.Tensor:
        wts = torch.zeros(n_in, dtype=torch.float64)
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        wts[i0] += 1.0 - lam
        wts[i1] += lam
        return wts

    (h, w), (hh, ww) = in_size, out_size
    if not (0 <= y < hh and 0 <= x < ww):
        raise ValueError(f"pixel ({y}, {x}) outside the output grid {out_size}")
    return torch.outer(axis(h, hh, y), axis(w, ww, x)).float()  # (h, w)
