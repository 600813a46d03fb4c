"""Protocols (hash stability), probe losses, probe training and the feature cache."""

from __future__ import annotations

import json
import math

import pytest
import torch

from anyup.eval.features import FeatureCache, encode, encoder_fingerprint
from anyup.eval.probes import (
    ProbeSample,
    UpsampledFeatures,
    angular_loss,
    decode_depth,
    evaluate_probe,
    gradient_loss,
    sig_loss,
    train_probe,
)
from anyup.eval.protocols import PROTOCOLS, Protocol, get_protocol, parse_overrides


class TestProtocol:
    def test_hash_is_stable_and_documented(self):
        p = get_protocol("offline")
        # hash = first 12 hex of sha256(canonical JSON); recomputing from the JSON gives the same
        import hashlib

        assert p.hash == hashlib.sha256(p.canonical_json().encode()).hexdigest()[:12]
        assert len(p.hash) == 12 and int(p.hash, 16) >= 0
        assert get_protocol("offline").hash == p.hash
        assert Protocol(**{**json.loads(p.canonical_json()), "notes": "x"}).hash == p.hash  # round trip, notes ignored

    def test_preset_hashes_are_pinned(self):
        # Reports and docs/readme/eval.md quote these; editing a preset must bump its version
        # and update the docs (this test then fails on purpose).
        assert get_protocol("offline").hash == "dadda62aa3cf"
        assert get_protocol("jafar").hash == "3c8505276fbc"
        assert get_protocol("probe3d").hash == "4eb70c7ae1af"

    def test_hash_changes_on_edit(self):
        p = get_protocol("offline")
        assert p.replace(epochs=p.epochs + 1).hash != p.hash
        assert p.replace(seeds=(0, 1, 2)).hash != p.hash
        assert p.replace(boundary_width=p.boundary_width + 1).hash != p.hash
        assert p.replace(notes="different words").hash == p.hash
        assert len({q.hash for q in PROTOCOLS.values()}) == len(PROTOCOLS)

    def test_presets(self):
        j = get_protocol("jafar")
        assert (j.image_size, j.lr, j.epochs, j.batch_size) == (448, 5e-4, 20, 2)
        p3 = get_protocol("probe3d")
        assert (p3.image_size, p3.epochs, p3.warmup_epochs, p3.depth_sig_lambda) == (480, 10, 1.5, 0.85)
        assert len(get_protocol("offline").seeds) >= 2

    def test_validation_and_overrides(self):
        with pytest.raises(ValueError, match="unknown protocol"):
            get_protocol("nope")
        with pytest.raises(ValueError, match="epochs"):
            get_protocol("offline", epochs=0)
        with pytest.raises(ValueError, match="unknown protocol field"):
            get_protocol("offline").replace(colour="red")
        o = parse_overrides(["epochs=3", "seeds=4,5", "hflip=true", "lr=0.1", "max_train_images=none"])
        assert o == {"epochs": 3, "seeds": (4, 5), "hflip": True, "lr": 0.1, "max_train_images": None}
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_overrides(["epochs"])
        with pytest.raises(ValueError, match="bad value"):
            parse_overrides(["epochs=many"])


class TestLosses:
    def test_sig_loss_is_scale_invariant_with_lambda_1(self):
        gt = torch.rand(2, 8, 8) + 0.5
        valid = torch.ones_like(gt, dtype=torch.bool)
        assert float(sig_loss(gt * 3.0, gt, valid, lam=1.0, eps=0.0)) == pytest.approx(0.0, abs=1e-3)
        # lambda 0.85 keeps 15% of the squared mean log error: sqrt(0.15) * log(3)
        assert float(sig_loss(gt * 3.0, gt, valid, lam=0.85, eps=0.0)) == pytest.approx(
            math.sqrt(0.15) * math.log(3), rel=1e-4
        )

    def test_gradient_loss_zero_for_scaled_prediction(self):
        gt = torch.rand(1, 16, 16) + 0.5
        valid = torch.ones_like(gt, dtype=torch.bool)
        assert float(gradient_loss(gt * 2.0, gt, valid, eps=0.0)) == pytest.approx(0.0, abs=1e-5)
        assert float(gradient_loss(torch.ones_like(gt), gt, valid)) > 0

    def test_angular_loss(self):
        gt = torch.zeros(1, 3, 2, 2)
        gt[:, 2] = 1
        pred = torch.zeros(1, 3, 2, 2)
        pred[:, 0] = 1  # 90 degrees everywhere
        valid = torch.ones(1, 2, 2, dtype=torch.bool)
        assert float(angular_loss(pred, gt, valid)) == pytest.approx(math.pi / 2, abs=1e-3)
        assert float(angular_loss(gt, gt, valid)) == pytest.approx(0.0, abs=0.02)
        four = torch.cat([pred, torch.zeros(1, 1, 2, 2)], 1)
        assert torch.isfinite(angular_loss(four, gt, valid))

    def test_decode_depth_range(self):
        p = get_protocol("offline")
        d = decode_depth(torch.randn(2, p.depth_bins, 3, 3) * 10, p)
        assert float(d.min()) >= p.min_depth and float(d.max()) <= p.max_depth
        d1 = decode_depth(torch.zeros(1, 1, 2, 2), p.replace(depth_bins=1))
        assert float(d1[0, 0, 0]) == pytest.approx((p.min_depth + p.max_depth) / 2)


def _separable_samples(n: int, size: int = 16, seed: int = 0) -> list[ProbeSample]:
    """Low-res features whose channel 0/1 says the class of each 4x4 cell; labels follow the cells."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        cls = (torch.rand(size // 4, size // 4, generator=g) < 0.5).long()  # (4, 4)
        feats = torch.stack([cls.float() * 2 - 1, 1 - cls.float() * 2, torch.randn(4, 4, generator=g) * 0.1])
        seg = cls.repeat_interleave(4, 0).repeat_interleave(4, 1)  # (size, size)
        depth = 1.0 + 2.0 * seg.float()
        normals = torch.zeros(3, size, size)
        normals[2] = 1.0
        normals[0] = seg.float() - 0.5
        image = (torch.rand(3, size, size, generator=g) * 255).to(torch.uint8)
        out.append(
            ProbeSample(
                name=str(i),
                image=image,
                features=feats,
                seg=seg,
                depth=depth,
                depth_valid=torch.ones(size, size, dtype=torch.bool),
                normals=normals,
                normals_valid=torch.ones(size, size, dtype=torch.bool),
            )
        )
    return out


def _nearest(image, features, size):
    return torch.nn.functional.interpolate(features, size=size, mode="nearest-exact")


PROTO = get_protocol(
    "offline", epochs=30, min_steps=0, batch_size=4, lr=0.05, seeds=(0,), depth_bins=16, boundary_width=1
)


class TestTraining:
    def test_separable_segmentation_reaches_full_accuracy(self):
        train, evals = _separable_samples(8), _separable_samples(4, seed=1)
        tr, ev = UpsampledFeatures(_nearest, train), UpsampledFeatures(_nearest, evals)
        probe = train_probe("seg", tr, PROTO, seed=0, num_classes=2)
        m = evaluate_probe("seg", probe, ev, PROTO, num_classes=2)
        assert m["pixel_acc"] > 0.99 and m["miou"] > 0.98 and m["boundary_miou"] > 0.98
        assert tr.calls == 8  # each training image upsampled once, then served from memory

    def test_deterministic_for_a_seed(self):
        train = _separable_samples(6)
        w = []
        for _ in range(2):
            probe = train_probe(
                "seg", UpsampledFeatures(_nearest, train), PROTO.replace(epochs=3), seed=7, num_classes=2
            )
            w.append(probe.weight.detach().clone())
        torch.testing.assert_close(w[0], w[1], atol=0, rtol=0)
        other = train_probe("seg", UpsampledFeatures(_nearest, train), PROTO.replace(epochs=3), seed=8, num_classes=2)
        assert not torch.equal(other.weight, w[0])

    def test_joint_training_equals_separate(self):
        from anyup.eval.probes import evaluate_probes, train_probes

        train = _separable_samples(6)
        p = PROTO.replace(epochs=2)
        joint = train_probes(["seg", "depth", "normals"], UpsampledFeatures(_nearest, train), p, seed=3, num_classes=2)
        for task in ("seg", "depth", "normals"):
            alone = train_probe(task, UpsampledFeatures(_nearest, train), p, seed=3, num_classes=2)
            torch.testing.assert_close(joint[task].weight, alone.weight, atol=1e-5, rtol=1e-4)  # float rounding only
        ev = UpsampledFeatures(_nearest, _separable_samples(2, seed=1))
        both = evaluate_probes(joint, ev, p, num_classes=2)
        assert both["seg"] == evaluate_probe("seg", joint["seg"], ev, p, num_classes=2)

    def test_cache_budget_does_not_change_results(self):
        train = _separable_samples(6)
        p = PROTO.replace(epochs=2, hflip=False)
        a = train_probe("seg", UpsampledFeatures(_nearest, train, budget_bytes=0), p, seed=1, num_classes=2)
        b = train_probe("seg", UpsampledFeatures(_nearest, train), p, seed=1, num_classes=2)
        torch.testing.assert_close(a.weight, b.weight, atol=0, rtol=0)

    def test_depth_and_normals_probes_learn(self):
        train, evals = _separable_samples(8), _separable_samples(4, seed=1)
        tr, ev = UpsampledFeatures(_nearest, train), UpsampledFeatures(_nearest, evals)
        # SigLoss keeps only 15% of the global-scale error, so metric scale needs more steps
        long = PROTO.replace(epochs=100, batch_size=8)
        d = evaluate_probe("depth", train_probe("depth", tr, long, seed=0), ev, long)
        assert d["delta1"] > 0.9 and d["abs_rel"] < 0.15 and d["rmse_aligned"] <= d["rmse"] + 1e-6
        n = evaluate_probe("normals", train_probe("normals", tr, PROTO, seed=0), ev, PROTO)
        assert n["mean_angle"] < 10 and n["within_30"] > 0.95

    def test_min_steps_extends_tiny_training_sets(self):
        class Counting(UpsampledFeatures):
            gets = 0

            def get(self, *args, **kwargs):
                Counting.gets += 1
                return super().get(*args, **kwargs)

        data = Counting(_nearest, _separable_samples(2))
        train_probe("seg", data, PROTO.replace(epochs=1, batch_size=4, min_steps=5), seed=0, num_classes=2)
        assert Counting.gets == 5
        Counting.gets = 0
        train_probe("seg", data, PROTO.replace(epochs=3, batch_size=1, min_steps=5), seed=0, num_classes=2)
        assert Counting.gets == 6  # 3 epochs x 2 steps already exceed min_steps

    def test_lowres_probe_variants(self):
        train, evals = _separable_samples(8), _separable_samples(4, seed=1)
        low = UpsampledFeatures(None, train)
        for variant in ("logits", "labels"):
            probe = train_probe("seg", low, PROTO, seed=0, num_classes=2, lowres=variant)
            m = evaluate_probe("seg", probe, UpsampledFeatures(_nearest, evals), PROTO, num_classes=2)
            assert m["pixel_acc"] > 0.99, variant
        with pytest.raises(ValueError, match="lowres"):
            train_probe("seg", low, PROTO, seed=0, num_classes=2, lowres="bogus")

    def test_flips_need_flipped_features_and_negate_normals(self):
        from anyup.eval.probes import targets

        s = _separable_samples(1)[0]
        t = targets([s], "normals", [True])
        torch.testing.assert_close(t["normals"][0, 0], -s.normals[0].flip(-1))
        with pytest.raises(ValueError, match="flipped"):
            UpsampledFeatures(_nearest, [s]).get([0], [True])


class _TinyEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 4, stride=4)
        self.info = type("Info", (), {"name": "tiny", "multiple": 4, "stride": 4, "channels": 5})()
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        return [self.conv(x)]  # the encoder contract: one map per layer


def test_feature_cache_roundtrip(tmp_path):
    torch.manual_seed(0)
    enc = _TinyEncoder()
    images = [(torch.rand(3, 16, 16) * 255).to(torch.uint8) for _ in range(3)] + [
        (torch.rand(3, 8, 12) * 255).to(torch.uint8)
    ]
    cache = FeatureCache(tmp_path)
    a = encode(enc, images, cache)
    assert enc.calls == 4 and cache.misses == 4
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 4 and not list(tmp_path.rglob("*.anyup-tmp-*"))
    b = encode(enc, images, cache)
    assert enc.calls == 4 and cache.hits == 4
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert a[3].shape == (5, 2, 3)
    # other weights -> other fingerprint -> miss
    enc2 = _TinyEncoder()
    assert encoder_fingerprint(enc2) != encoder_fingerprint(enc)
    # same weights, other layer selection -> other fingerprint
    import copy

    enc_layer = copy.deepcopy(enc)
    enc_layer._anyup_fingerprint = None
    enc_layer.info = type(
        "Info", (), {"name": "tiny", "multiple": 4, "stride": 4, "channels": 5, "layers": ("other",)}
    )()
    assert encoder_fingerprint(enc_layer) != encoder_fingerprint(enc)
    encode(enc2, images[:1], cache)
    assert enc2.calls == 1
    # a corrupt file is recomputed, not fatal
    files[0].write_bytes(b"garbage")
    encode(enc, images, FeatureCache(tmp_path))
    assert enc.calls == 5
