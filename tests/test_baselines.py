"""Tests of anyup.baselines: every method against a known answer, plus the shared battery."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import anyup.baselines as B
from anyup.baselines.guided import box_filter, fast_guided_filter, guided_filter
from anyup.baselines.jbu import joint_bilateral_upsample

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-init AnyUp state dict written to disk (stands in for a trained checkpoint)."""
    from anyup import AnyUp, AnyUpConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "anyup_random.pth"
    torch.save(AnyUp(AnyUpConfig()).state_dict(), path)
    return path


# The standard battery (TestBattery) runs on every registered method, driven by the registry: a method
# with offline=True is built with its defaults (or the config it cannot do without, below); one that
# needs downloads (offline=False) is skipped with that reason. A new method is covered the moment it
# is registered.
REQUIRED_CONFIG = {"anyup_checkpoint": lambda ckpt: {"checkpoint": str(ckpt)}}  # cannot be built without it
VARIANTS = {  # extra configurations of registered methods that get the battery too
    "jbu_lab": ("jbu", {"guidance": "lab", "sigma_range": 0.2}),
    "guided_filter_sub1": ("guided_filter", {"subsample": 1}),
    "guided_filter_rgb": ("guided_filter", {"guide": "rgb", "subsample": 2}),
}


def _battery_params() -> list:
    params = []
    for name in B.list_methods():
        if B.get_spec(name).offline:
            params.append(name)
        else:
            reason = f"{name}: offline=False (needs downloaded weights / torch.hub code); not run offline"
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=reason)))
    return params + list(VARIANTS)


BATTERY = _battery_params()


def _battery_config(key: str, checkpoint: Path) -> tuple[str, dict]:
    if key in VARIANTS:
        return VARIANTS[key]
    return key, REQUIRED_CONFIG[key](checkpoint) if key in REQUIRED_CONFIG else {}


@pytest.fixture(params=BATTERY)
def method(request, checkpoint):
    name, cfg = _battery_config(request.param, checkpoint)
    return B.create(name, cfg)


def test_battery_covers_every_registered_method():
    ids = [p if isinstance(p, str) else p.values[0] for p in BATTERY]
    assert set(B.list_methods()) <= set(ids)
    assert {"nearest", "jbu", "guided_filter", "anyup", "anyup_checkpoint"} <= {
        p for p in BATTERY if isinstance(p, str)
    }  # offline ones really run
    assert all(VARIANTS[v][0] in B.list_methods() for v in VARIANTS)


def _inputs(b=2, c=5, hw=(6, 7), image_hw=(30, 35), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, *image_hw, generator=g)
    feats = torch.randn(b, c, *hw, generator=g).to(dtype)
    return image, feats


# ----------------------------------------------------------------------------- registry
class TestRegistry:
    def test_lists_all_methods(self):
        names = B.list_methods()
        for n in [
            "nearest",
            "bilinear",
            "bicubic",
            "jbu",
            "guided_filter",
            "highres",
            "anyup",
            "anyup_checkpoint",
            "featup",
            "jafar",
            "loftup",
            "naf",
        ]:
            assert n in names

    def test_unknown_name_lists_choices(self):
        with pytest.raises(ValueError, match="unknown upsampling method 'bilinar'.*bilinear"):
            B.create("bilinar")

    def test_unknown_config_field(self):
        with pytest.raises(ValueError, match=r"unknown config field\(s\) \['sigma'\]"):
            B.create("jbu", {"sigma": 1.0})

    def test_config_instance_and_type_error(self):
        from anyup.baselines.jbu import JBUConfig

        up = B.create("jbu", JBUConfig(radius=1))
        assert up.config.radius == 1 and up.name == "jbu"
        with pytest.raises(TypeError, match="JBUConfig"):
            B.create("jbu", 3)

    def test_bad_config_values(self):
        with pytest.raises(ValueError, match="sigma_range"):
            B.create("jbu", {"sigma_range": 0.0})
        with pytest.raises(ValueError, match="guidance must be one of"):
            B.create("jbu", {"guidance": "hsv"})
        with pytest.raises(ValueError, match="'grey' or 'rgb'"):
            B.create("guided_filter", {"guide": "lab"})

    def test_available_offline_methods(self):
        assert B.available("bilinear") == (True, "")
        ok, reason = B.available("anyup_checkpoint")
        assert not ok and "checkpoint=PATH" in reason
        with pytest.raises(ValueError, match="unknown upsampling method"):
            B.available("nope")


# ----------------------------------------------------------------------------- shared battery
class TestBattery:
    @pytest.mark.parametrize("out", [(15, 23), (31, 8), (3, 2), (6, 7)])
    def test_shapes_odd_non_square_and_batch(self, method, out):
        image, feats = _inputs()
        y = method(image, feats, out)
        assert y.shape == (2, 5, *out)
        assert torch.isfinite(y).all()

    def test_output_size_forms(self, method):
        image, feats = _inputs(b=1)
        assert method(image, feats, 12).shape == (1, 5, 12, 12)
        assert method(image, feats, None).shape == (1, 5, 30, 35)
        assert method(image, feats, torch.Size([9, 4])).shape == (1, 5, 9, 4)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
    def test_dtype_preserved(self, method, dtype):
        image, feats = _inputs(b=1, dtype=dtype)
        y = method(image, feats, (13, 11))
        assert y.dtype == dtype

    def test_constant_features_stay_constant(self, method):
        image, _ = _inputs(b=2)
        feats = torch.full((2, 4, 6, 7), 0.0)
        feats[:, 0] = 3.25
        feats[:, 1] = -1.5
        y = method(image, feats, (17, 19))
        expected = feats[:, :, :1, :1].expand_as(y)
        torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)

    def test_batch_items_independent(self, method):
        image, feats = _inputs(b=2)
        y = method(image, feats, (14, 16))
        y1 = method(image[1:], feats[1:], (14, 16))
        torch.testing.assert_close(y[1:], y1, atol=1e-5, rtol=1e-5)

    def test_non_contiguous_input(self, method):
        image, feats = _inputs(b=1)
        feats_nc = feats.transpose(2, 3).contiguous().transpose(2, 3)
        assert not feats_nc.is_contiguous()
        torch.testing.assert_close(method(image, feats_nc, (9, 10)), method(image, feats, (9, 10)))

    def test_error_rank(self, method):
        image, feats = _inputs(b=1)
        with pytest.raises(ValueError, match=r"features must be \(B, C, h, w\), got shape \(5, 6, 7\)"):
            method(image, feats[0], (8, 8))
        with pytest.raises(ValueError, match=r"image must be \(B, 3, H, W\), got shape \(1, 1, 30, 35\)"):
            method(image[:, :1], feats, (8, 8))

    def test_error_batch_mismatch(self, method):
        image, feats = _inputs(b=2)
        with pytest.raises(ValueError, match="image has batch 1, features have batch 2"):
            method(image[:1], feats, (8, 8))

    @pytest.mark.parametrize("bad", [0, -3, (8, 0), (8,), (1, 2, 3), "8x8", (8.0, 8.0), True])
    def test_error_output_size(self, method, bad):
        image, feats = _inputs(b=1)
        with pytest.raises(ValueError, match=r"output_size must be .*" + re_escape(repr(bad))):
            method(image, feats, bad)


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


# ----------------------------------------------------------------------------- interpolation
class TestInterpolation:
    def test_bilinear_matches_torch(self):
        image, feats = _inputs()
        y = B.create("bilinear")(image, feats, (25, 33))
        ref = F.interpolate(feats, size=(25, 33), mode="bilinear", align_corners=False)
        torch.testing.assert_close(y, ref)

    def test_bilinear_downsampling_is_antialiased(self):
        image, feats = _inputs(hw=(40, 40))
        y = B.create("bilinear")(image, feats, (10, 10))
        ref = F.interpolate(feats, size=(10, 10), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(y, ref)
        y2 = B.create("bilinear", {"antialias": False})(image, feats, (10, 10))
        torch.testing.assert_close(y2, F.interpolate(feats, size=(10, 10), mode="bilinear", align_corners=False))

    def test_nearest_matches_torch(self):
        image, feats = _inputs()
        y = B.create("nearest")(image, feats, (25, 33))
        torch.testing.assert_close(y, F.interpolate(feats, size=(25, 33), mode="nearest-exact"))
        # integer factor: identical to plain "nearest" too, and every output is an input value
        y2 = B.create("nearest")(image, feats, (18, 21))
        torch.testing.assert_close(y2, F.interpolate(feats, size=(18, 21), mode="nearest"))

    def test_bicubic_matches_torch(self):
        image, feats = _inputs()
        y = B.create("bicubic")(image, feats, (25, 33))
        torch.testing.assert_close(y, F.interpolate(feats, size=(25, 33), mode="bicubic", align_corners=False))


# ----------------------------------------------------------------------------- JBU
def _spatial_only_reference(feats: np.ndarray, out: tuple[int, int], radius: int, sigma: float) -> np.ndarray:
    """Separable windowed-Gaussian resampling written independently: (C, h, w) -> (C, H, W)."""

    def axis_matrix(n_out: int, n_in: int) -> np.ndarray:
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            u = (i + 0.5) * n_in / n_out - 0.5
            c = min(max(int(math.floor(u + 0.5)), 0), n_in - 1)
            for q in range(max(0, c - radius), min(n_in, c + radius + 1)):
                m[i, q] = math.exp(-((u - q) ** 2) / (2 * sigma**2))
        return m / m.sum(1, keepdims=True)

    ay, ax = axis_matrix(out[0], feats.shape[1]), axis_matrix(out[1], feats.shape[2])
    return np.einsum("ih,chw,jw->cij", ay, feats, ax)


def _jbu_naive(g_hr, g_lr, feats, radius, ss, sr):
    """Direct per-pixel evaluation of the JBU sum, single image, numpy float64."""
    C, h, w = feats.shape
    _, H, W = g_hr.shape
    out = np.zeros((C, H, W))
    for i in range(H):
        u = (i + 0.5) * h / H - 0.5
        cy = min(max(int(math.floor(u + 0.5)), 0), h - 1)
        for j in range(W):
            v = (j + 0.5) * w / W - 0.5
            cx = min(max(int(math.floor(v + 0.5)), 0), w - 1)
            num, den = np.zeros(C), 0.0
            for qy in range(max(0, cy - radius), min(h, cy + radius + 1)):
                for qx in range(max(0, cx - radius), min(w, cx + radius + 1)):
                    d2 = ((g_hr[:, i, j] - g_lr[:, qy, qx]) ** 2).sum()
                    wgt = math.exp(-((u - qy) ** 2 + (v - qx) ** 2) / (2 * ss**2) - d2 / (2 * sr**2))
                    num += wgt * feats[:, qy, qx]
                    den += wgt
            out[:, i, j] = num / den
    return out


class TestJBU:
    @pytest.mark.parametrize("out", [(20, 27), (7, 5), (12, 14)])
    def test_infinite_range_sigma_is_spatial_filter(self, out):
        image, feats = _inputs(b=1, c=3, hw=(6, 7), dtype=torch.float64)
        up = B.create("jbu", {"sigma_range": math.inf, "radius": 2, "sigma_spatial": 0.8})
        y = up(image, feats, out)[0].numpy()
        ref = _spatial_only_reference(feats[0].numpy(), out, radius=2, sigma=0.8)
        np.testing.assert_allclose(y, ref, atol=1e-10)

    def test_constant_image_is_spatial_filter(self):
        _, feats = _inputs(b=2, c=4, hw=(5, 6), dtype=torch.float64)
        image = torch.full((2, 3, 40, 48), 0.3, dtype=torch.float64)
        y = B.create("jbu", {"sigma_range": 0.01, "radius": 1, "sigma_spatial": 1.5})(image, feats, (23, 29))
        for b in range(2):
            ref = _spatial_only_reference(feats[b].numpy(), (23, 29), radius=1, sigma=1.5)
            np.testing.assert_allclose(y[b].numpy(), ref, atol=1e-10)

    @pytest.mark.parametrize("radius,out", [(2, (11, 13)), (1, (8, 9)), (0, (6, 10))])
    def test_matches_naive_formula(self, radius, out):
        g = torch.Generator().manual_seed(3)
        g_hr = torch.rand(1, 3, *out, generator=g, dtype=torch.float64)
        g_lr = torch.rand(1, 3, 4, 5, generator=g, dtype=torch.float64)
        feats = torch.randn(1, 6, 4, 5, generator=g, dtype=torch.float64)
        y = joint_bilateral_upsample(g_hr, g_lr, feats, out, radius, 0.9, 0.25)
        ref = _jbu_naive(g_hr[0].numpy(), g_lr[0].numpy(), feats[0].numpy(), radius, 0.9, 0.25)
        np.testing.assert_allclose(y[0].numpy(), ref, atol=1e-10)

    def test_tiny_range_sigma_does_not_underflow(self):
        g = torch.Generator().manual_seed(1)
        g_hr, g_lr = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 4, 4, generator=g)
        y = joint_bilateral_upsample(g_hr, g_lr, torch.randn(1, 2, 4, 4, generator=g), (16, 16), 2, 1.0, 1e-4)
        assert torch.isfinite(y).all()

    def test_banding_does_not_change_result(self):
        image, feats = _inputs(b=2, c=7, hw=(9, 8))
        big = B.create("jbu")(image, feats, (37, 29))
        small = B.create("jbu", {"max_memory": 1})(image, feats, (37, 29))  # one low-res row per band
        torch.testing.assert_close(big, small)

    def test_output_is_convex_combination(self):
        image, feats = _inputs(b=1, c=3)
        y = B.create("jbu")(image, feats, (40, 40))
        lo = feats.amin(dim=(2, 3), keepdim=True)
        hi = feats.amax(dim=(2, 3), keepdim=True)
        assert (y >= lo - 1e-5).all() and (y <= hi + 1e-5).all()

    def test_edge_preserving(self):
        """A two-colour image with a step edge: JBU keeps the feature step sharper than bilinear."""
        h, w, s = 8, 8, 8
        img = torch.zeros(1, 3, h * s, w * s)
        img[..., :, : w * s // 2 + 3] = 1.0  # edge 3 px right of the low-res cell boundary
        from anyup.image import imagenet_normalize

        image = imagenet_normalize(img)
        rgb_lr = F.interpolate(img, size=(h, w), mode="area")
        feats = rgb_lr[:, :1] * 2 - 1  # features follow the image
        target = img[:, :1] * 2 - 1
        err_jbu = (B.create("jbu", {"sigma_range": 0.05})(image, feats, (h * s, w * s)) - target).abs().mean()
        err_bil = (B.create("bilinear")(image, feats, (h * s, w * s)) - target).abs().mean()
        assert err_jbu < 0.6 * err_bil

    @pytest.mark.slow
    def test_2k_output(self):
        image, feats = _inputs(b=1, c=4, hw=(32, 32), image_hw=(256, 256))
        y = B.create("jbu", {"max_memory": 64 * 2**20})(image, feats, (2048, 2048))
        assert y.shape == (1, 4, 2048, 2048) and torch.isfinite(y).all()
        # banding changes nothing: bands of a different height give the same output
        ref = B.create("jbu", {"max_memory": 8 * 2**20})(image, feats, (2048, 2048))
        torch.testing.assert_close(y, ref)


# ----------------------------------------------------------------------------- guided filter
class TestGuidedFilter:
    @pytest.mark.parametrize("r", [0, 1, 3, 6])
    def test_box_filter_matches_avg_pool(self, r):
        x = torch.randn(2, 3, 17, 23, dtype=torch.float64)
        ref = F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False) if r else x
        torch.testing.assert_close(box_filter(x, r), ref)

    def test_box_filter_radius_beyond_image(self):
        x = torch.randn(1, 1, 5, 4, dtype=torch.float64)
        torch.testing.assert_close(box_filter(x, 50), x.mean().expand_as(x))

    @pytest.mark.parametrize("guide", ["grey", "rgb"])
    def test_huge_eps_gives_box_of_box_mean(self, guide):
        image, feats = _inputs(b=2, c=3, dtype=torch.float64)
        r = 2
        up = B.create("guided_filter", {"eps": 1e12, "radius": r, "guide": guide, "subsample": 1})
        y = up(image, feats, (30, 35))
        p = F.interpolate(feats, size=(30, 35), mode="bilinear", align_corners=False)
        box = lambda t: F.avg_pool2d(t, 2 * r + 1, stride=1, padding=r, count_include_pad=False)  # noqa: E731
        torch.testing.assert_close(y, box(box(p)), atol=1e-8, rtol=1e-8)

    def test_guide_equal_to_input_and_tiny_eps_reproduces_input(self):
        g = torch.Generator().manual_seed(0)
        p = torch.rand(2, 1, 20, 24, generator=g, dtype=torch.float64)
        y = guided_filter(p, p, radius=2, eps=1e-12)
        torch.testing.assert_close(y, p, atol=1e-6, rtol=0)
        # colour guide whose first channel is the input, others independent: same
        guide = torch.cat([p, torch.rand(2, 2, 20, 24, generator=g, dtype=torch.float64)], 1)
        torch.testing.assert_close(guided_filter(guide, p, radius=2, eps=1e-12), p, atol=1e-5, rtol=0)

    def test_chunking_and_subsample_one_are_exact(self):
        g = torch.Generator().manual_seed(0)
        guide = torch.rand(1, 3, 21, 19, generator=g)
        src = torch.randn(1, 9, 21, 19, generator=g)
        a = guided_filter(guide, src, 3, 1e-2)
        torch.testing.assert_close(guided_filter(guide, src, 3, 1e-2, max_memory=1), a)
        torch.testing.assert_close(fast_guided_filter(guide, src, 3, 1e-2, subsample=1), a)

    def test_fast_guided_filter_close_to_exact_on_smooth_input(self):
        g = torch.Generator().manual_seed(0)
        guide = F.interpolate(torch.rand(1, 1, 8, 8, generator=g), size=(64, 64), mode="bilinear")
        src = F.interpolate(torch.randn(1, 4, 8, 8, generator=g), size=(64, 64), mode="bilinear")
        exact = guided_filter(guide, src, 8, 1e-3)
        fast = fast_guided_filter(guide, src, 8, 1e-3, subsample=2)
        assert (fast - exact).abs().mean() < 0.06 * src.abs().mean()  # measured 0.041

    def test_bad_guide_shape(self):
        with pytest.raises(ValueError, match=r"guide must be \(B, 1\|3, H, W\)"):
            guided_filter(torch.rand(1, 2, 5, 5), torch.rand(1, 1, 5, 5), 1, 0.1)


# ----------------------------------------------------------------------------- AnyUp
class TestAnyUp:
    @pytest.mark.slow  # measured 15s in the fast tier (2 busy cores)
    def test_checkpoint_matches_direct_model(self, checkpoint):
        import anyup

        image, feats = _inputs(b=1, c=6, hw=(4, 5), image_hw=(24, 28))
        up = B.create("anyup_checkpoint", {"checkpoint": str(checkpoint)})
        ref = anyup.load(str(checkpoint))(image, feats, (24, 28))
        torch.testing.assert_close(up(image, feats, (24, 28)), ref)

    def test_checkpoint_errors(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="nothere.pth"):
            B.create("anyup_checkpoint", {"checkpoint": str(tmp_path / "nothere.pth")})
        with pytest.raises(ValueError, match="checkpoint=PATH"):
            B.create("anyup_checkpoint")

    def test_published_weights_unavailable_is_method_unavailable(self, monkeypatch, tmp_path):
        import anyup.weights as W

        monkeypatch.delenv("ANYUP_WEIGHTS_DIR", raising=False)
        monkeypatch.setattr(W, "cache_dir", lambda: tmp_path)
        monkeypatch.setattr(W, "_download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
        ok, reason = B.available("anyup", {"weights": "anyup_multi_backbone"})
        assert not ok and reason.startswith("anyup: weights 'anyup_multi_backbone' unavailable")
        assert B.available("anyup") == (True, "")  # the shipped default needs no network
        with pytest.raises(B.MethodUnavailable):
            B.create("anyup", {"weights": "anyup_paper"})

    def test_published_weights(self, monkeypatch):
        if not (SHARED_WEIGHTS / "anyup_multi_backbone.pth").is_file():
            if os.environ.get("CI") == "true":
                pytest.fail(f"shared weights missing at {SHARED_WEIGHTS}")
            pytest.skip(f"shared weights not found at {SHARED_WEIGHTS}")
        monkeypatch.setenv("ANYUP_WEIGHTS_DIR", str(SHARED_WEIGHTS))
        up = B.create("anyup", {"weights": "anyup_multi_backbone"})
        image, _ = _inputs(b=1, image_hw=(28, 28))
        feats = torch.randn(1, 8, 2, 2)
        y = up(image, feats, (28, 28))
        lo, hi = feats.amin((2, 3), keepdim=True), feats.amax((2, 3), keepdim=True)
        assert (y >= lo - 1e-4).all() and (y <= hi + 1e-4).all()


# ----------------------------------------------------------------------------- high-res backbone
class TestHighRes:
    @pytest.fixture(scope="class")
    def encoder(self):
        from anyup import encoders

        torch.manual_seed(0)
        return encoders.create("efficientnet_lite0", pretrained=False)

    @pytest.mark.slow  # measured 14s in the fast tier (2 busy cores)
    def test_runs_encoder_at_factor_and_resizes(self, encoder):
        up = B.create("highres", {"encoder": encoder, "factor": 2.0})
        s, c = encoder.info.stride, encoder.info.channels
        assert up.input_size((3, 4)) == (6 * s, 8 * s)
        image, _ = _inputs(b=2, image_hw=(3 * s, 4 * s))
        feats = torch.randn(2, c, 3, 4)
        y = up(image, feats, (40, 50))
        assert y.shape == (2, c, 40, 50) and y.dtype == torch.float32
        # equals running the encoder by hand on the 2x image
        from anyup.image import imagenet_denormalize

        x = F.interpolate(
            imagenet_denormalize(image).clamp(0, 1), size=(6 * s, 8 * s), mode="bilinear", align_corners=False
        ).clamp(0, 1)
        ref = F.interpolate(encoder(x)[0], size=(40, 50), mode="bilinear", align_corners=False)
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)

    def test_channel_mismatch_names_both(self, encoder):
        up = B.create("highres", {"encoder": encoder})
        image, _ = _inputs(b=1)
        with pytest.raises(ValueError, match=rf"features have 5 channels but encoder .* gives {encoder.info.channels}"):
            up(image, torch.randn(1, 5, 2, 2), (8, 8))

    def test_max_side_caps_input(self, encoder):
        up = B.create("highres", {"encoder": encoder, "factor": 4.0, "max_side": 256})
        h, w = up.input_size((16, 8))
        assert max(h, w) <= 256 and h % encoder.info.multiple == 0

    def test_bad_encoder_type(self):
        with pytest.raises(TypeError, match="encoder name or an anyup Encoder"):
            B.create("highres", {"encoder": 3})


# ----------------------------------------------------------------------------- peers (torch.hub)
FAKE_HUBCONF = """
import torch
import torch.nn.functional as F
dependencies = ["torch"]

class _Up(torch.nn.Module):
    def __init__(self, scale=None):
        super().__init__()
        self.scale = scale
    def forward(self, a, b, size=None):
        return a, b, size

class _FeatsImage(torch.nn.Module):  # LoftUp / FeatUp convention: (features, image) -> image size / 16x
    def __init__(self, scale=None):
        super().__init__()
        self.scale = scale
    def forward(self, feats, image):
        assert image.shape[1] == 3
        size = image.shape[-2:] if self.scale is None else [s * self.scale for s in feats.shape[-2:]]
        return F.interpolate(feats, size=tuple(size), mode="bilinear", align_corners=False)

class _ImageFeatsSize(torch.nn.Module):  # JAFAR / NAF convention
    def forward(self, image, feats, size):
        assert image.shape[1] == 3
        return F.interpolate(feats, size=tuple(size), mode="bilinear", align_corners=False)

class _FeatUpModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.upsampler = _FeatsImage(scale=16)

def featup_like(use_norm=True):
    return _FeatUpModel()

def loftup_like(pretrained=True):
    return _FeatsImage()

def jafar_like(backbone_name="x", device="cpu"):
    return _ImageFeatsSize(), torch.nn.Identity()

def naf_like(pretrained=True, device="cpu"):
    return _ImageFeatsSize()

def broken(**kwargs):
    raise ImportError("No module named 'natten'")
"""


class TestPeers:
    @pytest.fixture
    def fake_repo(self, tmp_path) -> Path:
        (tmp_path / "hubconf.py").write_text(FAKE_HUBCONF)
        return tmp_path

    @pytest.mark.parametrize(
        "name,entry",
        [("featup", "featup_like"), ("loftup", "loftup_like"), ("jafar", "jafar_like"), ("naf", "naf_like")],
    )
    def test_local_repo_calling_conventions(self, fake_repo, name, entry):
        up = B.create(name, {"repo_dir": str(fake_repo), "entry": entry, "kwargs": {}})
        image, feats = _inputs(b=2, c=3, hw=(4, 5), image_hw=(32, 40))
        y = up(image, feats, (20, 25))
        assert y.shape == (2, 3, 20, 25)
        # the fake peers are bilinear (via whatever size they produce, then resized): constants stay constant
        const = torch.ones(2, 3, 4, 5)
        torch.testing.assert_close(up(image, const, (9, 7)), torch.ones(2, 3, 9, 7))

    def test_offline_is_unavailable_fast_with_reason(self, monkeypatch, tmp_path):
        import anyup.baselines.peers as P

        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
        monkeypatch.setattr(P, "github_reachable", lambda timeout=3.0: (False, "gaierror: no DNS"))
        for name, repo in [
            ("featup", "mhamilton723/FeatUp"),
            ("jafar", "PaulCouairon/JAFAR"),
            ("loftup", "andrehuang/loftup"),
            ("naf", "valeoai/NAF"),
        ]:
            ok, reason = B.available(name)
            assert not ok
            assert reason.startswith(f"{name}: torch.hub repo {repo} is not cached") and "repo_dir=PATH" in reason
            assert "\n" not in reason

    def test_cached_hub_checkout_is_used(self, monkeypatch, tmp_path):
        import anyup.baselines.peers as P

        cached = tmp_path / "valeoai_NAF_main"
        cached.mkdir()
        (cached / "hubconf.py").write_text(FAKE_HUBCONF)
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
        monkeypatch.setattr(P, "github_reachable", lambda timeout=3.0: pytest.fail("must not probe the network"))
        up = B.create("naf", {"entry": "naf_like"})
        image, feats = _inputs(b=1, c=2)
        assert up(image, feats, (11, 12)).shape == (1, 2, 11, 12)

    def test_entry_point_failure_is_unavailable(self, fake_repo):
        with pytest.raises(B.MethodUnavailable, match="naf: torch.hub.load.*ImportError: No module named 'natten'"):
            B.create("naf", {"repo_dir": str(fake_repo), "entry": "broken", "kwargs": {}})

    def test_repo_dir_without_hubconf(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="has no hubconf.py"):
            B.create("jafar", {"repo_dir": str(tmp_path)})

    def test_github_probe_returns_quickly_when_unresolvable(self, monkeypatch):
        import anyup.baselines.peers as P

        def refuse(*args, **kwargs):
            raise OSError("Name or service not known")

        monkeypatch.setattr(P.socket, "create_connection", refuse)
        assert P.github_reachable(0.5) == (False, "OSError: Name or service not known")
