"""Pictures: shared-basis PCA colours, attention overlays, atomic PNG writing, `anyup viz attention`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anyup.cli import main
from anyup.viz import atomic_write, attention_overlay, attention_row, fit_pca, pca_comparison, pca_rgb, save_png


# --------------------------------------------------------------------------------------------
# PCA
def test_pca_rgb_shapes_range_and_shared_basis():
    torch.manual_seed(0)
    low = torch.randn(16, 6, 8)
    up = torch.nn.functional.interpolate(low[None], size=(24, 32), mode="nearest")[0]
    rgb_low, rgb_up = pca_rgb([low, up])
    assert rgb_low.shape == (6, 8, 3) and rgb_up.shape == (24, 32, 3)
    assert rgb_low.dtype == np.float32 and rgb_low.min() >= 0 and rgb_low.max() <= 1
    # same vectors -> same colours (one basis and one colour scale for all maps)
    np.testing.assert_allclose(rgb_up[::4, ::4], rgb_low, atol=1e-6)
    # a basis fit on another map gives other colours
    other = pca_rgb([torch.randn(16, 6, 8), up], fit_index=0)[1]
    assert not np.allclose(other, rgb_up)


def test_pca_first_component_follows_the_largest_variance():
    torch.manual_seed(0)
    f = torch.randn(3, 20, 20) * torch.tensor([0.1, 5.0, 1.0]).view(3, 1, 1)
    basis = fit_pca(f)
    assert int(basis.components[0].abs().argmax()) == 1
    assert int(basis.components[1].abs().argmax()) == 2
    assert float(basis.components[0].max()) > 0  # sign fixed: largest loading positive
    torch.testing.assert_close(basis.components @ basis.components.T, torch.eye(3), atol=1e-5, rtol=0)


def test_pca_handles_fewer_channels_than_components():
    rgb = pca_rgb([torch.arange(12.0).view(1, 3, 4)])[0]
    assert rgb.shape == (3, 4, 3)
    assert np.all(rgb[..., 1:] == 0)  # padded components are constant
    assert rgb[0, 0, 0] < rgb[2, 3, 0]  # the one real component is monotone in the values
    with pytest.raises(ValueError, match="C=5 channels but the PCA basis was fit on C=1"):
        fit_pca(torch.zeros(1, 2, 2)).project(torch.zeros(5, 2, 2))
    with pytest.raises(ValueError, match="empty"):
        pca_rgb([])


def test_pca_comparison_panel():
    torch.manual_seed(0)
    image = torch.rand(3, 32, 48)
    low = torch.randn(1, 8, 4, 6)
    up = torch.randn(1, 8, 32, 48)
    panel = pca_comparison(image, low, up)
    assert panel.dtype == np.uint8 and panel.shape == (32 + 14, 4 * 48 + 3 * 4, 3)
    np.testing.assert_array_equal(panel[14:, :48], (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


# --------------------------------------------------------------------------------------------
# Attention overlay
def test_attention_overlay_heat_and_marker():
    image = torch.full((3, 40, 60), 0.5)
    attn = torch.zeros(4, 6)
    attn[1, 2] = 1.0
    out = attention_overlay(image, attn, pixel=(30, 50), alpha=0.8)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    hot = out[10:20, 20:30].astype(int).sum()  # the token (1, 2) covers rows 10..19, cols 20..29
    cold = out[0:10, 0:10].astype(int).sum()
    assert hot > cold + 100 * 50
    assert tuple(out[30, 50]) == (0, 255, 255)  # marker centre
    with pytest.raises(ValueError, match="outside the image"):
        attention_overlay(image, attn, pixel=(40, 0))
    with pytest.raises(ValueError, match="one \\(h, w\\) map"):
        attention_overlay(image, attn[None], pixel=(0, 0))


def test_attention_colours_are_shared_and_lift_small_weights():
    from anyup.viz import colorbar

    image = torch.full((3, 20, 20), 0.5)
    weak, strong = torch.zeros(2, 2), torch.zeros(2, 2)
    weak[0, 0], strong[0, 0] = 0.1, 1.0
    row = attention_row(image, torch.stack([weak, strong]), [(15, 15), (15, 15)], labels=["a", "b"])
    # one colour scale for both panels: the weak map's hot block is darker than the strong one's
    assert row[14:24, 0:10].astype(int).sum() < row[14:24, 24:34].astype(int).sum()
    # gamma 0.5 shows a weight of a quarter of the max half-way up the ramp, gamma 1 a quarter of the way
    quarter = torch.tensor([[0.25, 1.0]])
    lifted = attention_overlay(torch.zeros(3, 1, 2), quarter, alpha=1.0, gamma=0.5)[0, 0].astype(int)
    linear = attention_overlay(torch.zeros(3, 1, 2), quarter, alpha=1.0, gamma=1.0)[0, 0].astype(int)
    assert lifted.sum() > linear.sum()
    bar = colorbar(50, 0.2)
    assert bar.shape == (50, 64, 3) and bar[0, 0].sum() > bar[-1, 0].sum()  # bright top = the max


def test_attention_row_checks_counts():
    image = torch.rand(3, 16, 16)
    row = attention_row(image, torch.rand(2, 4, 4), [(1, 1), (8, 8)], bar=False)
    assert row.shape == (16 + 14, 2 * 16 + 4, 3)
    row = attention_row(image, torch.rand(2, 4, 4), [(1, 1), (8, 8)])  # + the colour bar (12 + 52 px)
    assert row.shape == (16 + 14, 2 * 16 + 4 + 4 + 64, 3)
    with pytest.raises(ValueError, match="P = 3 pixels"):
        attention_row(image, torch.rand(2, 4, 4), [(1, 1), (2, 2), (3, 3)])


# --------------------------------------------------------------------------------------------
# Files
def test_save_png_is_atomic(tmp_path):
    path = save_png(np.zeros((4, 5, 3), np.uint8), tmp_path / "a.png")
    assert Image.open(path).size == (5, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]

    def broken(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "b.png", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no half file, no temp file
    with pytest.raises(ValueError, match="uint8 or float"):
        save_png(np.zeros((4, 5), np.int32), tmp_path / "c.png")


# --------------------------------------------------------------------------------------------
# `anyup viz attention`
@pytest.mark.slow
def test_cli_viz_attention(tmp_path, random_model_file, capsys):
    skdata = pytest.importorskip("skimage.data")
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(photo)
    out = tmp_path / "attn.png"
    rc = main(
        [
            "viz",
            "attention",
            str(photo),
            "--pixel",
            "200,150",
            "--pixel",
            "300,330",
            "--input-size",
            "64",
            "--model",
            str(random_model_file),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert Image.open(out).size == (2 * 64 + 4 + 4 + 64, 64 + 14)  # two panels + the colour bar
    assert "2 pixel(s)" in capsys.readouterr().out
    rc = main(
        ["viz", "attention", str(photo), "--pixel", "600,1", "--model", str(random_model_file), "--out", str(out)]
    )
    assert rc == 1 and "outside the image of 512 rows" in capsys.readouterr().err
    rc = main(["viz", "attention", str(photo), "--pixel", "1;2", "--model", str(random_model_file), "--out", str(out)])
    assert rc == 1 and "must look like Y,X" in capsys.readouterr().err


@pytest.mark.slow
def test_boundary_pixel_attends_to_its_own_side(published_weights_env):
    """Published weights: a pixel just left of a vertical edge looks left, one just right looks right."""
    import anyup
    from anyup.image import imagenet_normalize

    model = anyup.load("anyup_multi_backbone")
    h = w = 112
    image = torch.zeros(1, 3, h, w)
    image[:, :, :, :52] = torch.tensor([0.1, 0.2, 0.7]).view(1, 3, 1, 1)  # blue left, edge at x = 52
    image[:, :, :, 52:] = torch.tensor([0.9, 0.8, 0.2]).view(1, 3, 1, 1)  # yellow right
    torch.manual_seed(0)
    a, b = torch.randn(2, 32)
    feats = torch.empty(1, 32, 7, 7)  # stride 16: token column 3 (x 48..63) straddles the edge
    feats[:, :, :, :3] = a.view(1, 32, 1, 1)
    feats[:, :, :, 4:] = b.view(1, 32, 1, 1)
    feats[:, :, :, 3] = (0.25 * a + 0.75 * b).view(1, 32, 1)  # mostly the right-hand side
    maps = model.attention_weights(imagenet_normalize(image), feats, (h, w), pixels=[(56, 49), (56, 56)])
    left, right = maps[0, 0], maps[0, 1]
    left_mass = [float(m[:, :3].sum()) for m in (left, right)]
    right_mass = [float(m[:, 4:].sum()) for m in (left, right)]
    # measured: x=49 puts 0.98 on the blue-side tokens, 0.00 on the yellow side; x=56 puts 0.00 on the
    # blue side (0.69 on the straddling column, which is mostly yellow, 0.31 on the yellow side).
    # A random-init AnyUp gives 0.53 / 0.00 and 0.40 / 0.29: it fails the second check.
    assert left_mass[0] > 0.8 and right_mass[0] < 0.05
    assert left_mass[1] < 0.05 and right_mass[1] > left_mass[1] + 0.2
