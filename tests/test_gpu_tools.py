"""The prepared one-call GPU fine-tune (tools/gpu_carry.py, tools/gpu_train.sh), run on the CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def carry(tmp_path_factory) -> Path:
    """A .gpu_carry built by the real tool from three real photos (the packages' encoder weights)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("easyocr_en_models")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    root = tmp_path_factory.mktemp("gpu")
    photos = root / "src"
    photos.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(skimage_data, name)()).save(photos / f"{name}.png")
    out = root / ".gpu_carry"
    res = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_carry.py"), "--out", str(out), "--photos", str(photos)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_carry_holds_float16_encoders_that_load_and_match_the_packages(carry):
    from anyup.encoders import create

    assert sorted(p.name for p in (carry / "photos").iterdir()) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    assert len(list((carry / "wheels").glob("efficientnet_lite_pytorch-*.whl"))) == 1
    total = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    assert total < 56 << 20
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    for name, layer in (("efficientnet_lite0", "stage4"), ("vgg16_bn_craft", "conv4_3")):
        ref = create(name, layers=layer)
        half = create(name, weights=carry / f"{name}.safetensors", layers=layer)
        with torch.no_grad():
            a, b = ref(x), half(x)
        a, b = (a if torch.is_tensor(a) else a[0]), (b if torch.is_tensor(b) else b[0])
        assert a.shape == b.shape
        assert ((a - b).norm() / a.norm()).item() < 0.02, name  # float16 weights, float32 compute


@pytest.mark.slow
def test_gpu_train_script_dry_run_on_cpu(carry, tmp_path):
    """The whole script on the CPU: train until the time limit kills it, export the last checkpoint."""
    work = tmp_path / "repo"
    (work / "tools").mkdir(parents=True)
    for name in ("gpu_train.sh", "gpu_finetune.yaml"):
        shutil.copy(REPO / "tools" / name, work / "tools" / name)
    shutil.copytree(carry, work / ".gpu_carry")
    encoders = '[{"name":"efficientnet_lite0","layer":"stage4","weights":".gpu_carry/efficientnet_lite0.safetensors"}]'

    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "RUN_DIR": str(tmp_path / "run"),
        "PYTHON": sys.executable,
        "DEVICE": "cpu",
        "TIME_LIMIT": "45s",
        "TRAIN_SET": " ".join(
            [
                "--set data.batch_size=1 --set data.num_workers=0 --set checkpoint.every=1",
                "--set data.input_size=64 --set data.hr_factors=[2] --set num_threads=1",
                f"--set encoders={encoders}",  # JSON: no spaces (TRAIN_SET is split on them)
            ]
        ),
    }
    res = subprocess.run(["bash", str(work / "tools" / "gpu_train.sh")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["init"] == "anyup_offline" and int(meta["step"]) >= 1
    assert '"window_edge": "soft"' in meta["anyup_config"]
    import anyup

    model = anyup.load(str(tmp_path / "out" / "model.safetensors"))
    assert model.config.window_edge == "soft"
