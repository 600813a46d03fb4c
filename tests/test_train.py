"""Unit tests of anyup.train: config, losses, crop geometry, data, augmentation, checkpoints."""

from __future__ import annotations

import importlib.util
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _toy import ConvEncoder, PoolEncoder
from torch import nn

from anyup.train import config as C
from anyup.train.augment import photometric_augment
from anyup.train.checkpoint import (
    atomic_write,
    capture_rng_state,
    export_safetensors,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from anyup.train.data import (
    DataPosition,
    RecipeDataset,
    SizeIndex,
    StepSampler,
    collect_images,
    split_holdout,
)
from anyup.train.losses import RecipeLoss, cos_mse, crop_boxes, extract_crops
from anyup.train.trainer import choose_encoder, recipe_targets

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _save_png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------
# config


class TestConfig:
    def test_presets_validate_and_differ(self):
        for name in C.PRESETS:
            cfg = C.get_preset(name)
            cfg.validate()
        assert C.get_preset("paper").encoders[0].name == "dinov2_vits14"
        assert len(C.get_preset("multi_backbone").encoders) == 5
        cpu = C.get_preset("cpu_offline")
        assert cpu.encoders[0].name == "efficientnet_lite0"
        assert cpu.data.input_size < C.get_preset("paper").data.input_size

    def test_paper_recipe_numbers(self):
        cfg = C.get_preset("paper")
        assert (cfg.data.input_size, cfg.data.hr_factor, cfg.data.crops_per_image, cfg.data.batch_size) == (
            224,
            2,
            4,
            4,
        )
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.steps) == (2e-4, 1e-5, 100_000)
        assert (cfg.loss.crop_weight, cfg.loss.consistency_weight, cfg.loss.lowres_weight) == (1.0, 0.1, 0.1)

    @pytest.mark.parametrize("name", sorted(C.PRESETS))
    def test_shipped_yaml_matches_preset(self, name):
        path = REPO / "configs" / "train" / f"{name}.yaml"
        assert path.is_file(), f"missing {path}"
        assert C.resolve_config(path=path) == C.get_preset(name)

    def test_overrides_and_types(self):
        cfg = C.resolve_config(
            preset="cpu_offline",
            overrides=[
                "optim.lr=1e-4",
                "steps=7",
                "data.root=[a, b]",
                "encoders=[x, {name: y, layer: 2}]",
                "init=null",
            ],
        )
        assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
        assert cfg.steps == 7 and cfg.data.root == ["a", "b"]
        assert [e.label for e in cfg.encoders] == ["x", "y@2"]
        # an int where a float is expected is accepted; a single item becomes a list
        cfg = C.resolve_config(overrides=["optim.lr=1", "data.root=photos"])
        assert cfg.optim.lr == 1.0 and cfg.data.root == ["photos"]

    @pytest.mark.parametrize(
        "override, message",
        [
            ("optim.lrr=1", "unknown config key"),
            ("steps=abc", "steps must be an integer"),
            ("steps=0", "steps must be >= 1"),
            ("optim.precision=fp16", "optim.precision"),
            ("augment.jpeg_quality=[90, 10]", "jpeg_quality"),
            ("optim.lr", "section.field=value"),
            ("log.tensorboard=3", "true or false"),
        ],
    )
    def test_bad_overrides_raise(self, override, message):
        with pytest.raises(ValueError, match=message):
            C.resolve_config(overrides=[override])

    def test_yaml_round_trip_and_file_preset(self, tmp_path):
        cfg = C.resolve_config(preset="multi_backbone", overrides=["seed=3", "optim.betas=[0.8, 0.9]"])
        C.save_yaml(cfg, tmp_path / "c.yaml")
        assert C.resolve_config(path=tmp_path / "c.yaml") == cfg
        (tmp_path / "p.yaml").write_text("preset: cpu_offline\nsteps: 9\noptim:\n  lr: 0.001\n")
        cfg = C.resolve_config(path=tmp_path / "p.yaml")
        assert cfg.steps == 9 and cfg.optim.lr == 0.001 and cfg.encoders[0].name == "efficientnet_lite0"
        with pytest.raises(ValueError, match="preset"):
            C.resolve_config(preset="paper", path=tmp_path / "p.yaml")
        assert not list(tmp_path.glob(".*tmp"))


# ----------------------------------------------------------------------------------------------
# losses


class TestCosMSE:
    def test_hand_computed_single_pixel(self):
        p = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
        t = torch.tensor([4.0, 3.0]).view(1, 2, 1, 1)
        # cos = 24/25 -> 1 - cos = 0.04; min-max with the target's (3, 4): p -> (0, 1), t -> (1, 0), MSE = 1
        assert cos_mse(p, t, minmax_eps=0.0).item() == pytest.approx(1.04, abs=1e-6)
        # with eps the scale is (1 + eps): MSE = 1 / (1 + eps)^2
        assert cos_mse(p, t, minmax_eps=0.5).item() == pytest.approx(0.04 + 1 / 1.5**2, abs=1e-6)

    def test_hand_computed_two_pixels_mean(self):
        p = torch.zeros(1, 2, 1, 2)
        t = torch.zeros(1, 2, 1, 2)
        p[0, :, 0, 0] = torch.tensor([1.0, 0.0])
        t[0, :, 0, 0] = torch.tensor([0.0, 1.0])  # cos 0; normalised p = (1, 0), t = (0, 1): sq err 1, 1
        p[0, :, 0, 1] = torch.tensor([2.0, 2.0])
        t[0, :, 0, 1] = torch.tensor([1.0, 3.0])  # cos = 8 / (sqrt(8) sqrt(10)); p -> (0.5, 0.5), t -> (0, 1)
        cos1 = 8 / (math.sqrt(8) * math.sqrt(10))
        expected = ((1 - 0.0) + (1 - cos1)) / 2 + (1 + 1 + 0.25 + 0.25) / 4
        assert cos_mse(p, t, minmax_eps=0.0).item() == pytest.approx(expected, abs=1e-6)

    def test_zero_for_identical_and_shape_errors(self):
        x = torch.randn(2, 5, 3, 4)
        assert cos_mse(x, x).item() == pytest.approx(0.0, abs=1e-6)
        with pytest.raises(ValueError, match="equal shapes"):
            cos_mse(x, x[:, :4])
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            cos_mse(x[0], x[0])

    def test_bfloat16_inputs_give_float32(self):
        x, y = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
        out = cos_mse(x.bfloat16(), y.bfloat16())
        assert out.dtype == torch.float32 and torch.isfinite(out)


class _NearestPlusGuide(nn.Module):
    """Stub upsampler: nearest upsampling of the features plus the guide's channel-0 mean on channel 0."""

    def forward(self, image, features, output_size):
        out = F.interpolate(features, size=tuple(output_size), mode="nearest").clone()
        out[:, 0] += image[:, 0].mean(dim=(1, 2)).view(-1, 1, 1)
        return out


class TestRecipeLoss:
    def _inputs(self):
        lowres = torch.zeros(1, 2, 2, 2)
        lowres[:, 0] = 1.0  # every low-res vector is (1, 0)
        targets = torch.zeros(1, 2, 2, 2)
        targets[:, 1] = 1.0  # every target vector is (0, 1)
        return lowres, targets

    def test_each_term_by_hand(self):
        from anyup.image import imagenet_normalize

        lowres, targets = self._inputs()
        image = torch.full((1, 3, 8, 8), 0.485)  # normalises to 0 on channel 0
        image_aug = torch.full((1, 3, 8, 8), 0.485 + 0.229)  # normalises to 1 on channel 0
        assert imagenet_normalize(image_aug)[0, 0, 0, 0].item() == pytest.approx(1.0, abs=1e-6)
        cfg = C.LossConfig(minmax_eps=0.0)
        out = RecipeLoss(_NearestPlusGuide(), cfg)(image, image_aug, lowres, targets, torch.tensor([[[1, 2]]]), (4, 4))
        # crop: predictions (1, 0) vs targets (0, 1): 1 - cos = 1, normalised MSE = 1
        assert out["crop"].item() == pytest.approx(2.0, abs=1e-6)
        # low-res: area-downsampled prediction equals the low-res features
        assert out["lowres"].item() == pytest.approx(0.0, abs=1e-6)
        # consistency: aug (2, 0) vs ref (1, 0): cos 1; min-max with ref's (0, 1): (2, 0) vs (1, 0) -> MSE 1/2
        assert out["consistency"].item() == pytest.approx(0.5, abs=1e-6)
        assert out["loss"].item() == pytest.approx(2.0 + 0.1 * 0.5 + 0.1 * 0.0, abs=1e-6)

    def test_weights_are_config_fields(self):
        lowres, targets = self._inputs()
        image = torch.full((1, 3, 8, 8), 0.485)
        image_aug = torch.full((1, 3, 8, 8), 0.485 + 0.229)
        cfg = C.LossConfig(crop_weight=0.5, consistency_weight=2.0, lowres_weight=3.0, minmax_eps=0.0)
        out = RecipeLoss(_NearestPlusGuide(), cfg)(image, image_aug, lowres, targets, torch.tensor([[[0, 0]]]), (4, 4))
        assert out["loss"].item() == pytest.approx(0.5 * 2.0 + 2.0 * 0.5, abs=1e-6)

    def test_consistency_reference_gets_no_gradient(self):
        class Scaled(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Parameter(torch.tensor(1.0))

            def forward(self, image, features, output_size):
                up = F.interpolate(features, size=tuple(output_size), mode="nearest")
                return up * (self.a + image[:, :1].mean())

        torch.manual_seed(0)
        lowres = torch.randn(1, 3, 2, 2)
        image, image_aug = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
        cfg = C.LossConfig(crop_weight=0.0, lowres_weight=0.0, consistency_weight=1.0)
        m = Scaled()
        RecipeLoss(m, cfg)(image, image_aug, lowres, torch.randn(1, 3, 2, 2), torch.tensor([[[0, 0]]]), (4, 4))[
            "loss"
        ].backward()
        # reference computed by hand with a detached target
        m2 = Scaled()
        from anyup.image import imagenet_normalize

        ref = F.interpolate(lowres, size=(8, 8)) * (1.0 + imagenet_normalize(image)[:, :1].mean())
        aug = F.interpolate(lowres, size=(8, 8)) * (m2.a + imagenet_normalize(image_aug)[:, :1].mean())
        cos_mse(aug, ref.detach()).backward()
        assert m.a.grad is not None and torch.allclose(m.a.grad, m2.a.grad, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# crop geometry


class TestCrops:
    def test_boxes_are_grid_aligned_and_cover_the_range(self):
        u = torch.tensor([[[0.0, 0.9999], [0.5, 0.25]]])
        boxes = crop_boxes(u, hr_size=64, crop_size=32, stride=4)
        assert (boxes % 4 == 0).all() and boxes.min() >= 0 and boxes.max() <= 32
        assert boxes[0, 0].tolist() == [0, 32]  # both extremes reachable
        with pytest.raises(ValueError, match="multiple of stride"):
            crop_boxes(u, hr_size=64, crop_size=30, stride=4)

    @pytest.mark.parametrize("stride", [2, 4, 8])
    def test_crop_targets_equal_windows_of_full_features(self, stride):
        """With a pooling 'encoder', a crop's target is exactly the window of the full image's features."""
        torch.manual_seed(stride)
        enc = PoolEncoder(stride=stride, channels=5)
        s = 8 * stride
        image_hr = torch.rand(2, 3, 2 * s, 2 * s)
        image = F.interpolate(image_hr, size=(s, s), mode="area")
        crop_u = torch.rand(2, 3, 2)
        lowres, targets, cells = recipe_targets(enc, image, image_hr, crop_u, stride)
        (full,) = enc(image_hr)  # (2, 5, 16, 16): the grid the model predicts on
        assert lowres.shape == (2, 5, 8, 8) and targets.shape == (6, 5, 8, 8) and full.shape[-1] == 16
        windows = extract_crops(full, cells, 8)
        torch.testing.assert_close(windows, targets, atol=1e-6, rtol=0)
        # and a shifted window (off by one cell) does not match
        shifted = extract_crops(full, (cells + 1).clamp(max=8), 8)
        assert not torch.allclose(shifted, targets, atol=1e-3)

    def test_oracle_prediction_has_zero_crop_loss(self):
        """RecipeLoss cuts prediction windows with the same convention as the targets."""
        enc = PoolEncoder(stride=4, channels=3)
        image_hr = torch.rand(1, 3, 64, 64)
        image = F.interpolate(image_hr, size=(32, 32), mode="area")
        lowres, targets, cells = recipe_targets(enc, image, image_hr, torch.rand(1, 4, 2), 4)
        (full,) = enc(image_hr)

        class Oracle(nn.Module):
            def forward(self, img, feats, output_size):
                if tuple(output_size) == (16, 16):
                    return full
                return F.interpolate(feats, size=tuple(output_size), mode="nearest")

        out = RecipeLoss(Oracle(), C.LossConfig())(image, image, lowres, targets, cells, (16, 16))
        assert out["crop"].item() == pytest.approx(0.0, abs=1e-5)

    def test_full_image_targets(self):
        """target="full": the target is the whole high-res feature map, and an oracle has zero loss."""
        enc = PoolEncoder(stride=4, channels=3)
        image_hr = torch.rand(2, 3, 64, 64)
        image = F.interpolate(image_hr, size=(32, 32), mode="area")
        lowres, targets, cells = recipe_targets(enc, image, image_hr, torch.rand(2, 4, 2), 4, target="full")
        assert cells is None and lowres.shape == (2, 3, 8, 8)
        torch.testing.assert_close(targets, enc(image_hr)[0])  # (2, 3, 16, 16)

        class Oracle(nn.Module):
            def forward(self, img, feats, output_size):
                if tuple(output_size) == (16, 16):
                    return targets
                return F.interpolate(feats, size=tuple(output_size), mode="nearest")

        out = RecipeLoss(Oracle(), C.LossConfig())(image, image, lowres, targets, None, (16, 16))
        assert out["crop"].item() == pytest.approx(0.0, abs=1e-5)
        blurred = RecipeLoss(Oracle(), C.LossConfig())(image, image, lowres, targets.flip(-1), None, (16, 16))
        assert blurred["crop"].item() > 0.01

    def test_lr_schedule(self):
        cfg = C.resolve_config(
            preset="cpu_offline",
            overrides=["steps=100", "optim.schedule=cosine", "optim.decay_start=40", "optim.min_lr_ratio=0.1"],
        )
        o = cfg.optim
        assert o.lr_at(0, 100) == o.lr_at(39, 100) == o.lr
        lrs = [o.lr_at(s, 100) for s in range(40, 101)]
        assert all(a >= b for a, b in zip(lrs, lrs[1:]))
        assert lrs[-1] == pytest.approx(0.1 * o.lr) and lrs[30] == pytest.approx(0.55 * o.lr)
        assert C.resolve_config(preset="cpu_offline").optim.lr_at(10**6, 10) == o.lr  # "constant" by default
        with pytest.raises(ValueError, match="optim.schedule"):
            C.resolve_config(overrides=["optim.schedule=step"])
        with pytest.raises(ValueError, match="data.target"):
            C.resolve_config(overrides=["data.target=tiles"])


# ----------------------------------------------------------------------------------------------
# data


class TestData:
    def test_collect_folders_and_lists(self, tmp_path):
        (tmp_path / "a" / "b").mkdir(parents=True)
        f1 = _save_png(tmp_path / "a" / "x.png", 8, 8)
        f2 = _save_png(tmp_path / "a" / "b" / "y.png", 8, 8)
        (tmp_path / "a" / "notes.md").write_text("no image")
        lst = tmp_path / "list.txt"
        lst.write_text("# a comment\na/x.png\n\n")
        assert collect_images([tmp_path / "a"]) == sorted([f1.resolve(), f2.resolve()])
        assert collect_images([lst]) == [f1.resolve()]
        with pytest.raises(ValueError, match="data.root"):
            collect_images([])
        with pytest.raises(FileNotFoundError):
            collect_images([tmp_path / "missing"])

    def test_size_index_caches_filters_and_counts_corrupt(self, tmp_path, monkeypatch):
        import anyup.train.data as D

        big = _save_png(tmp_path / "big.png", 40, 50)
        small = _save_png(tmp_path / "small.png", 10, 50)
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"this is not a jpeg")
        files = [big, small, bad]
        calls = []
        real = D.read_image_size
        monkeypatch.setattr(D, "read_image_size", lambda p: calls.append(p) or real(p))
        kept, report = SizeIndex(tmp_path / "cache").filter(files, min_size=20)
        assert kept == [big] and (report.kept, report.too_small, report.unreadable) == (1, 1, 1)
        assert report.unreadable_examples == [str(bad)]
        assert len(calls) == 3 and (tmp_path / "cache" / "image_sizes.json").is_file()
        calls.clear()
        kept2, _ = SizeIndex(tmp_path / "cache").filter(files, min_size=20)  # from the cache
        assert kept2 == [big] and calls == []
        _save_png(small, 30, 30)  # file changed: size and mtime differ -> re-read
        os.utime(small, ns=(1, 1))
        kept3, _ = SizeIndex(tmp_path / "cache").filter(files, min_size=20)
        assert calls == [small] and kept3 == [big, small]

    def test_dataset_sample_is_a_function_of_its_key_and_skips_broken_files(self, tmp_path):
        good = _save_png(tmp_path / "good.png", 50, 70)
        truncated = tmp_path / "trunc.png"
        truncated.write_bytes(_save_png(tmp_path / "t.png", 50, 60).read_bytes()[:200])  # header ok, data cut
        ds = RecipeDataset([truncated, good], input_size=16, hr_factor=2, crops_per_image=3,
                           augment=C.AugmentConfig(), seed=0)  # fmt: skip
        s = ds[(0, 0, 5)]
        assert s["skipped"] == 1
        assert s["image_hr"].shape == (3, 32, 32) and s["image"].shape == (3, 16, 16)
        assert s["image_aug"].shape == (3, 16, 16) and s["crop_u"].shape == (3, 2)
        s2 = ds[(1, 0, 5)]
        assert s2["skipped"] == 0
        for k in ("image_hr", "image", "image_aug", "crop_u"):
            assert torch.equal(s[k], s2[k])  # same file used, same (epoch, position) -> same sample
        s3 = ds[(1, 0, 6)]
        assert not torch.equal(s3["crop_u"], s2["crop_u"])

    def test_sampler_distributed_chunks_equal_single_process(self):
        single = StepSampler(20, batch_size=4, world_size=1, seed=3)
        ranks = [StepSampler(20, batch_size=2, world_size=2, seed=3) for _ in range(2)]
        accum = StepSampler(20, batch_size=2, world_size=1, accum_steps=2, seed=3)
        pos = DataPosition()
        for _ in range(12):  # crosses several epochs (5 steps per epoch)
            keys = single.keys(pos, 0, 0)
            assert ranks[0].keys(pos, 0, 0) + ranks[1].keys(pos, 1, 0) == keys
            assert accum.keys(pos, 0, 0) + accum.keys(pos, 0, 1) == keys
            pos = single.advance(pos)
        assert pos.epoch == 2 and pos.index == 8

    def test_sampler_epochs_are_permutations_and_drop_the_tail(self):
        s = StepSampler(10, batch_size=3, seed=0)
        pos, seen = DataPosition(), []
        for _ in range(3):
            seen += [k[0] for k in s.keys(pos, 0, 0)]
            pos = s.advance(pos)
        assert len(set(seen)) == 9 and pos == DataPosition(1, 0)
        assert s.permutation(0) != s.permutation(1)
        assert list(s.iter_batches(DataPosition(0, 3), 0).__next__()) == s.keys(DataPosition(0, 3), 0, 0)
        with pytest.raises(ValueError, match="fewer than one step"):
            StepSampler(3, batch_size=2, world_size=2)

    def test_holdout_split_is_seeded(self, caplog):
        files = [Path(f"{i}.png") for i in range(10)]
        tr, va = split_holdout(files, 3, seed=1)
        assert len(va) == 3 and sorted(tr + va) == sorted(files)
        assert split_holdout(files, 3, seed=1) == (tr, va) and split_holdout(files, 3, seed=2)[1] != va
        # more than a quarter asked for: scaled to the data, with the fix named in the warning
        with caplog.at_level("WARNING", logger="anyup.train.data"):
            tr, va = split_holdout(files, 8, seed=0)
        assert len(va) == 3 and len(tr) == 7
        assert "--set val.num_images=N" in caplog.text and "--val-data" in caplog.text
        with pytest.raises(ValueError, match=r"--val-data DIR.*--set val.num_images=0"):
            split_holdout(files[:1], 1, seed=0)

    def test_choose_encoder_is_weighted_and_deterministic(self):
        specs = [C.TrainEncoderSpec("a", weight=1.0), C.TrainEncoderSpec("b", weight=3.0)]
        picks = [choose_encoder(specs, 0, s) for s in range(400)]
        assert picks == [choose_encoder(specs, 0, s) for s in range(400)]
        assert 0.65 < sum(picks) / 400 < 0.85


# ----------------------------------------------------------------------------------------------
# augmentation


class TestAugment:
    def test_deterministic_in_range_and_photometric_only(self):
        from skimage.data import astronaut

        img = torch.from_numpy(astronaut()[::8, ::8].copy()).permute(2, 0, 1).float() / 255  # (3, 64, 64)
        cfg = C.AugmentConfig(jitter_p=1, grayscale_p=0.5, blur_p=0.5, jpeg_p=0.5, noise_p=0.5)
        outs = [photometric_augment(img, cfg, torch.Generator().manual_seed(s)) for s in range(6)]
        again = photometric_augment(img, cfg, torch.Generator().manual_seed(0))
        assert torch.equal(outs[0], again)
        assert all(o.shape == img.shape and o.min() >= 0 and o.max() <= 1 for o in outs)
        assert any(not torch.allclose(outs[0], o) for o in outs[1:])
        # pixel-aligned: image structure (gradients) stays where it was
        gy = (img[:, 1:] - img[:, :-1]).abs().mean(0).flatten()
        for o in outs:
            go = (o[:, 1:] - o[:, :-1]).abs().mean(0).flatten()
            assert torch.corrcoef(torch.stack([gy, go]))[0, 1] > 0.3

    def test_disabled_augmentation_is_identity(self):
        img = torch.rand(3, 20, 24)
        cfg = C.AugmentConfig(jitter_p=0, grayscale_p=0, blur_p=0, jpeg_p=0, noise_p=0)
        assert torch.equal(photometric_augment(img, cfg, torch.Generator().manual_seed(0)), img)
        with pytest.raises(ValueError, match=r"\(3, H, W\)"):
            photometric_augment(img[None], cfg, torch.Generator())


# ----------------------------------------------------------------------------------------------
# checkpoints and export


class TestCheckpoint:
    def test_rng_round_trip_through_weights_only_file(self, tmp_path):
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        state = capture_rng_state()
        save_checkpoint(tmp_path / "c.pt", {"step": 3, "rng": [state]})
        expected = (random.random(), np.random.rand(), torch.rand(2))
        random.seed(9), np.random.seed(9), torch.manual_seed(9)
        restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"][0])
        got = (random.random(), np.random.rand(), torch.rand(2))
        assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])

    def test_atomic_write_leaves_old_file_on_failure(self, tmp_path):
        target = tmp_path / "x.bin"
        target.write_bytes(b"old")

        def broken(tmp):
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("killed")

        with pytest.raises(RuntimeError, match="killed"):
            atomic_write(target, broken)
        assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]

    def test_load_rejects_foreign_files(self, tmp_path):
        torch.save({"a": torch.zeros(1)}, tmp_path / "x.pt")
        with pytest.raises(ValueError, match="not an anyup training checkpoint"):
            load_checkpoint(tmp_path / "x.pt")
        with pytest.raises(FileNotFoundError):
            load_checkpoint(tmp_path / "none.pt")

    def test_export_is_readable_by_anyup_load(self, tmp_path):
        import anyup

        torch.manual_seed(0)
        model = anyup.AnyUp(anyup.AnyUpConfig())
        path = export_safetensors(model, tmp_path / "model.safetensors", {"anyup_config": {"dim": 128}, "step": 5})
        loaded = anyup.load(path)
        for k, v in model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            assert f.metadata()["step"] == "5"


class TestWeightAverage:
    def test_average_by_hand_with_the_warm_up(self):
        from anyup.train.ema import WeightAverage

        model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(0.0)
        ema = WeightAverage(model, decay=0.5)
        expected = 0.0
        # decays of the first updates: min(0.5, (1 + n) / (10 + n)) = 1/10, 2/11, 3/12, 4/13, 5/14, 6/15, 7/16, 8/17, 0.5
        for n, (value, d) in enumerate(
            zip([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [0.1, 2 / 11, 0.25, 4 / 13, 5 / 14, 0.4, 7 / 16, 8 / 17, 0.5, 0.5])
        ):
            with torch.no_grad():
                model.weight.fill_(float(value))
            ema.update(model)
            expected = d * expected + (1 - d) * value
            assert ema.updates == n + 1
            assert ema.tensors["weight"].item() == pytest.approx(expected, rel=1e-6), n
        assert ema.tensors["weight"].item() != pytest.approx(10.0)  # it lags the last weights

    def test_applied_swaps_in_and_back_and_the_state_round_trips(self, tmp_path):
        from anyup.train.ema import WeightAverage

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))  # float params and buffers, an int64 buffer
        ema = WeightAverage(model, decay=0.9)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.update(model)
        own = {k: v.clone() for k, v in model.state_dict().items()}
        with ema.applied(model) as m:
            assert m is model and torch.equal(model[0].weight, ema.tensors["0.weight"])
            assert not torch.equal(model[0].weight, own["0.weight"])
        assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())
        save_checkpoint(tmp_path / "c.pt", {"ema": ema.state_dict()})
        again = WeightAverage(model, decay=0.9)
        again.load_state_dict(load_checkpoint(tmp_path / "c.pt")["ema"])  # weights_only load
        assert again.updates == 1 and all(torch.equal(again.tensors[k], v) for k, v in ema.tensors.items())
        with pytest.raises(ValueError, match="does not match the model"):
            WeightAverage(nn.Linear(3, 4), 0.9).load_state_dict(ema.state_dict())
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            WeightAverage(model, 1.0)

    def test_config_names_the_field(self):
        with pytest.raises(ValueError, match="optim.ema_decay must be in"):
            C.resolve_config(preset="cpu_offline", overrides=["optim.ema_decay=1.5"])
        assert C.resolve_config(preset="cpu_offline", overrides=["optim.ema_decay=0.99"]).optim.ema_decay == 0.99


def test_toy_conv_encoder_contract():
    enc = ConvEncoder(stride=4, channels=6)
    (out,) = enc(torch.rand(2, 3, 16, 24))
    assert out.shape == (2, 6, 4, 6) and not out.requires_grad
    with pytest.raises(ValueError, match="even"):
        ConvEncoder(stride=3)


# ----------------------------------------------------------------------------------------------
# presets vs the encoder registry, command line


@pytest.mark.parametrize("name", sorted(C.PRESETS))
def test_preset_encoders_exist_and_fit_the_geometry(name):
    encoders = pytest.importorskip("anyup.encoders")
    cfg = C.get_preset(name)
    for spec in cfg.encoders:
        reg = encoders.get_spec(spec.name)
        (layer,) = reg.resolve_layers(spec.layer)
        multiple = reg.multiple_for([layer])
        if cfg.data.target == "full" and cfg.data.input_size % multiple:
            # whole-image targets: inputs are resized to the nearest multiple (ViT patch 14 at 128 px)
            assert cfg.data.input_size // multiple >= cfg.data.min_cells, spec.label
            continue
        assert cfg.data.input_size % layer.stride == 0 and cfg.data.input_size % multiple == 0, spec.label
        assert (cfg.data.hr_factor * cfg.data.input_size) % multiple == 0, spec.label


def test_cli_print_config_and_errors(tmp_path, capsys):
    import yaml

    from anyup.cli import main

    assert main(["train", "--preset", "cpu_offline", "--data", "a", "b", "--out", str(tmp_path / "r"), "--steps", "3",
                 "--set", "optim.lr=1e-4", "augment.noise_p=0", "--print-config"]) == 0  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["root"] == ["a", "b"] and printed["steps"] == 3 and printed["optim"]["lr"] == 1e-4
    assert printed["run_dir"] == str(tmp_path / "r") and printed["augment"]["noise_p"] == 0
    assert main(["train", "--preset", "cpu_offline"]) == 1  # no data
    assert "--data" in capsys.readouterr().err
    assert main(["train", "--set", "optim.nope=1"]) == 1
    assert "unknown config key" in capsys.readouterr().err
    # --resume reads RUN_DIR/config.yaml
    C.save_yaml(C.resolve_config(preset="paper", overrides=["steps=11"]), tmp_path / "r" / "config.yaml")
    assert main(["train", "--resume", str(tmp_path / "r"), "--steps", "12", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (
        printed["steps"] == 12
        and printed["run_dir"] == str(tmp_path / "r")
        and printed["encoders"][0]["name"] == "dinov2_vits14"
    )


def test_metrics_csv_resume_truncates_and_tensorboard_optional(tmp_path):
    from anyup.train.metrics import MetricsWriter, read_metrics

    w = MetricsWriter(tmp_path, ["loss", "val"], tensorboard=False)
    for step in range(1, 6):
        w.log(step, {"loss": 1.0 / step, "val": 0.5} if step == 5 else {"loss": 1.0 / step, "unknown": 3})
    w.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[4]["val"] == 0.5 and "val" not in rows[0]
    w = MetricsWriter(tmp_path, ["loss", "val"], tensorboard=False, resume_step=3)  # rows after 3 dropped
    w.log(4, {"loss": 9.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.csv")][-2:] == [(3, 0.333333), (4, 9.0)]
    MetricsWriter(tmp_path, ["loss"], tensorboard=False)  # a fresh run starts an empty file
    assert read_metrics(tmp_path / "metrics.csv") == []
    if importlib.util.find_spec("tensorboard") is not None:
        w = MetricsWriter(tmp_path / "tb", ["loss"], tensorboard=True)
        w.log(1, {"loss": 0.5})
        w.close()
        assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))


# ----------------------------------------------------------------------------------------------
# issue 14: offline photo set, geometric augmentation, ratios, random-init pools


def test_photo_listing_is_a_fixed_disjoint_split():
    from anyup.train.photos import LISTING, load_listing

    spec = load_listing(LISTING)
    table = spec["photos"]
    assert len(spec["val"]) == 8 and set(spec["val"]) <= set(table)
    for pid, entry in table.items():
        expected = "val" if pid in spec["val"] else "excluded" if pid in spec["excluded"] else "train"
        assert entry["split"] == expected, pid
        assert len(entry["sha256"]) == 64
    # the evaluation's Middlebury depth scenes never train
    assert {"skimage/stereo_motorcycle", "opencv/examples/data/aloeL.jpg"} <= set(spec["excluded"])
    assert sum(e["split"] == "train" for e in table.values()) >= 100


def test_photo_dedup_drops_resized_copies_of_held_out_photos(tmp_path):
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    from anyup.train.photos import Photo, deduplicate, pixel_hash

    coffee, chelsea = data.coffee(), data.chelsea()
    small = np.asarray(Image.fromarray(coffee).resize((450, 300), Image.LANCZOS))  # a resized, recompressed copy
    Image.fromarray(small).save(tmp_path / "c.jpg", quality=80)
    reread = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))
    photos = [
        Photo("copy/coffee_small", lambda: reread),
        Photo("skimage/chelsea", lambda: chelsea, curated=True),  # a photo the colour heuristic would miss
        Photo("again/chelsea", lambda: chelsea.copy()),
        Photo("skimage/coffee", lambda: coffee),
        Photo("chart", lambda: np.full((300, 300, 3), 255, np.uint8)),
    ]
    kept, dropped = deduplicate(photos, priority=["skimage/coffee"])
    assert [e.id for e in kept] == ["skimage/coffee", "skimage/chelsea"]  # the held-out photo wins
    assert dropped["copy/coffee_small"] == "near-copy of skimage/coffee"
    assert dropped["again/chelsea"] == "same pixels as skimage/chelsea"
    assert dropped["chart"] == "not a photo or too small"
    assert kept[0].sha256 == pixel_hash(coffee)


def test_random_resized_square_is_seeded_and_bounded():
    from anyup.train.data import generator_for, random_resized_square

    img = torch.rand(3, 60, 90, generator=torch.Generator().manual_seed(0))
    a = random_resized_square(img, 32, (0.5, 1.0), 0.5, generator_for(1, 2, 3))
    b = random_resized_square(img, 32, (0.5, 1.0), 0.5, generator_for(1, 2, 3))
    c = random_resized_square(img, 32, (0.5, 1.0), 0.5, generator_for(1, 2, 4))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    # scale (1, 1) without flips: the centre crop along the short side at some offset, unflipped
    full = random_resized_square(img[:, :, :60], 60, (1.0, 1.0), 0.0, generator_for(0))
    assert torch.allclose(full, img[:, :, :60], atol=1e-6)


def test_geometric_augmentation_keeps_the_recipe_aligned(tmp_path):
    for i in range(2):
        _save_png(tmp_path / f"{i}.png", 80, 120, seed=i)
    aug = C.AugmentConfig(crop_scale=(0.5, 1.0), flip_p=0.5)
    ds = RecipeDataset(collect_images([tmp_path]), 16, 2, 1, aug, seed=0)
    s1, s2 = ds[(0, 0, 0)], ds[(0, 0, 0)]
    assert torch.equal(s1["image_hr"], s2["image_hr"]) and s1["image_hr"].shape == (3, 32, 32)
    assert not torch.equal(ds[(0, 0, 0)]["image_hr"], ds[(0, 1, 0)]["image_hr"])  # another epoch, another crop
    from anyup.train.data import downsample

    assert torch.allclose(s1["image"], downsample(s1["image_hr"], 16))  # the low-res input is the same view
    # the photometric draws do not depend on the geometric ones
    plain = RecipeDataset(collect_images([tmp_path]), 16, 2, 1, C.AugmentConfig(), seed=0)[(0, 0, 0)]
    assert torch.equal(plain["crop_u"], s1["crop_u"])


def test_ratio_choice_respects_min_cells_and_is_seeded():
    from anyup.train.trainer import allowed_factors, choose_factor

    cfg = C.get_preset("cpu_offline_v2")  # 256 px high-res, ratios 2/4/8, >= 4 cells
    assert allowed_factors(cfg, 4) == [2, 4, 8]
    assert allowed_factors(cfg, 8) == [2, 4, 8]
    assert allowed_factors(cfg, 16) == [2, 4]
    assert allowed_factors(cfg, 32) == [2]
    drawn = [choose_factor(cfg, 8, t) for t in range(60)]
    assert drawn == [choose_factor(cfg, 8, t) for t in range(60)] and set(drawn) == {2, 4, 8}
    assert allowed_factors(C.get_preset("cpu_offline_multi"), 16) == [2]


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.hr_factors=[3]", "must divide"),
        ("data.hr_factors=[1]", ">= 2"),
        ("augment.crop_scale=[0, 1]", "crop_scale"),
        ("augment.flip_p=2", "flip_p"),
        ("encoders=[{name: vit_s16, pool: 3}]", "pretrained: false"),
    ],
)
def test_issue14_config_errors_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        C.resolve_config(preset="cpu_offline_v2", overrides=[override])
    with pytest.raises(ValueError, match="target"):
        C.resolve_config(preset="cpu_offline", overrides=["data.hr_factors=[2, 4]"])


def test_random_pool_instances_are_distinct_and_reproducible():
    pytest.importorskip("timm")
    from anyup.train.trainer import build_encoder, choose_instance

    spec = C.TrainEncoderSpec("resnet50", layer="layer1", pretrained=False, pool=3)
    a0, a1 = build_encoder(spec, torch.device("cpu"), 0), build_encoder(spec, torch.device("cpu"), 0, instance=1)
    b1 = build_encoder(spec, torch.device("cpu"), 0, instance=1)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a1(x)[0], b1(x)[0]) and not torch.allclose(a0(x)[0], a1(x)[0])
    drawn = {choose_instance(spec, 0, t) for t in range(40)}
    assert drawn == {0, 1, 2}
    assert choose_instance(C.TrainEncoderSpec("vgg16_hed"), 0, 5) == 0


def test_gpu_preset_builds_on_cpu():
    """The GPU preset validates, asks for bf16 and a device when one exists, and its geometry fits."""
    from anyup.train.trainer import DistContext, _autocast, allowed_factors

    cfg = C.get_preset("gpu")
    cfg.validate()
    assert (cfg.data.input_size, cfg.data.hr_factor * cfg.data.input_size, cfg.data.batch_size) == (224, 448, 16)
    assert cfg.optim.precision == "bf16" and cfg.device == "auto"
    ctx = DistContext.setup(cfg.device)
    assert ctx.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with _autocast(cfg, ctx.device):
        y = torch.ones(2, 2, device=ctx.device) @ torch.ones(2, 2, device=ctx.device)
    assert y.dtype == torch.bfloat16
    assert allowed_factors(cfg, 16) == [2, 4] and allowed_factors(cfg, 8) == [2, 4, 8]
