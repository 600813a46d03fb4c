"""Metrics of anyup.eval.metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anyup.eval.metrics import (
    DepthMeter,
    FidelityMeter,
    NormalsMeter,
    SegmentationMeter,
    align_scale_shift,
    angular_error,
    bilinear_weights,
    boundary_band,
    cosine_map,
    depth_metrics,
    feature_edges,
    label_edges,
)


class TestSegmentation:
    def test_miou_with_ignore_hand_computed(self):
        # target row: 0 0 1 1 255 ; pred: 0 1 1 1 0 (the ignored pixel's prediction must not count)
        target = torch.tensor([[0, 0, 1, 1, 255]])
        pred = torch.tensor([[0, 1, 1, 1, 0]])
        m = SegmentationMeter(num_classes=3, ignore_index=255)
        m.update(pred, target)
        out = m.compute()
        # class 0: tp 1, fp 0, fn 1 -> 1/2 ; class 1: tp 2, fp 1, fn 0 -> 2/3 ; class 2 absent -> skipped
        assert out["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
        assert out["pixel_acc"] == pytest.approx(3 / 4)
        iou = m.per_class_iou()
        assert math.isnan(float(iou[2]))

    def test_absent_class_predicted_counts_as_zero(self):
        target = torch.tensor([[0, 0]])
        pred = torch.tensor([[0, 2]])
        m = SegmentationMeter(num_classes=3)
        m.update(pred, target)
        # class 0: 1/2, class 2: 0/1 (predicted but absent) -> mean 0.25
        assert m.compute()["miou"] == pytest.approx(0.25)

    def test_accumulates_over_batches_and_accepts_logits(self):
        target = torch.tensor([[[0, 1], [1, 1]]])
        logits = F.one_hot(torch.tensor([[[0, 1], [0, 1]]]), 2).permute(0, 3, 1, 2).float()
        m = SegmentationMeter(2)
        m.update(logits, target)
        m.update(target, target)
        # confusion: class0 tp 2, fp 1 ; class1 tp 5, fn 1
        assert m.compute()["miou"] == pytest.approx((2 / 3 + 5 / 6) / 2)

    def test_rejects_bad_labels(self):
        m = SegmentationMeter(2)
        with pytest.raises(ValueError, match="outside"):
            m.update(torch.tensor([[0]]), torch.tensor([[5]]))
        with pytest.raises(ValueError, match="same shape"):
            m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))

    def test_boundary_band_hand_computed(self):
        labels = torch.zeros(6, 10, dtype=torch.long)
        labels[:, 5:] = 1
        assert label_edges(labels).nonzero()[:, 1].unique().tolist() == [4, 5]
        assert boundary_band(labels, 0)[0].nonzero().flatten().tolist() == [4, 5]
        assert boundary_band(labels, 1)[0].nonzero().flatten().tolist() == [3, 4, 5, 6]
        assert boundary_band(labels, 2)[0].nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7]
        assert not boundary_band(torch.zeros(4, 4, dtype=torch.long), 3).any()
        with pytest.raises(ValueError, match="width"):
            boundary_band(labels, -1)

    def test_boundary_miou_only_counts_band(self):
        target = torch.zeros(1, 4, 8, dtype=torch.long)
        target[..., 4:] = 1
        pred = target.clone()
        pred[..., 0] = 1  # wrong, but far from the edge (columns 3..4 form the width-0 band)
        m = SegmentationMeter(2, boundary_width=0)
        m.update(pred, target)
        out = m.compute()
        assert out["boundary_miou"] == pytest.approx(1.0)
        assert out["miou"] < 1.0
        pred2 = target.clone()
        pred2[..., 3] = 1  # wrong exactly at the edge
        m2 = SegmentationMeter(2, boundary_width=0)
        m2.update(pred2, target)
        # band: columns 3 and 4 -> class0: tp 0 (col 3 wrong), class1: tp 4 fp 4 -> IoU 0 and 0.5
        assert m2.compute()["boundary_miou"] == pytest.approx(0.25)


class TestDepth:
    def test_hand_computed(self):
        gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])  # last pixel invalid
        pred = torch.tensor([[[1.0, 1.0], [5.0, 123.0]]])
        m = depth_metrics(pred, gt)
        assert float(m["rmse"]) == pytest.approx(math.sqrt((0 + 1 + 1) / 3))
        assert float(m["abs_rel"]) == pytest.approx((0 + 0.5 + 0.25) / 3)
        # ratios: 1, 2, 1.25 -> only the first is < 1.25 (1.25 is not < 1.25)
        assert float(m["delta1"]) == pytest.approx(1 / 3)
        assert float(m["delta2"]) == pytest.approx(2 / 3)
        assert float(m["delta3"]) == pytest.approx(2 / 3)
        assert float(m["log_rmse"]) == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(1.25) ** 2) / 3))

    def test_valid_mask_and_empty_image(self):
        gt = torch.ones(2, 2, 2)
        pred = torch.full((2, 2, 2), 2.0)
        valid = torch.zeros(2, 2, 2, dtype=torch.bool)
        valid[0, 0, 0] = True
        m = depth_metrics(pred, gt, valid)
        assert float(m["rmse"][0]) == pytest.approx(1.0)
        assert math.isnan(float(m["rmse"][1]))
        meter = DepthMeter()
        meter.update(pred, gt, valid)
        assert meter.compute()["rmse"] == pytest.approx(1.0)  # the empty image is skipped

    def test_scale_shift_alignment(self):
        gt = torch.rand(2, 5, 7) + 0.5
        pred = 3.0 * gt - 0.2
        aligned = align_scale_shift(pred, gt)
        torch.testing.assert_close(aligned, gt, atol=1e-5, rtol=1e-5)
        m = depth_metrics(pred, gt, align=True)
        assert float(m["rmse"].max()) < 1e-4
        assert float(m["delta1"].min()) == 1.0
        assert float(depth_metrics(pred, gt)["rmse"].min()) > 0.1

    def test_meter_averages_images(self):
        gt = torch.ones(2, 1, 2)
        pred = torch.stack([torch.ones(1, 2), torch.full((1, 2), 3.0)])
        meter = DepthMeter(aligned=False)
        meter.update(pred, gt)
        out = meter.compute()
        assert out["rmse"] == pytest.approx(1.0)  # (0 + 2) / 2
        assert "rmse_aligned" not in out


class TestNormals:
    def test_angular_error(self):
        gt = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3).clone()
        pred = torch.stack(
            [torch.tensor([0.0, 0.0, 5.0]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 1.0])], -1
        )
        err = angular_error(pred.view(1, 3, 1, 3), gt)
        torch.testing.assert_close(err, torch.tensor([[[0.0, 90.0, 45.0]]], dtype=torch.float64), atol=1e-6, rtol=0)

    def test_meter_hand_computed(self):
        # angles 0, 10, 20, 40 degrees around the x axis; one extra invalid pixel (zero normal)
        angles = [0.0, 10.0, 20.0, 40.0]
        pred = torch.tensor([[0.0, math.sin(math.radians(a)), math.cos(math.radians(a))] for a in angles]).T
        pred = torch.cat([pred, torch.tensor([[1.0], [0.0], [0.0]])], 1).view(1, 3, 1, 5)
        gt = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 5).clone()
        gt[..., 4] = 0.0
        m = NormalsMeter()
        m.update(pred, gt)
        out = m.compute()
        assert out["mean_angle"] == pytest.approx(17.5, abs=1e-4)
        assert out["median_angle"] == pytest.approx(15.0, abs=0.011)
        assert out["rmse_angle"] == pytest.approx(math.sqrt((0 + 100 + 400 + 1600) / 4), abs=1e-4)
        assert out["within_11.25"] == pytest.approx(0.5)
        assert out["within_22.5"] == pytest.approx(0.75)
        assert out["within_30"] == pytest.approx(0.75)

    def test_median_odd_count_and_valid_mask(self):
        angles = [5.0, 50.0, 30.0]
        pred = torch.tensor([[0.0, math.sin(math.radians(a)), math.cos(math.radians(a))] for a in angles]).T.view(
            1, 3, 1, 3
        )
        gt = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3)
        m = NormalsMeter()
        m.update(pred, gt)
        assert m.compute()["median_angle"] == pytest.approx(30.0, abs=0.011)
        m2 = NormalsMeter()
        m2.update(pred, gt, valid=torch.tensor([[[True, False, False]]]))
        assert m2.compute()["mean_angle"] == pytest.approx(5.0, abs=1e-4)


class TestFidelity:
    def test_cosine_and_edges(self):
        a = torch.zeros(1, 2, 4, 4)
        a[:, 0, :, :2] = 1.0
        a[:, 1, :, 2:] = 1.0
        assert float(cosine_map(a, a).min()) == pytest.approx(1.0)
        assert float(cosine_map(a, -a).max()) == pytest.approx(-1.0)
        edges = feature_edges(a, quantile=0.5)
        # the feature change is between columns 1 and 2
        assert edges[0].nonzero()[:, 1].unique().tolist() == [1, 2]
        m = FidelityMeter()
        b = a.clone()
        b[:, :, :, 1] = b[:, :, :, 2]  # wrong at column 1 only (an edge column)
        m.update(b, a, edges)
        out = m.compute()
        assert out["cos"] == pytest.approx(0.75)
        assert out["cos_edges"] == pytest.approx(0.5)


def test_bilinear_weights_match_interpolate():
    h, w, H, W = 3, 5, 11, 17
    basis = torch.eye(h * w).view(h * w, h, w)[None]  # (1, h*w, h, w)
    up = F.interpolate(basis, size=(H, W), mode="bilinear", align_corners=False)[0]  # (h*w, H, W)
    for y, x in [(0, 0), (5, 8), (10, 16), (3, 1)]:
        ref = up[:, y, x].view(h, w)
        torch.testing.assert_close(bilinear_weights((h, w), (H, W), y, x), ref, atol=1e-6, rtol=0)
        assert float(bilinear_weights((h, w), (H, W), y, x).sum()) == pytest.approx(1.0)
