"""Upsampler.estimate: the time/memory estimate printed before large outputs (no cap given)."""

from __future__ import annotations

import torch

import anyup
from anyup.engine.plan import default_max_memory


def test_estimate_with_the_automatic_memory_cap(random_model_file, monkeypatch):
    from anyup import predictor

    monkeypatch.setattr(predictor, "CALIBRATION_PIXELS", 256)  # a tiny calibration run
    up = anyup.Upsampler("efficientnet_lite0", random_model_file, pretrained=False, input_size=32)
    image = torch.rand(3, 40, 56)  # RGB in [0, 1]
    est = up.estimate(image, output_size=(64, 80))
    assert est.output_size == (64, 80)
    assert est.working_bytes == default_max_memory(torch.device("cpu"))  # max_memory=None: the automatic cap
    assert est.output_bytes == 112 * 64 * 80 * 4  # efficientnet_lite0 stage4 (112 ch), float32
    assert est.guide_bytes == 2 * 3 * 64 * 80 * 4
    assert est.seconds > 0 and est.peak_bytes == est.output_bytes + est.working_bytes + est.guide_bytes
