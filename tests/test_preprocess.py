"""Preprocessing of the one-call API: any image file -> encoder input and AnyUp guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anyup.encoders import create, get_spec
from anyup.image import IMAGENET_MEAN, IMAGENET_STD, imagenet_normalize
from anyup.model import AnyUp
from anyup.predictor import Upsampler, output_size_for


class RecordingAnyUp(AnyUp):
    """AnyUp that records its inputs and answers with bilinear upsampling (fast, checkable)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, image, features, output_size=None, **kwargs):
        self.calls.append((image.clone(), features.clone(), output_size))
        size = output_size or tuple(image.shape[-2:])
        return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


@pytest.fixture()
def upsampler():
    torch.manual_seed(0)
    return Upsampler("efficientnet_lite0", RecordingAnyUp(), pretrained=False, input_size=64)


def _photo(h: int = 60, w: int = 90) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, (xx > w // 2) * 200], axis=-1).astype(np.uint8)


def test_resize_keeps_aspect_and_multiple(upsampler):
    img, enc_in = upsampler.prepare(_photo(300, 451))
    assert tuple(img.shape) == (3, 300, 451)
    h, w = enc_in.shape[-2:]
    assert h % 16 == 0 and w % 16 == 0 and h == 64
    assert abs(w / h - 451 / 300) < 16 / h  # aspect kept up to one multiple
    assert 0.0 <= float(enc_in.min()) and float(enc_in.max()) <= 1.0


def test_input_size_none_keeps_the_image_size():
    up = Upsampler("efficientnet_lite0", RecordingAnyUp(), pretrained=False, input_size=None)
    _, enc_in = up.prepare(_photo(64, 96))
    assert tuple(enc_in.shape[-2:]) == (64, 96)
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        Upsampler("efficientnet_lite0", RecordingAnyUp(), pretrained=False, input_size=0)


def test_exif_orientation_is_applied(tmp_path, upsampler):
    im = Image.fromarray(_photo(40, 60))  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the photo is portrait
    path = tmp_path / "rotated.png"  # PNG keeps EXIF (eXIf chunk) and the pixels exact
    im.save(path, exif=exif.tobytes())
    img, enc_in = upsampler.prepare(path)
    assert tuple(img.shape) == (3, 60, 40)
    assert enc_in.shape[-2] > enc_in.shape[-1]
    # the left column of the displayed image is the bottom row of the stored pixels (90 CW rotation)
    stored_bottom_row = torch.from_numpy(_photo(40, 60)[-1]).float() / 255
    torch.testing.assert_close(img[:, :, 0].T, stored_bottom_row, atol=1e-6, rtol=0)


def test_grey_and_rgba_become_rgb(tmp_path, upsampler):
    grey = tmp_path / "grey.png"
    Image.fromarray(_photo()[..., 0]).save(grey)
    img, _ = upsampler.prepare(grey)
    assert img.shape[0] == 3 and torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    rgba = np.dstack([_photo(), np.full(_photo().shape[:2], 255, np.uint8)])
    rgba[:, :10, 3] = 0  # transparent left strip -> white
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    img, _ = upsampler.prepare(path)
    assert img.shape[0] == 3
    assert torch.allclose(img[:, :, :10], torch.ones(3, 60, 10))
    assert torch.allclose(img[:, :, 20], torch.from_numpy(_photo()[:, 20]).float().T / 255)


def test_guidance_is_imagenet_normalised_and_encoder_gets_raw_rgb(upsampler):
    res = upsampler(_photo(64, 96))
    image, feats, out_size = upsampler.model.calls[0]
    _, enc_in = upsampler.prepare(_photo(64, 96))
    torch.testing.assert_close(image[0], imagenet_normalize(enc_in))
    torch.testing.assert_close(feats, upsampler.encoder(enc_in[None])[0])
    assert out_size == (64, 96) and tuple(res.features.shape) == (1, 112, 64, 96)
    assert tuple(res.lowres.shape) == (1, 112, 4, 6)
    torch.testing.assert_close(res.image[0], enc_in)


def test_larger_output_uses_the_original_image_for_guidance(upsampler):
    photo = _photo(128, 192)
    res = upsampler(photo, scale=2)
    _, _, out_size = upsampler.model.calls[0]
    assert out_size == (128, 192) and tuple(res.features.shape[-2:]) == (128, 192)
    torch.testing.assert_close(res.image[0], torch.from_numpy(photo).permute(2, 0, 1).float() / 255)


def test_encoders_normalise_inside():
    x = torch.rand(1, 3, 32, 32)
    clip = get_spec("clip_vitb16")
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert get_spec("siglip_vitb16").mean == (0.5, 0.5, 0.5)
    assert get_spec("dinov2_vits14").mean == IMAGENET_MEAN and get_spec("dinov2_vits14").std == IMAGENET_STD
    hed = create("vgg16_hed", pretrained=False)
    caffe = x * 255 - torch.tensor([122.67892, 116.66877, 104.00699]).view(1, 3, 1, 1)  # RGB order
    torch.testing.assert_close((x - hed.mean) / hed.std, caffe, rtol=1e-5, atol=1e-3)


def test_output_size_rules():
    assert output_size_for((64, 96)) == (64, 96)
    assert output_size_for((64, 96), scale=2.5) == (160, 240)
    assert output_size_for((64, 96), output_size=(10, 20)) == (10, 20)
    assert output_size_for((64, 96), output_size=32) == (32, 32)
    with pytest.raises(ValueError, match="either output_size or scale"):
        output_size_for((64, 96), output_size=(10, 20), scale=2)
    with pytest.raises(ValueError, match="scale must be a number"):
        output_size_for((64, 96), scale=-1)


def test_batch_groups_images_of_equal_size(upsampler):
    photos = [_photo(60, 90), _photo(60, 90) // 2, _photo(90, 60)]
    results = upsampler.predict_batch(photos)
    assert [len(c[1]) for c in upsampler.model.calls] == [2, 1]  # one batch of 2, one single
    assert [tuple(r[0].features.shape[-2:]) for r in results] == [(64, 96), (64, 96), (96, 64)]
    single = upsampler(photos[1])
    torch.testing.assert_close(single.features, results[1][0].features, rtol=1e-4, atol=1e-5)


def test_dtype_validation():
    with pytest.raises(ValueError, match="dtype must be one of"):
        Upsampler("efficientnet_lite0", RecordingAnyUp(), pretrained=False, dtype="int8")


def test_bfloat16_runs(upsampler):
    up = Upsampler("efficientnet_lite0", RecordingAnyUp(), pretrained=False, input_size=32, dtype="bfloat16")
    res = up(_photo())
    assert res.features.dtype == torch.bfloat16 and res.lowres.dtype == torch.bfloat16
    assert res.metadata()["dtype"] == "bfloat16"
