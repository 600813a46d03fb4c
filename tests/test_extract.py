"""anyup extract: sources, stores, resume, and the Ray engine on a local 2-worker cluster killed mid-run."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anyup.extract import ExtractConfig, list_items, open_store, read_item, run

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from anyup.cli import main; sys.exit(main())"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "hubble_deep_field", "immunohistochemistry")


def _make_images(folder: Path, n: int) -> list[Path]:
    """n distinct 64x96 crops of scikit-image's photos."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        photo = np.asarray(getattr(skimage_data, PHOTOS[i % len(PHOTOS)])())
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, -1)
        h, w = photo.shape[:2]
        y, x = (i * 37) % (h // 2), (i * 53) % (w // 2)
        crop = Image.fromarray(photo[y : y + h // 2, x : x + w // 2, :3]).resize((96, 64), Image.BILINEAR)
        paths.append(folder / f"img{i:03d}.png")
        crop.save(paths[-1])
    return paths


def _config(out: Path, **kw) -> ExtractConfig:
    base = dict(out=str(out), input_size=64, batch_size=2, threads=1)
    base.update(kw)
    return ExtractConfig(**base)


def _items_equal(a: Path, b: Path, keys) -> None:
    for k in keys:
        x, y = read_item(a, k), read_item(b, k)
        assert x["features"].dtype == y["features"].dtype
        assert torch.equal(x["features"], y["features"]), k
        assert torch.equal(x["lowres"], y["lowres"]), k


def test_sources_folder_list_and_shards(tmp_path):
    paths = _make_images(tmp_path / "imgs" / "sub", 3)
    listing = tmp_path / "list.txt"
    listing.write_text("# two of them\n" + "\n".join(str(p.relative_to(tmp_path)) for p in paths[:2]) + "\n")
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, p in enumerate(paths):
            tar.add(p, arcname=f"s{i}.png")
            info = tarfile.TarInfo(f"s{i}.cls")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"1"))
    items = list_items([str(tmp_path / "imgs")])
    assert [it["key"] for it in items] == ["sub__img000", "sub__img001", "sub__img002"]
    assert [it["key"] for it in list_items([str(listing)])] == ["imgs__sub__img000", "imgs__sub__img001"]
    shard_items = list_items([str(tmp_path / "shard-{000..000}.tar")])
    expected = [("shard-000__s0", "s0.png"), ("shard-000__s1", "s1.png"), ("shard-000__s2", "s2.png")]
    assert [(it["key"], it["member"]) for it in shard_items] == expected
    with pytest.raises(ValueError, match="give the item key"):
        list_items([str(tmp_path / "imgs"), str(tmp_path / "imgs")])
    with pytest.raises(FileNotFoundError, match="input not found"):
        list_items([str(tmp_path / "missing")])


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_local_resume_pca_and_dtypes(tmp_path, fmt, one_thread):
    imgs = _make_images(tmp_path / "imgs", 5)
    shard = tmp_path / "part.tar"
    with tarfile.open(shard, "w") as tar:  # one item comes from a webdataset shard
        tar.add(imgs[-1], arcname="extra.png")
    imgs[-1].unlink()
    inputs = [str(tmp_path / "imgs"), str(shard)]
    out = tmp_path / ("a.zarr" if fmt == "zarr" else "a_wds")
    cfg = _config(out, format=fmt, pca=6, dtype="bfloat16" if fmt == "wds" else "float16")
    s = run(inputs, cfg, engine="local", progress=False)
    assert (s.total, s.skipped, s.written, s.failed) == (5, 0, 5, {})
    item = read_item(out, "part__extra")
    assert item["features"].shape == (6, 64, 96) and item["features"].dtype == cfg_dtype(cfg)
    assert item["lowres"].shape == (112, 4, 6)
    assert item["metadata"]["source"].endswith("part.tar:extra.png")

    # the stored features are the PCA projection (on the stored basis) of the full AnyUp output
    from anyup.predictor import Upsampler

    full = Upsampler(input_size=64)(str(tmp_path / "imgs" / "img000.png")).features[0]  # (112, 64, 96)
    basis = open_store(out, fmt).load_pca()
    expected = basis.project(full).to(cfg_dtype(cfg))
    assert torch.equal(read_item(out, "img000")["features"], expected)

    if fmt == "wds":  # the shards read with the webdataset library itself
        wds = pytest.importorskip("webdataset")
        from safetensors.torch import load

        shards = [str(p) for p in sorted(out.glob("part-*.tar"))]
        samples = list(wds.WebDataset(shards, shardshuffle=False))
        assert sorted(x["__key__"] for x in samples) == sorted(["img000", "img001", "img002", "img003", "part__extra"])
        first = next(x for x in samples if x["__key__"] == "img000")
        assert torch.equal(load(first["safetensors"])["features"], read_item(out, "img000")["features"])

    again = run(inputs, cfg, engine="local", progress=False)
    assert (again.skipped, again.written) == (5, 0)
    with pytest.raises(ValueError, match="other settings.*dtype"):
        run(inputs, _config(out, format=fmt, pca=6, dtype="float32"), engine="local", progress=False)


def cfg_dtype(cfg: ExtractConfig) -> torch.dtype:
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]


def test_zarr_incomplete_item_is_redone(tmp_path, one_thread):
    pytest.importorskip("zarr")
    _make_images(tmp_path / "imgs", 3)
    out = tmp_path / "b.zarr"
    cfg = _config(out)
    run([str(tmp_path / "imgs")], cfg, engine="local", progress=False)
    store = open_store(out, "zarr")
    before = read_item(out, "img001")
    store.features["img001"].attrs["complete"] = False  # as if killed while writing it
    store.features["img001"][...] = 0
    assert store.completed() == {"img000", "img002"}
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")  # one unreadable image
    s = run([str(tmp_path / "imgs")], cfg, engine="local", progress=False)
    assert (s.total, s.skipped, s.written) == (4, 2, 1)
    assert list(s.failed) == ["broken"] and "cannot read image" in s.failed["broken"]
    assert torch.equal(read_item(out, "img001")["features"], before["features"])
    assert store.completed() == {"img000", "img001", "img002"}  # the failed item is retried next time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zarr_store_opens_while_another_process_creates_it(tmp_path, monkeypatch):
    """Two processes opening a new zarr store at once (the Ray driver and a reader did, in CI): zarr
    looks, the other process creates the group, zarr's create then raises ContainsGroupError. The
    store looks again and opens what the other one made; a store that keeps failing still raises."""
    zarr = pytest.importorskip("zarr")
    from anyup.extract import stores

    real = zarr.open_group
    calls = []

    def racing_open(path, mode="a", **kw):
        calls.append(path)
        if len(calls) == 1:  # the other process wins the race
            other = real(path, mode="a")
            other.require_group("features")
            other.attrs["made_by"] = "the other process"
            raise zarr.errors.ContainsGroupError(path)
        return real(path, mode=mode, **kw)

    monkeypatch.setattr(zarr, "open_group", racing_open)
    store = stores.ZarrStore(tmp_path / "race.zarr")
    assert len(calls) == 2 and store.root.attrs["made_by"] == "the other process"
    assert store.completed() == set()

    def always_losing(path, mode="a", **kw):
        raise zarr.errors.ContainsGroupError(path)

    monkeypatch.setattr(zarr, "open_group", always_losing)
    monkeypatch.setattr(stores.time, "sleep", lambda s: None)
    with pytest.raises(zarr.errors.ContainsGroupError):
        stores.ZarrStore(tmp_path / "never.zarr")


@pytest.mark.slow
def test_ray_two_workers_killed_and_resumed(tmp_path):
    """40 images on a local 2-CPU Ray cluster; the driver is killed mid-run and the same command resumed:
    40 complete items, none missing or duplicated, each equal to the single-process result."""
    pytest.importorskip("ray")
    pytest.importorskip("zarr")
    _make_images(tmp_path / "imgs", 40)
    inputs = [str(tmp_path / "imgs")]

    # the single-process reference
    ref = tmp_path / "ref.zarr"
    s = run(inputs, _config(ref, pca=8), engine="local", progress=False)
    assert s.written == 40

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0")
    port = _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        # this interpreter's Ray (workers run the head's Python: the `ray` on PATH may be another one)
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=150000000",
         f"--temp-dir={ray_tmp}", "--node-ip-address=127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    out = tmp_path / "ray.zarr"
    cmd = [sys.executable, "-c", CLI, "extract", *inputs, "--out", str(out), "--input-size", "64", "--pca", "8",
           "--batch-size", "2", "--threads", "1", "--engine", "ray", "--address", f"127.0.0.1:{port}"]  # fmt: skip
    try:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        done = 0
        while time.monotonic() < deadline and first.poll() is None:
            time.sleep(1)
            if out.is_dir():
                done = len(open_store(out, "zarr").completed())
                if done >= 8:
                    break
        assert first.poll() is None, f"the first run ended before it could be killed:\n{first.communicate()[0]}"
        os.killpg(first.pid, signal.SIGKILL)  # the driver and anything it started
        first.wait()
        killed_at = len(open_store(out, "zarr").completed())
        assert 0 < killed_at < 40

        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stdout + second.stderr
        m = re.search(r"40 items: (\d+) already in .*, (\d+) written, 0 failed \(ray, 2 workers\)", second.stdout)
        assert m, second.stdout + second.stderr
        skipped, written = int(m.group(1)), int(m.group(2))
        assert killed_at <= skipped < 40 and skipped + written == 40
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    store = open_store(out, "zarr")
    keys = {f"img{i:03d}" for i in range(40)}
    assert store.completed() == keys
    assert sorted(k for k, _ in store.features.arrays()) == sorted(keys)  # nothing extra, nothing twice
    assert torch.equal(store.load_pca().components, open_store(ref, "zarr").load_pca().components)
    _items_equal(out, ref, sorted(keys))
