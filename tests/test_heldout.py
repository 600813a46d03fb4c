"""Held-out evaluation helpers (anyup.train.heldout): window coverage, the feathered-window prototype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anyup.engine.window import window_bounds
from anyup.train.heldout import feathered_forward, window_coverage

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("out_len, low_len, ratio", [(224, 14, 0.1), (64, 8, 0.15), (30, 7, 0.3), (16, 16, 0.05)])
def test_coverage_has_the_hard_window_support(out_len, low_len, ratio):
    cov = window_coverage(out_len, low_len, ratio)
    start, stop = window_bounds(out_len, low_len, ratio)
    k = torch.arange(low_len)
    inside = (k[None, :] >= start[:, None]) & (k[None, :] < stop[:, None])
    assert torch.equal(cov > 0, inside)
    assert float(cov.min()) >= 0 and float(cov.max()) <= 1
    assert bool((cov[:, 1:-1] == 1).any())  # cells well inside a window are fully covered


def test_feathered_equals_the_model_when_every_window_is_everything(random_model_file):
    import anyup

    model = anyup.load(random_model_file)
    model.window_ratio = 1.0  # every window covers the whole map: coverage 1 everywhere
    g = torch.Generator().manual_seed(0)
    image, feats = torch.randn(1, 3, 32, 32, generator=g), torch.randn(1, 5, 4, 4, generator=g)
    with torch.no_grad():
        ref = model(image, feats, output_size=(32, 32))
    assert torch.allclose(feathered_forward(model, image, feats, (32, 32)), ref, atol=1e-5)


def test_feathered_window_removes_grid_locked_steps_on_a_real_photo():
    data = pytest.importorskip("skimage.data")
    encoders = pytest.importorskip("anyup.encoders")
    import anyup
    from anyup.eval.artifacts import cell_border_energy
    from anyup.image import imagenet_normalize

    img = torch.from_numpy(data.chelsea().copy()).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True).clamp(0, 1)  # (1, 3, 224, 224)
    enc = encoders.create("efficientnet_lite0", layers="stage4")
    model = anyup.load("anyup_offline")
    with torch.no_grad():
        low = enc(img)[0].float()  # (1, 112, 14, 14)
        hard = model(imagenet_normalize(img), low, output_size=(224, 224))
    soft = feathered_forward(model, imagenet_normalize(img), low, (224, 224))
    r_hard = cell_border_energy(hard[0], (14, 14), img[0])
    r_soft = cell_border_energy(soft[0], (14, 14), img[0])
    assert r_hard.peak_ratio > 3 and r_soft.peak_ratio < r_hard.peak_ratio / 2, (r_hard.peak_ratio, r_soft.peak_ratio)
