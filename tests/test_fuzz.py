"""Bad inputs, faults and interruptions through the public API and the CLI (issue 12).

Every case must end in a clear one-line error or a correct result: no traceback, no leftover
file, and within a time and memory limit (``limits`` fixture: 30 s, 2 GB of new peak RSS).
Most cases are tiny and run in-process; the ones that spawn ``python -m anyup`` (real
interpreter exit codes, ``kill -9`` during a write, a second process holding a lock, a large
JPEG's peak memory) are marked slow.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import anyup
from anyup import _checks
from anyup._atomic import TEMP_MARK, atomic_write, clean_stale_temps, ensure_writable_dir, hold_folder_lock
from anyup.cli import main
from anyup.image import load_image, multiple_size
from anyup.model import AnyUp, AnyUpConfig

REPO = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 30
MEMORY_LIMIT = 2 << 30
TINY = AnyUpConfig(dim=16, num_heads=2, num_groups=4, num_blocks=1)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture()
def limits():
    """Fail a case that runs over 30 s (SIGALRM) or raises the process's peak RSS by more than 2 GB."""

    def alarm(signum, frame):
        raise TimeoutError(f"case ran over {TIME_LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(TIME_LIMIT_S)
    before = _peak_rss()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert _peak_rss() - before < MEMORY_LIMIT, "case raised the peak RSS by more than 2 GB"


@pytest.fixture(scope="module")
def tiny_model() -> AnyUp:
    torch.manual_seed(0)
    return AnyUp(TINY).eval()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny")
    return AnyUp(TINY).save_pretrained(folder / "tiny") / "model.safetensors"


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARK in p.name or p.name.endswith((".tmp", ".part"))]


def _one_line_error(err: str, command: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if ln.startswith(f"anyup {command}: error: ")]
    assert len(errors) == 1, err


# ------------------------------------------------------------------------------------------ model
_G = torch.randn(1, 3, 8, 8).clamp(-2, 2)
_F = torch.randn(1, 4, 2, 2)


@pytest.mark.parametrize(
    "image, feats, size, exc, match",
    [
        (_G[0], _F, None, ValueError, r"image must be \(B, 3, H, W\)"),
        (_G, _F[0], None, ValueError, r"features must be \(B, C, h, w\)"),
        (_G[None], _F, None, ValueError, "image must be"),
        (_G[:, :1], _F, None, ValueError, "3 channels"),
        (_G, _F[:, :0], None, ValueError, "C = 0"),
        (_G.expand(2, -1, -1, -1), _F, None, ValueError, "batch sizes differ"),
        (_G[..., :0, :], _F, None, ValueError, "spatial size"),
        (_G, _F[..., :0], None, ValueError, "spatial size"),
        (_G, torch.full_like(_F, float("nan")), None, ValueError, "NaN or inf"),
        (torch.full_like(_G, float("-inf")), _F, None, ValueError, "NaN or inf"),
        (_G, _F.long(), None, TypeError, "floating-point"),
        ((_G * 255).to(torch.uint8), _F, None, TypeError, "floating-point"),
        (_G.numpy(), _F, None, TypeError, "torch.Tensor"),
        (_G, None, None, TypeError, "torch.Tensor"),
        (torch.rand(1, 3, 8, 8) * 255, _F, None, ValueError, "ImageNet-normalised"),  # a 0..255 guide
        (_G, _F, 0, ValueError, "output_size"),
        (_G, _F, (8, -1), ValueError, "output_size"),
        (_G, _F, (8.0, 8.0), ValueError, "integers"),
        (_G, _F, "8x8", ValueError, "output_size"),
        (_G, _F, (1 << 17, 8), ValueError, "65536"),
        (_G, _F, (1, 2, 3), ValueError, "pair"),
        (_G, _F, True, ValueError, "output_size"),
    ],
)
def test_model_refuses_bad_input(tiny_model, limits, image, feats, size, exc, match):
    with pytest.raises(exc, match=match):
        tiny_model(image, feats, size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (3, 17)])
def test_model_gives_a_convex_result_for_odd_sizes_and_dtypes(tiny_model, limits, dtype, size):
    image, feats = torch.randn(1, 3, 5, 7).clamp(-2, 2), torch.randn(1, 4, 2, 3)
    out = tiny_model(image.to(dtype), feats.to(dtype), size)
    assert out.shape == (1, 4, *size) and out.dtype == dtype and torch.isfinite(out).all()
    lo, hi = feats.amin(dim=(2, 3)), feats.amax(dim=(2, 3))
    tol = 1e-3 if dtype in (torch.float32, torch.float64) else 0.1
    assert (out.float() >= lo[..., None, None].to(dtype).float() - tol).all()
    assert (out.float() <= hi[..., None, None].to(dtype).float() + tol).all()


def test_suspicious_guide_warns(tiny_model, limits):
    with pytest.warns(UserWarning, match="wider than an ImageNet-normalised guide"):
        tiny_model(torch.full((1, 3, 6, 6), 7.0), _F)


def test_model_refuses_an_int_out_tensor(tiny_model):
    with pytest.raises(TypeError, match="floating-point"):
        tiny_model(_G, _F, (8, 8), out=torch.empty(1, 4, 8, 8, dtype=torch.int32))


def test_model_accepts_max_memory_as_text(tiny_model):
    tiny_model(_G, _F, (8, 8), max_memory="1GB")


def test_model_refuses_an_output_larger_than_memory(tiny_model, limits):
    with pytest.raises(ValueError, match="needs .* but only"):
        tiny_model(_G, _F, (65536, 65536))


def test_check_out_and_output_memory_helpers(limits):
    with pytest.raises(TypeError, match="floating-point.*int32"):
        _checks.check_out(torch.empty(1, 4, 8, 8, dtype=torch.int32), (1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"out must have shape \(1, 4, 8, 8\)"):
        _checks.check_out(torch.empty(1, 4, 8, 9), (1, 4, 8, 8))
    assert _checks.check_out(torch.empty(1, 4, 8, 8, dtype=torch.float16), (1, 4, 8, 8)) is not None
    with pytest.raises(ValueError, match=r"\(1, 384, 65536, 65536\) float32 needs 6.0 TiB but only .* available"):
        _checks.check_output_memory((1, 384, 65536, 65536), torch.float32)
    assert _checks.check_output_memory((1, 4, 8, 8), torch.float32) == 1024


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        (1 << 30, 1 << 30),
        ("1GB", 10**9),
        ("512MiB", 512 << 20),
        ("2 G", 2 * 10**9),
        ("1.5GiB", 3 << 29),
        ("4096", 4096),
        (2.0e9, 2 * 10**9),
    ],
)
def test_parse_memory(value, expected):
    assert _checks.parse_memory(value) == expected


@pytest.mark.parametrize("value", ["1 parsec", "", "GB", "-1GB", 0, -5, True, float("nan"), float("inf"), [1]])
def test_parse_memory_refuses(value):
    with pytest.raises(ValueError, match="max_memory"):
        _checks.parse_memory(value)


def test_baselines_share_the_model_checks(limits):
    import anyup.baselines as B

    up = B.create("bilinear")
    for image, feats, match in [
        (_G, torch.full_like(_F, float("inf")), "NaN or inf"),
        (torch.rand(1, 3, 8, 8) * 255, _F, "ImageNet-normalised"),
        (_G, _F, "output_size"),
        (_G, torch.randn(1, 256, 2, 2), "needs .* but only"),  # 4 TiB of output
    ]:
        size = {"output_size": (0, 4), "needs .* but only": (65536, 65536)}.get(match, (8, 8))
        with pytest.raises(ValueError, match=match):
            up(image, feats, size)


# ------------------------------------------------------------------------------------- image modes
def _grad(h: int = 6, w: int = 10) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 25, y * 40, (x + y) * 15], axis=-1).astype(np.uint8)  # (h, w, 3)


def _pil_cases() -> dict[str, tuple[Image.Image, np.ndarray]]:
    """PIL mode -> (image, expected RGB float (H, W, 3))."""
    rgb = _grad()
    grey = rgb[..., 0]
    g01 = grey.astype(np.float32) / 255
    cases = {
        "RGB": (Image.fromarray(rgb), rgb / 255.0),
        "L": (Image.fromarray(grey), np.repeat(g01[..., None], 3, -1)),
        "1": (Image.fromarray(grey > 100), np.repeat((grey > 100)[..., None], 3, -1).astype(np.float32)),
        "P": (Image.fromarray(rgb).quantize(16), None),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), None),
        "YCbCr": (Image.fromarray(rgb).convert("YCbCr"), None),
        "RGBA": (Image.fromarray(np.dstack([rgb, np.full(grey.shape, 255, np.uint8)])), rgb / 255.0),
        "LA": (Image.fromarray(grey).convert("LA"), np.repeat(g01[..., None], 3, -1)),
        "I;16": (Image.fromarray(grey.astype(np.uint16) * 257), np.repeat(g01[..., None], 3, -1)),
        "I": (Image.fromarray(grey.astype(np.int32) * 257), np.repeat(g01[..., None], 3, -1)),
        "F": (Image.fromarray(g01), np.repeat(g01[..., None], 3, -1)),
    }
    for mode in ("P", "CMYK", "YCbCr"):
        im = cases[mode][0]
        cases[mode] = (im, np.asarray(im.convert("RGB")) / 255.0)
    return cases


@pytest.mark.parametrize("mode", sorted(_pil_cases()))
def test_every_pil_mode_reads_right(tmp_path, limits, mode):
    im, expected = _pil_cases()[mode]
    assert im.mode == mode
    for source in (im, _saved(im, tmp_path)):
        t = load_image(source)
        assert t.shape == (3, 6, 10) and t.dtype == torch.float32
        assert 0 <= float(t.min()) and float(t.max()) <= 1
        np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), expected, atol=2e-3 if mode != "YCbCr" else 0.02)


def _saved(im: Image.Image, folder: Path) -> Path | Image.Image:
    fmt = {"CMYK": "tiff", "YCbCr": "jpeg", "F": "tiff", "I": "tiff", "LA": "png", "1": "png"}.get(im.mode, "png")
    path = folder / f"img_{im.mode.replace(';', '_')}.{fmt}"
    try:
        im.save(path)
    except OSError:
        return im
    if im.mode == "YCbCr":  # JPEG is lossy: compare with what the file holds
        return im
    return path


def test_16bit_png_and_uint16_array_agree(tmp_path, limits):
    arr = (np.linspace(0, 1, 60).reshape(6, 10) * 65535 * 0.5).astype(np.uint16)  # a dark 16-bit image
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    from_file, from_array = load_image(path), load_image(arr)
    torch.testing.assert_close(from_file, from_array)
    assert abs(float(from_file.max()) - 0.5) < 1e-3  # scaled by 65535, not by the image's own maximum


def test_exif_orientation_and_transparency(tmp_path, limits):
    rgba = np.dstack([_grad(), np.full((6, 10), 255, np.uint8)])
    rgba[:, :3, 3] = 0
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 CCW to display
    path = tmp_path / "rot.png"
    Image.fromarray(rgba).save(path, exif=exif.tobytes())
    t = load_image(path)
    assert t.shape == (3, 10, 6)
    assert torch.allclose(t[:, -3:, :], torch.ones(3, 3, 6))  # the transparent strip is white, now at the bottom
    assert anyup.image.image_size(path) == (10, 6)


@pytest.mark.parametrize(
    "array, expected_max",
    [
        (np.full((4, 5), 255, np.uint8), 1.0),
        (np.full((4, 5, 3), 65535, np.uint16), 1.0),
        (np.ones((4, 5, 1), bool), 1.0),
        (np.full((4, 5, 3), 0.25, np.float16), 0.25),
        (np.full((4, 5, 3), 0.25, np.float64), 0.25),
        (np.full((4, 5, 4), 0.5, np.float32), 0.75),  # alpha 0.5 over white
        (np.full((4, 5, 3), 1.0004, np.float32), 1.0),  # rounding margin
    ],
)
def test_array_dtypes_read_right(limits, array, expected_max):
    for source in (
        array,
        torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0)))
        if array.ndim == 3 and (array.dtype != np.uint16 or hasattr(torch, "uint16"))  # torch.uint16: torch >= 2.3
        else None,
    ):
        if source is None:
            continue
        t = load_image(source)
        assert t.shape == (3, 4, 5) and t.dtype == torch.float32
        assert float(t.max()) == pytest.approx(expected_max, abs=1e-3)


@pytest.mark.parametrize(
    "source, exc, match",
    [
        (np.full((4, 5, 3), 200.0, np.float32), ValueError, "looks like 0..255"),
        (torch.full((3, 4, 5), 200.0), ValueError, "looks like 0..255"),
        (np.full((4, 5, 3), -0.5, np.float32), ValueError, r"must be in \[0, 1\]"),
        (np.full((4, 5, 3), np.nan, np.float32), ValueError, "NaN or inf"),
        (torch.full((3, 4, 5), float("inf")), ValueError, "NaN or inf"),
        (np.zeros((4, 5, 3), np.int64), ValueError, "ambiguous"),
        (torch.zeros(3, 4, 5, dtype=torch.int32), ValueError, "ambiguous"),
        (np.zeros((4, 5, 3), np.complex64), ValueError, "dtype"),
        (np.zeros((4, 5, 2), np.uint8), ValueError, r"\(H, W, 3\)"),
        (np.zeros((0, 0, 3), np.uint8), ValueError, "empty"),
        (torch.rand(3, 0, 0), ValueError, "empty"),
        (torch.rand(2, 3, 4, 5), ValueError, r"\(3, H, W\)"),
        (np.zeros(5, np.uint8), ValueError, r"\(H, W\)"),
        (None, TypeError, "None"),
        (42, TypeError, "int"),
    ],
)
def test_bad_images_are_refused(limits, source, exc, match):
    with pytest.raises(exc, match=match):
        load_image(source)


@pytest.mark.parametrize("content", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_broken_image_files(tmp_path, limits, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, limits):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # 20000 x 20000 RGB, no pixel data
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="bomb.png.*(pixels|decompression)"):
        load_image(path)
    with pytest.raises(ValueError, match="bomb.png"):
        anyup.image.image_size(path)


def test_truncated_jpeg(tmp_path, limits):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="cannot read image .*cut.jpg"):
        load_image(path)


def test_long_side_is_capped():
    assert multiple_size(4, 4096, 16, short_side=448) == (16, 3584)  # not 448 x 458752
    assert multiple_size(300, 451, 16, short_side=64) == (64, 96)  # ordinary photos: unchanged


# ------------------------------------------------------------------------------------ weights files
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.target}",))


def _pth_cases(folder: Path) -> dict[str, tuple[Path, str]]:
    good = folder / "good.pth"
    torch.save(AnyUp(TINY).state_dict(), good)
    cases = {}

    def add(name: str, data: bytes, match: str) -> None:
        p = folder / f"{name}.pth"
        p.write_bytes(data)
        cases[name] = (p, match)

    add("empty", b"", "is empty")
    add("text", b"hello, I am a text file\n" * 3, "not a PyTorch file")
    add("truncated", good.read_bytes()[: good.stat().st_size // 2], "truncated|corrupt|central directory")
    add("malicious", pickle.dumps({"x": _Evil()}, protocol=2), "(?i)unsupported (global|class)")
    add("malicious4", pickle.dumps({"x": _Evil()}, protocol=4), "Unsupported|weights_only")
    add("list", pickle.dumps([1, 2, 3], protocol=2), "not a plain PyTorch state dict")
    return cases


@pytest.mark.parametrize("case", ["empty", "text", "truncated", "malicious", "malicious4", "list"])
def test_bad_pth_files_give_a_clear_error_with_the_file_name(tmp_path, limits, case):
    _Evil.target = str(tmp_path / "pwned")
    path, match = _pth_cases(tmp_path)[case]
    for call in (anyup.load, anyup.weights.read_state_dict):
        with pytest.raises(ValueError, match=match) as info:
            call(path, config=TINY) if call is anyup.load else call(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    from anyup.train.checkpoint import load_checkpoint

    with pytest.raises(ValueError, match=str(path.name)):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def _st_with_meta(path: Path, arch: dict | str, state: dict | None = None) -> Path:
    state = state if state is not None else {k: v.contiguous() for k, v in AnyUp(TINY).state_dict().items()}
    meta = {"anyup_config": arch if isinstance(arch, str) else json.dumps(arch)}
    save_file(state, str(path), metadata=meta)
    return path


_ARCH = {
    k: getattr(TINY, k) for k in ("dim", "num_heads", "num_groups", "num_blocks", "lfu_kernel_size", "window_ratio")
}


@pytest.mark.parametrize(
    "arch, match",
    [
        ({**_ARCH, "num_heads": 0}, "num_heads=0"),
        ({**_ARCH, "dim": "16"}, "dim='16'"),
        ({**_ARCH, "dim": 65536}, "dim=65536"),
        ({**_ARCH, "dim": 32}, "shape mismatches"),  # valid, but not what the tensors say: no 17 GB allocation
        ({**_ARCH, "num_heads": 3}, "must divide dim"),
        ({**_ARCH, "window_ratio": 2.0}, "window_ratio=2.0"),
        ({**_ARCH, "window_ratio": "nan"}, "window_ratio"),
        ({**_ARCH, "lfu_kernel_size": 4}, "must be odd"),
        ({**_ARCH, "num_blocks": -1}, "num_blocks=-1"),
        ({**_ARCH, "num_groups": True}, "num_groups=True"),
        ("{not json", "unreadable anyup_config"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_untrusted_metadata_is_validated_before_allocating(tmp_path, limits, arch, match):
    path = _st_with_meta(tmp_path / "m.safetensors", arch)
    with pytest.raises(ValueError, match=match) as info:
        anyup.load(path)
    assert "m.safetensors" in str(info.value)


def test_run_time_fields_never_come_from_a_file(tmp_path, limits):
    path = _st_with_meta(tmp_path / "m.safetensors", {**_ARCH, "max_memory": 1, "tile_size": 1})
    m = anyup.load(path)
    assert m.config.max_memory is None and m.config.tile_size is None and m.config.dim == 16
    folder = AnyUp(TINY).save_pretrained(tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "max_memory": 1, "attention": "triton"}))
    m = AnyUp.from_pretrained(folder)
    assert m.config.max_memory is None and m.config.attention == "auto"
    (folder / "config.json").write_text(json.dumps({**cfg, "num_heads": 0}))
    with pytest.raises(ValueError, match="config.json.*num_heads=0"):
        AnyUp.from_pretrained(folder)
    (folder / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="config.json.*not valid JSON"):
        AnyUp.from_pretrained(folder)


@pytest.mark.parametrize("bad", [{"num_heads": 0}, {"dim": 130}, {"num_groups": 3}, {"dim": 65536}])
def test_arch_check_for_configs_the_model_can_call(tmp_path, tiny_file, bad):
    cfg = {**AnyUpConfig().to_dict(), **bad}
    with pytest.raises(ValueError, match="AnyUpConfig: .*(invalid|must)"):
        _checks.check_arch_fields(cfg, "AnyUpConfig")
    with pytest.raises(ValueError, match="config: "):
        anyup.load(tiny_file, config=AnyUpConfig(**cfg))  # validated before AnyUp(config) allocates


def test_nan_weights_are_refused(tmp_path, limits):
    state = {k: v.contiguous() for k, v in AnyUp(TINY).state_dict().items()}
    key = sorted(state)[0]
    state[key] = torch.full_like(state[key], float("nan"))
    path = _st_with_meta(tmp_path / "nan.safetensors", _ARCH, state)
    with pytest.raises(ValueError, match=f"NaN or inf.*{key}"):
        anyup.load(path)


@pytest.mark.parametrize("bad", [None, 42, 3.5, ["x"], b"anyup_offline"])
def test_load_refuses_non_paths(limits, bad):
    with pytest.raises(TypeError, match="registered name .* or a file path"):
        anyup.load(bad)


def test_load_refuses_folders_and_unknown_names(tmp_path, limits):
    with pytest.raises(ValueError, match="is a folder"):
        anyup.load(tmp_path)
    with pytest.raises(ValueError, match="neither a registered weights name"):
        anyup.load("anyup_nonexistent")
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        anyup.load(tmp_path / "nothere.safetensors")


@pytest.fixture()
def registered(monkeypatch, tmp_path, tiny_file):
    """A registered name whose file lives only on a pretend server, an empty cache, no weights dir."""
    from anyup import weights as W

    spec = W.WeightSpec(
        "fuzz_tiny",
        "fuzz_tiny.safetensors",
        "https://example.invalid/fuzz_tiny.safetensors",
        W.sha256_file(tiny_file),
        "test",
        "test weights",
    )
    monkeypatch.delenv("ANYUP_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("ANYUP_CACHE", raising=False)
    monkeypatch.setenv("ANYUP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with W.WEIGHTS.temporary(spec):
        yield spec


def test_torch_hub_checkpoint_cache_is_used(registered, tmp_path, tiny_file, limits):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / registered.filename).write_bytes(tiny_file.read_bytes())
    assert anyup.weights.resolve_weights("fuzz_tiny") == hub / registered.filename
    assert anyup.load("fuzz_tiny").config.dim == 16


def test_renamed_local_file_fails_the_sha256_check(registered, tmp_path, monkeypatch, limits):
    other = tmp_path / "weights"
    other.mkdir()
    torch.manual_seed(1)
    AnyUp(TINY).save_pretrained(tmp_path / "other")
    (other / registered.filename).write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    monkeypatch.setenv("ANYUP_WEIGHTS_DIR", str(other))
    with pytest.raises(ValueError, match="is not the registered 'fuzz_tiny' .*sha256"):
        anyup.load("fuzz_tiny")


def test_offline_download_fails_fast_and_says_how(registered, limits):
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1.*ANYUP_WEIGHTS_DIR") as info:
        anyup.load("fuzz_tiny")
    assert time.monotonic() - t0 < 5 and "fuzz_tiny.safetensors" in str(info.value)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        AnyUp.from_pretrained("someone/some-anyup")
    assert time.monotonic() - t0 < 5


def test_weights_verify_reports_every_file(registered, monkeypatch, capsys, limits):
    from anyup import weights as W

    spec2 = W.WeightSpec("fuzz_tiny2", "fuzz_tiny2.safetensors", "https://example.invalid/2", "0" * 64, "t", "t")
    with W.WEIGHTS.temporary(spec2):
        assert main(["weights", "verify", "fuzz_tiny", "fuzz_tiny2"]) == 1
    out = capsys.readouterr()
    assert "fuzz_tiny: MISSING" in out.out and "fuzz_tiny2: MISSING" in out.out and "2 of 2" in out.err


def test_cache_env_var_old_spelling_warns(monkeypatch, tmp_path):
    from anyup._env import cache_dir

    monkeypatch.delenv("ANYUP_CACHE_DIR", raising=False)
    monkeypatch.setenv("ANYUP_CACHE", str(tmp_path))
    with pytest.warns(DeprecationWarning, match="ANYUP_CACHE_DIR"):
        assert cache_dir() == tmp_path
    monkeypatch.setenv("ANYUP_CACHE_DIR", str(tmp_path / "new"))
    assert cache_dir() == tmp_path / "new"


# ----------------------------------------------------------------------------- the one-call API
@pytest.fixture(scope="module")
def upsampler(tiny_model):
    return anyup.Upsampler("efficientnet_lite0", tiny_model, pretrained=False, input_size=32)


@pytest.mark.parametrize(
    "image, kwargs, exc, match",
    [
        (torch.rand(3, 0, 0), {}, ValueError, "empty"),
        (torch.rand(3, 16, 16) * 255, {}, ValueError, "0..255"),
        (torch.rand(3, 16, 16), {"output_size": (65536, 65536)}, ValueError, "needs .* but only"),
        (torch.rand(3, 16, 16), {"output_size": (0, 4)}, ValueError, "output_size"),
        (torch.rand(3, 16, 16), {"scale": 0}, ValueError, "scale"),
        (torch.rand(3, 16, 16), {"scale": float("nan")}, ValueError, "scale"),
        ("/nonexistent/photo.jpg", {}, FileNotFoundError, "photo.jpg"),
        (None, {}, TypeError, "None"),
    ],
)
def test_upsampler_refuses_bad_input(upsampler, limits, image, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        upsampler(image, **kwargs)


@pytest.mark.parametrize("input_size", [0, -1, 10**6, True, 2.5, "448"])
def test_upsampler_refuses_bad_input_sizes(tiny_model, limits, input_size):
    with pytest.raises(ValueError, match="input_size must be a positive int up to 4096"):
        anyup.Upsampler("efficientnet_lite0", tiny_model, pretrained=False, input_size=input_size)


def test_upsampler_refuses_a_huge_own_size_input(tiny_model, limits):
    up = anyup.Upsampler("efficientnet_lite0", tiny_model, pretrained=False, input_size=None)
    with pytest.raises(ValueError, match="encoder input would be .* pass a smaller input_size"):
        up(torch.zeros(3, 8192, 4096, dtype=torch.uint8))


def test_upsample_signal_checks_before_work(tiny_file, photo, limits):
    from anyup.signals import upsample_signal

    with pytest.raises(ValueError, match="upsampled signal .* needs"):
        upsample_signal(photo, np.zeros((4, 4), np.float32), (65536, 65536), model=tiny_file, kind="depth")
    with pytest.raises(ValueError, match="empty"):
        upsample_signal(photo, np.zeros((0, 4), np.float32), model=tiny_file, kind="depth")
    with pytest.raises(ValueError, match="NaN or inf"):
        upsample_signal(photo, np.full((4, 4), np.inf, np.float32), model=tiny_file, kind="depth")
    out = upsample_signal(photo, np.arange(16).reshape(4, 4) % 3, model=tiny_file, kind="mask")
    assert out.shape == (40, 56) and set(np.unique(np.asarray(out)).tolist()) <= {0, 1, 2}


def test_upsampler_on_a_thin_strip_is_quick_and_bounded(upsampler, limits):
    res = upsampler(torch.rand(3, 4, 4096))
    assert max(res.input_size) <= 8 * 32 and res.features.shape[-2:] == res.input_size


# ------------------------------------------------------------------------------- files left behind
def test_atomic_write_leaves_nothing_on_failure(tmp_path, limits):
    def boom(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "x.safetensors", boom)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, lambda tmp: None)


def test_stale_temps_of_dead_writers_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    from anyup._atomic import _HOST

    stale = tmp_path / f".chelsea{TEMP_MARK}{pid}@{_HOST}@abc.safetensors"
    live = tmp_path / f".astronaut{TEMP_MARK}{os.getpid()}@{_HOST}@abc.safetensors"
    other_host = tmp_path / f".rocket{TEMP_MARK}{pid}@another-machine@abc.safetensors"
    for p in (stale, live, other_host):
        p.write_bytes(b"x")
    assert clean_stale_temps(tmp_path) == [stale]
    assert live.exists() and other_host.exists()


def test_output_folder_checks(tmp_path, limits):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        ensure_writable_dir(tmp_path / "file")
    with pytest.raises(PermissionError, match="not writable"):
        ensure_writable_dir(tmp_path / "file" / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder(tmp_path, limits):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            ensure_writable_dir(ro / "out")
    finally:
        ro.chmod(0o755)


def test_folder_lock_is_reentrant_in_one_process(tmp_path):
    hold_folder_lock(tmp_path / "run")
    hold_folder_lock(tmp_path / "run")
    assert (tmp_path / "run" / ".anyup.lock").read_text() == str(os.getpid())


# ------------------------------------------------------------------------------------- CLI, in-process
@pytest.fixture()
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["upsample", "{tmp}/missing.jpg", "--out", "{tmp}/o"], "missing.jpg"),
        (["upsample", "{photo}", "--out", "{photo}"], "exists and is not a folder"),
        (["upsample", "{photo}", "--out", "{photo}/sub"], "not writable"),
        (["upsample", "{photo}", "--size", "0x5", "--out", "{tmp}/o"], "size"),
        (["upsample", "{photo}", "--size", "abc", "--out", "{tmp}/o"], "HxW"),
        (["upsample", "{photo}", "--batch-size", "0", "--out", "{tmp}/o"], "batch-size"),
        (["upsample", "{photo}", "--model", "{tmp}/bad.pth", "--out", "{tmp}/o"], "bad.pth"),
        (["upsample", "{photo}", "--model", "no_such_weights", "--out", "{tmp}/o"], "no_such_weights"),
        (["upsample", "{photo}", "--encoder", "no_such_encoder", "--out", "{tmp}/o"], "no_such_encoder"),
        (["upsample-signal", "{photo}", "{tmp}/bad.npy", "--kind", "depth", "--out", "{tmp}/o.npy"], "bad.npy"),
        (
            [
                "upsample-signal",
                "{photo}",
                "{tmp}/nan.npy",
                "--kind",
                "depth",
                "--model",
                "{tiny}",
                "--out",
                "{tmp}/o.npy",
            ],
            "NaN or inf",
        ),
        (["upsample-signal", "{photo}", "{tmp}/nan.npy", "--kind", "depth", "--out", "{tmp}/o.txt"], ".npy"),
        (["weights", "verify", "nope"], "unknown weights 'nope'"),
        (
            [
                "viz",
                "attention",
                "{photo}",
                "--pixel",
                "1000,1000",
                "--model",
                "{tiny}",
                "--input-size",
                "32",
                "--out",
                "{tmp}/a.png",
            ],
            "outside",
        ),
        (["viz", "attention", "{photo}", "--pixel", "a,b", "--model", "{tiny}", "--out", "{tmp}/a.png"], "a,b"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, photo, tiny_file, capsys, limits, argv, match):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "nan.npy", np.full((4, 4), np.nan, np.float32))
    before = set(tmp_path.rglob("*"))
    args = [a.format(tmp=tmp_path, photo=photo, tiny=tiny_file) for a in argv]
    rc, _, err = _cli(capsys, *args)
    assert rc != 0
    _one_line_error(err, args[0])
    assert re.search(match, err), err
    new = set(tmp_path.rglob("*")) - before
    assert not [p for p in new if p.is_file()], new  # nothing written by a failed command
    assert not _leftovers(tmp_path)


def test_cli_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "upsample", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")])
    monkeypatch.setenv("ANYUP_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["upsample", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")])


def test_folder_run_skips_complete_outputs_and_cleans_temps(tmp_path, tiny_file, capsys, limits):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"nope")
    out = tmp_path / "out"
    argv = ["upsample", str(folder), "--model", str(tiny_file), "--input-size", "32", "--no-png", "--out", str(out)]
    rc, stdout, err = _cli(capsys, *argv)
    assert rc == 1 and "wrote 3 of 4 images" in stdout and "broken.png" in err and "Traceback" not in err
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    from anyup._atomic import _HOST

    dead = f".a{TEMP_MARK}999999999@{_HOST}@x.safetensors"  # a temp file of a killed run (no such pid)
    (out / dead).write_bytes(b"partial")
    (out / "b.safetensors").write_bytes(b"truncated")  # damaged: must be redone
    rc, stdout, _ = _cli(capsys, *argv)
    assert "wrote 1 of 4 images" in stdout and "(2 already there)" in stdout
    assert not (out / dead).exists()
    assert (out / "a.safetensors").stat().st_mtime_ns == first["a.safetensors"]
    assert anyup.predictor.result_is_complete(out / "b.safetensors")
    rc, stdout, _ = _cli(capsys, *argv, "--overwrite")
    assert "wrote 3 of 4 images" in stdout and (out / "a.safetensors").stat().st_mtime_ns != first["a.safetensors"]


# ------------------------------------------------------------------------------ CLI, real processes
def _run(args: list[str], cwd: Path, timeout: float = TIME_LIMIT_S) -> tuple[int, str, str, float, int]:
    """``python -m anyup ARGS``: (exit code, stdout, stderr, seconds, peak RSS bytes of the largest child)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("ANYUP_DEBUG", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "anyup", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"anyup {' '.join(args)} ran over {timeout} s\n{err}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
    return proc.returncode, out, err, time.monotonic() - t0, rss


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, match",
    [
        (["upsample", "missing.jpg", "--out", "o"], "missing.jpg"),
        (["upsample", "photo.png", "--model", "evil.pth", "--out", "o"], "(?i)unsupported (global|class)"),
        (["upsample", "photo.png", "--out", "photo.png"], "exists and is not a folder"),
        (["weights", "verify", "nope"], "nope"),
    ],
)
def test_cli_processes_exit_non_zero_with_one_line(tmp_path, argv, match):
    Image.fromarray(_grad(40, 56)).save(tmp_path / "photo.png")
    _Evil.target = str(tmp_path / "pwned")
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": _Evil()}, protocol=2))
    rc, _, err, seconds, _ = _run(argv, tmp_path)
    assert rc != 0 and seconds < TIME_LIMIT_S
    _one_line_error(err, argv[0])
    assert re.search(match, err), err
    assert not (tmp_path / "pwned").exists() and not _leftovers(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("content", ["malicious", "truncated"])
def test_train_resume_refuses_a_bad_last_pt(tmp_path, content):
    from anyup.train import config as C

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    run = tmp_path / "run"
    overrides = [f"run_dir={run}", f"data.root=[{photos}]", "steps=2", "val.num_images=2"]
    C.save_yaml(C.resolve_config(preset="cpu_offline", overrides=overrides), run / "config.yaml")
    (run / "checkpoints").mkdir()
    _Evil.target = str(tmp_path / "pwned")
    good = tmp_path / "good.pt"
    torch.save({"format": 1, "step": 1}, good)
    data = pickle.dumps({"x": _Evil()}, protocol=2) if content == "malicious" else good.read_bytes()[:100]
    (run / "checkpoints" / "last.pt").write_bytes(data)
    rc, _, err, _, _ = _run(["train", "--resume", str(run)], tmp_path, timeout=120)
    assert rc == 1
    _one_line_error(err, "train")
    assert "last.pt" in err and (
        re.search("(?i)unsupported (global|class)", err) if content == "malicious" else "corrupt" in err
    ), err
    assert not (tmp_path / "pwned").exists() and not _leftovers(run)


@pytest.mark.slow
def test_kill_during_a_folder_run_then_resume(tmp_path, tiny_file):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    n = 32  # enough images that a busy machine cannot finish them all between two polls
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "anyup",
        "upsample",
        str(folder),
        "--model",
        str(tiny_file),
        "--input-size",
        "64",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240  # a busy 2-core machine needs a while to import torch and start

    def outputs() -> list[Path]:  # not the writer's hidden temporary files (same suffix), killed mid-write
        return sorted(p for p in out.glob("*.safetensors") if TEMP_MARK not in p.name)

    while time.monotonic() < deadline and proc.poll() is None and len(outputs()) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = outputs()
    assert 3 <= len(done) < n, "the run finished before it could be killed"
    for p in done:  # every visible output is complete
        assert anyup.predictor.result_is_complete(p)
    complete = [p for p in done if (p.parent / f"{p.stem}_pca.png").is_file()]  # features + picture
    assert complete, "no image was complete when the run was killed"
    rc, stdout, err, _, _ = _run(args[3:], tmp_path, timeout=300)
    assert rc == 0, err
    assert f"wrote {n - len(complete)} of {n} images" in stdout and f"({len(complete)} already there)" in stdout, (
        stdout,
        [p.name for p in done],
        [p.name for p in complete],
    )
    assert len(outputs()) == n and not _leftovers(out)


@pytest.mark.slow
def test_second_trainer_on_one_run_folder_is_refused(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from anyup._atomic import hold_folder_lock; hold_folder_lock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)",
            str(tmp_path / "run"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"in use by another process \(pid {holder.pid}\)"):
            hold_folder_lock(tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
    hold_folder_lock(tmp_path / "run")  # the lock died with its process


@pytest.mark.slow
def test_huge_jpeg_is_decoded_reduced(tmp_path, tiny_file):
    side = 8000  # 64 M pixels: ~190 MB as uint8, ~770 MB as float at full size
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (side // 100, side // 100, 3), dtype=np.uint8)
    Image.fromarray(small).resize((side, side), Image.BILINEAR).save(tmp_path / "big.jpg", quality=80)
    del small
    code = (
        "import resource, sys, anyup\n"
        "up = anyup.Upsampler('efficientnet_lite0', sys.argv[1], pretrained=False, input_size=64)\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "res = up(sys.argv[2])\n"
        "print(res.features.shape[-2:], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_file), str(tmp_path / "big.jpg")],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    shape, extra = out.stdout.rsplit(" ", 1)
    assert "64, 64" in shape
    assert int(extra) < 256 << 20, f"loading the image raised the peak RSS by {int(extra) >> 20} MiB"


def test_math_helpers_are_consistent():
    assert _checks.format_bytes(3 * (1 << 30)) == "3.0 GiB"
    assert math.isclose(_checks.parse_memory("1KiB"), 1024)
