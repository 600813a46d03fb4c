"""anyup.encoders.wrap and the hf: / torchhub: / open_clip: adapters, on randomly initialised models
built from their config classes (no download)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anyup.encoders import create, wrap
from anyup.image import IMAGENET_MEAN, IMAGENET_STD, imagenet_normalize, resize_to_multiple

transformers = pytest.importorskip("transformers")
if not transformers.utils.is_torch_available():  # e.g. transformers 5 with torch < 2.6: its models refuse to build
    pytest.skip(
        f"transformers {transformers.__version__} does not support torch {torch.__version__}", allow_module_level=True
    )

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SMALL = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=2, intermediate_size=96)


def _norm(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _grid(tokens: torch.Tensor, h: int, w: int, prefix: int) -> torch.Tensor:
    """By hand: drop the prefix tokens, (B, h*w, C) -> (B, C, h, w)."""
    b, _, c = tokens.shape
    return tokens[:, prefix:].reshape(b, h, w, c).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(np.ascontiguousarray(skimage_data.astronaut())).permute(2, 0, 1).float() / 255
    return F.interpolate(img[None], size=(70, 98), mode="bilinear", antialias=True, align_corners=False)[0]


@pytest.fixture(scope="module")
def dinov2():
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(patch_size=14, image_size=56, **SMALL)
    return transformers.Dinov2Model(cfg).eval()


def test_dinov2_object_through_upsampler_equals_by_hand(dinov2, photo, random_model_file):
    """The bar: Upsampler(wrap(Dinov2Model)) == tokens extracted by hand + the AnyUp model."""
    import anyup
    from anyup.predictor import Upsampler

    up = Upsampler(wrap(dinov2), random_model_file, input_size=None)
    res = up(photo)

    model = anyup.load(random_model_file)
    x = resize_to_multiple(photo, 14)[None]  # (1, 3, 70, 98)
    with torch.no_grad():
        tokens = dinov2(pixel_values=_norm(x, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state  # (1, 1 + 35, 48)
        low = _grid(tokens, 5, 7, prefix=1)  # (1, 48, 5, 7)
        hr = model(imagenet_normalize(x), low)  # (1, 48, 70, 98)
    assert res.lowres.shape == (1, 48, 5, 7)
    torch.testing.assert_close(res.lowres, low, rtol=0, atol=0)
    torch.testing.assert_close(res.features, hr, rtol=1e-6, atol=1e-6)


def test_dinov2_info_and_blocks_non_square(dinov2):
    enc = wrap(dinov2, layer=["final", 1, "block2"])
    assert enc.info.layer_names == ("final", "block1", "block2")
    assert (enc.info.stride, enc.info.channels, enc.info.multiple, enc.info.family) == (14, 48, 14, "dinov2")
    assert enc.info.mean == IMAGENET_MEAN
    x = torch.rand(2, 3, 42, 84)
    maps = enc(x)
    with torch.no_grad():
        out = dinov2(pixel_values=_norm(x, IMAGENET_MEAN, IMAGENET_STD), output_hidden_states=True)
    torch.testing.assert_close(maps[0], _grid(out.last_hidden_state, 3, 6, 1), rtol=0, atol=0)
    torch.testing.assert_close(maps[1], _grid(out.hidden_states[2], 3, 6, 1), rtol=0, atol=0)
    torch.testing.assert_close(maps[2], _grid(out.hidden_states[3], 3, 6, 1), rtol=0, atol=1e-6)
    # a submodule by name gives the same as its block index
    torch.testing.assert_close(wrap(dinov2, layer="encoder.layer.1")(x), maps[1:2], rtol=0, atol=0)


def test_register_tokens_dropped():
    if not hasattr(transformers, "Dinov2WithRegistersConfig"):
        pytest.skip("this transformers has no Dinov2WithRegisters")
    torch.manual_seed(1)
    cfg = transformers.Dinov2WithRegistersConfig(patch_size=14, image_size=56, num_register_tokens=4, **SMALL)
    model = transformers.Dinov2WithRegistersModel(cfg).eval()
    enc = wrap(model)
    x = torch.rand(1, 3, 56, 28)  # portrait: 4 x 2 patches
    with torch.no_grad():
        tokens = model(pixel_values=_norm(x, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state
    assert tokens.shape[1] == 1 + 4 + 8
    torch.testing.assert_close(enc(x), [_grid(tokens, 4, 2, prefix=5)], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_clip_and_siglip_non_square(kind):
    torch.manual_seed(2)
    if kind == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(patch_size=16, image_size=64, **SMALL))
        mean, std, prefix = CLIP_MEAN, CLIP_STD, 1
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(patch_size=16, image_size=64, **SMALL))
        mean, std, prefix = (0.5,) * 3, (0.5,) * 3, 0
    model.eval()
    enc = wrap(model)
    assert (enc.info.mean, enc.info.std, enc.info.multiple) == (mean, std, 16)
    x = torch.rand(1, 3, 48, 96)  # 3 x 6 patches, not the config's 4 x 4
    with torch.no_grad():
        tokens = model(pixel_values=_norm(x, mean, std), interpolate_pos_encoding=True).last_hidden_state
    torch.testing.assert_close(enc(x), [_grid(tokens, 3, 6, prefix)], rtol=0, atol=0)


def test_full_clip_model_uses_its_image_tower():
    torch.manual_seed(6)
    vision = dict(patch_size=16, image_size=64, **SMALL)
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision)).eval()
    enc = wrap(model, layer=["final", 0])
    assert enc.info.layer_names == ("final", "block0") and enc.info.channels == 48
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        out = model.vision_model(
            pixel_values=_norm(x, CLIP_MEAN, CLIP_STD), interpolate_pos_encoding=True, output_hidden_states=True
        )
    final, block0 = enc(x)
    torch.testing.assert_close(final, _grid(out.last_hidden_state, 2, 4, 1), rtol=0, atol=0)
    torch.testing.assert_close(block0, _grid(out.hidden_states[1], 2, 4, 1), rtol=0, atol=1e-6)


def test_hf_folder_by_name_and_offline_id(dinov2, tmp_path, monkeypatch):
    folder = tmp_path / "dinov2-tiny"
    dinov2.save_pretrained(folder)
    x = torch.rand(1, 3, 28, 56)
    enc = create(f"hf:{folder}", layers=1)
    assert enc.info.weights == str(folder) and enc.info.name == f"hf:{folder}"
    torch.testing.assert_close(enc(x), wrap(dinov2, layer=1)(x), rtol=0, atol=0)
    random_init = create(f"hf:{folder}", pretrained=False)
    assert random_init.info.weights == "random init"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"hf:DIR.*anyup\.encoders\.wrap\(model\)") as err:
        create("hf:facebook/dinov2-small")
    assert "facebook/dinov2-small" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


TINY_OPEN_CLIP = {  # an open_clip model config: a 3-block ViT-B-style image tower, 64 wide
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}


def test_open_clip_from_model_config(tmp_path, monkeypatch):
    import json

    open_clip = pytest.importorskip("open_clip")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "anyup-test-tiny.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(tmp_path / "cfg")
    torch.manual_seed(3)
    enc = create("open_clip:anyup-test-tiny", pretrained=False, layers=["final", 1])
    assert enc.info.layer_names == ("final", "block1")
    assert (enc.info.stride, enc.info.channels, enc.info.mean) == (16, 64, CLIP_MEAN)
    visual = enc.model
    # at the model's own grid (64 = 4 x 4 patches) our call matches open_clip's token output
    visual.output_tokens = True
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        _, tokens = visual(_norm(x, CLIP_MEAN, CLIP_STD))  # (1, 16, 64), cls already dropped
    torch.testing.assert_close(enc(x)[0], _grid(tokens, 4, 4, prefix=0), rtol=1e-5, atol=1e-5)
    final, block1 = enc(torch.rand(2, 3, 48, 112))  # non-square: position embeddings interpolated
    assert final.shape == block1.shape == (2, 64, 3, 7)
    assert torch.isfinite(final).all()

    # weights file: a state dict of the whole CLIP, loaded with a strict key check
    from safetensors.torch import save_file

    full = open_clip.create_model("anyup-test-tiny", pretrained=None)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    from_file = create("open_clip:anyup-test-tiny", weights=path)
    assert from_file.info.weights == str(path)
    full.visual.output_tokens = True
    with torch.no_grad():
        _, ref = full.visual(_norm(x, CLIP_MEAN, CLIP_STD))
    torch.testing.assert_close(from_file(x), [_grid(ref, 4, 4, 0)], rtol=1e-5, atol=1e-5)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"--encoder-weights PATH"):
        create("open_clip:ViT-B-32/openai")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        create("open_clip:no-such-model", pretrained=False)


HUBCONF = '''
dependencies = ["torch"]

from dinov2.models.vision_transformer import vit_small


def dinov2_vits14(*, pretrained: bool = True, **kwargs):
    """DINOv2 ViT-S/14 (the architecture of facebookresearch/dinov2's hubconf entry)."""
    if pretrained:
        raise RuntimeError("this test clone has no weights")
    return vit_small(patch_size=14, img_size=518, init_values=1.0, block_chunks=0, **kwargs)
'''


@pytest.mark.slow  # measured 14s in the fast tier (2 busy cores)
def test_torch_hub_dinov2_local_clone(tmp_path, monkeypatch):
    pytest.importorskip("dinov2.models.vision_transformer")
    repo = tmp_path / "dinov2"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    torch.manual_seed(4)
    enc = create(f"torchhub:{repo}:dinov2_vits14", pretrained=False, layers=["final", 3])
    assert (enc.info.family, enc.info.stride, enc.info.channels) == ("dinov2", 14, 384)
    vit = enc.model
    x = torch.rand(1, 3, 42, 70)
    with torch.no_grad():
        xn = _norm(x, IMAGENET_MEAN, IMAGENET_STD)
        final = _grid(vit.forward_features(xn)["x_norm_patchtokens"], 3, 5, 0)
        (block3,) = vit.get_intermediate_layers(xn, n=[3], reshape=True, norm=False)
    got = enc(x)
    torch.testing.assert_close(got[0], final, rtol=0, atol=0)
    torch.testing.assert_close(got[1], block3, rtol=0, atol=1e-6)

    from safetensors.torch import save_file

    path = tmp_path / "dinov2_vits14.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    from_file = create(f"torchhub:{repo}:dinov2_vits14", weights=path)
    assert from_file.info.weights == str(path)
    torch.testing.assert_close(from_file(x), [final], rtol=0, atol=0)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(RuntimeError, match=r"torchhub:DIR:dinov2_vits14 --encoder-weights PATH"):
        create("torchhub:dinov2_vits14")


def test_plain_module_cnn_and_errors():
    import copy

    torch.manual_seed(5)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
    )
    enc = wrap(net, layer=["0", None], normalize="none")
    assert [(x.name, x.stride, x.channels) for x in enc.info.layers] == [("0", 2, 8), ("final", 4, 16)]
    x = torch.rand(1, 3, 32, 48)
    first, last = enc(x)
    torch.testing.assert_close(last, net(x), rtol=0, atol=0)
    torch.testing.assert_close(first, net[0](x), rtol=0, atol=0)
    torch.testing.assert_close(copy.deepcopy(enc)(x)[1], last, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        wrap(net, layer="nope")
    with pytest.raises(ValueError, match="int layer"):
        wrap(net, layer=2)
    with pytest.raises(ValueError, match="normalize must be one of"):
        wrap(net, normalize="imagenett")
    with pytest.raises(TypeError, match="nn.Module"):
        wrap(lambda x: x)

    class Tokens(torch.nn.Module):
        def forward(self, x):
            return x.flatten(2).transpose(1, 2)  # (B, H*W, 3): "tokens" of patch size 1

    with pytest.raises(ValueError, match="patch_size="):
        wrap(Tokens())
    assert wrap(Tokens(), patch_size=1, normalize="none")(x)[0].shape == (1, 3, 32, 48)
