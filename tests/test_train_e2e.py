"""End-to-end training runs on CPU: loss goes down, kill-and-resume is bit-identical, DDP == one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from _toy import ConvEncoder

import anyup
from anyup.train import resolve_config, train
from anyup.train.checkpoint import load_checkpoint
from anyup.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights"
SMALL_MODEL = ["model.dim=32", "model.num_heads=2", "model.num_groups=4"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos (scikit-image samples) at a small size, plus one corrupt file."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "cat", "camera", "horse", "moon"):
        arr = getattr(data, name)()
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        im = Image.fromarray(arr)
        im.thumbnail((96, 96))
        im.save(root / f"{name}.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _cfg(photos: Path, run_dir: Path, *extra: str):
    return resolve_config(
        overrides=[
            f"run_dir={run_dir}",
            f"data.root=[{photos}]",
            "encoders=[toy_conv]",
            "data.input_size=32",
            "data.crops_per_image=2",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.min_size=48",
            "val.num_images=2",
            "val.every=0",
            "val.num_samples=1",
            "log.every=1",
            "log.progress=false",
            "checkpoint.every=2",
            "optim.lr=2e-3",
            "num_threads=1",
            *SMALL_MODEL,
            *extra,
        ]
    )


def _encoders():
    return {"toy_conv": ConvEncoder(stride=4, channels=8, seed=0)}


def _params(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_loss_goes_down_and_outputs_are_written(photos, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="anyup.train")
    losses: list[float] = []
    cfg = _cfg(photos, tmp_path / "run", "steps=40", "val.every=20", "data.batch_size=3")
    path = train(cfg, encoders=_encoders(), on_step=lambda step, m: losses.append(m["loss"]))
    assert len(losses) == 40
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.85 * first, (first, last)
    run = tmp_path / "run"
    assert path == run / "model.safetensors"
    for name in (
        "config.yaml",
        "metrics.csv",
        "checkpoints/last.pt",
        "samples/step_0000020.png",
        "samples/step_0000040.png",
    ):
        assert (run / name).is_file(), name
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(41))  # step 0: the untrained starting point
    val = [r for r in rows if "val_cos_anyup/toy_conv" in r]
    assert [int(r["step"]) for r in val] == [0, 20, 40]
    assert all(-1 <= r["val_cos_anyup/toy_conv"] <= 1 for r in val)
    assert resolve_config(path=run / "config.yaml") == cfg
    # the export loads with anyup.load (architecture given for the reduced width)
    model = anyup.load(path, config=anyup.AnyUpConfig(dim=32, num_heads=2, num_groups=4))
    out = model(torch.randn(1, 3, 16, 16), torch.randn(1, 8, 4, 4))
    assert out.shape == (1, 8, 16, 16)
    # train-eval reproduces the trainer's validation: untrained init = step 0, trained = last step
    from anyup.train.report import evaluate_run, markdown_table, plot_curves

    table = evaluate_run(run, {"same again": str(path)}, encoders=_encoders())
    by = {r["method"]: r["cosine"] for r in table}
    assert by["untrained init"] == pytest.approx(val[0]["val_cos_anyup/toy_conv"], abs=1e-5)
    assert by["trained (model.safetensors)"] == pytest.approx(val[-1]["val_cos_anyup/toy_conv"], abs=1e-5)
    assert by["same again"] == pytest.approx(by["trained (model.safetensors)"], abs=1e-6)
    assert by["bilinear"] == pytest.approx(val[0]["val_cos_bilinear/toy_conv"], abs=1e-5)
    assert (
        markdown_table(table).splitlines()[0]
        == "| encoder | bilinear | untrained init | trained (model.safetensors) | same again |"
    )
    pytest.importorskip("matplotlib")
    assert plot_curves(run, tmp_path / "curve.png", [{"method": "ref", "cosine": 0.5}]).stat().st_size > 1000
    # the corrupt file was counted and reported, not fatal; running the finished run again returns at once
    assert "9 usable, 0 smaller than 48 px, 1 unreadable" in caplog.text
    assert train(cfg, encoders=_encoders()) == path


class _Kill(Exception):
    pass


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(photos, tmp_path):
    steps = ["steps=7", "val.num_images=0"]
    straight = train(_cfg(photos, tmp_path / "a", *steps), encoders=_encoders())

    def kill_at_5(step, metrics):
        if step == 5:  # after step 5 ran but before its checkpoint would exist (last one: step 4)
            raise _Kill

    cfg_b = _cfg(
        photos, tmp_path / "b", *steps, "data.num_workers=1", "checkpoint.keep_every=4"
    )  # workers don't matter
    with pytest.raises(_Kill):
        train(cfg_b, encoders=_encoders(), on_step=kill_at_5)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 4
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "step_0000004.pt")["step"] == 4
    assert not (tmp_path / "b" / "model.safetensors").exists()
    resumed = train(cfg_b, encoders=_encoders())

    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca, cb = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in "ab")
    assert ca["step"] == cb["step"] == 7 and ca["data"] == cb["data"]
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ra, rb = (read_metrics(tmp_path / r / "metrics.csv") for r in "ab")
    assert [(r["step"], r["loss"]) for r in ra] == [(r["step"], r["loss"]) for r in rb]
    # and a different seed really changes the result (the comparison above can fail)
    other = train(_cfg(photos, tmp_path / "c", *steps, "seed=1"), encoders=_encoders())
    assert not all(torch.equal(a[k], _params(other)[k]) for k in a)


@pytest.mark.slow
def test_weight_average_is_validated_exported_and_resumed_exactly(photos, tmp_path):
    """optim.ema_decay: model.safetensors is the average, model_raw.safetensors the last weights."""
    from anyup.train.report import evaluate_run

    steps = ["steps=6", "optim.ema_decay=0.8", "val.num_images=2"]
    straight = train(_cfg(photos, tmp_path / "a", *steps), encoders=_encoders())
    run = tmp_path / "a"
    avg, raw = _params(straight), _params(run / "model_raw.safetensors")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["ema"]["updates"] == 6
    for k in raw:
        assert torch.equal(raw[k], last["model"][k].float()), k
        assert torch.equal(avg[k], last["ema"]["tensors"][k]), k
    assert not all(torch.equal(avg[k], raw[k]) for k in raw)  # the two differ, so the checks above can fail
    # the run's last validation is of the average, the file it exports
    rows = read_metrics(run / "metrics.csv")
    by = {
        r["method"]: r["cosine"]
        for r in evaluate_run(run, {"last weights": str(run / "model_raw.safetensors")}, encoders=_encoders())
    }
    assert by["trained (model.safetensors)"] == pytest.approx(rows[-1]["val_cos_anyup/toy_conv"], abs=1e-5)
    assert by["last weights"] != pytest.approx(by["trained (model.safetensors)"], abs=1e-7)

    def kill_at_3(step, metrics):
        if step == 3:  # checkpoint of step 2 exists, step 3 ran
            raise _Kill

    cfg_b = _cfg(photos, tmp_path / "b", *steps)
    with pytest.raises(_Kill):
        train(cfg_b, encoders=_encoders(), on_step=kill_at_3)
    resumed = _params(train(cfg_b, encoders=_encoders()))
    for k in avg:
        assert torch.equal(avg[k], resumed[k]), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    train(cfg, encoders=_encoders())


@pytest.mark.slow
def test_ddp_two_gloo_processes_equal_one_process_with_the_combined_batch(photos, tmp_path):
    import torch.multiprocessing as mp

    # Adam with eps=1 makes the update ~ lr * gradient, so float-order noise in near-zero gradients is
    # not blown up to +-lr by Adam's normalisation (which would hide real mismatches in a loose tolerance).
    common = ["steps=2", "val.num_images=0", "checkpoint.every=100", "optim.eps=1.0", "optim.lr=0.1"]
    ddp_cfg = _cfg(photos, tmp_path / "ddp", *common, "data.batch_size=1")
    mp.spawn(_ddp_worker, args=(2, _free_port(), ddp_cfg, str(tmp_path)), nprocs=2, join=True)
    single = train(_cfg(photos, tmp_path / "single", *common, "data.batch_size=2"), encoders=_encoders())
    accum = train(
        _cfg(photos, tmp_path / "accum", *common, "data.batch_size=1", "optim.accum_steps=2"), encoders=_encoders()
    )
    d, s, a = _params(tmp_path / "ddp" / "model.safetensors"), _params(single), _params(accum)
    i = _params(train(_cfg(photos, tmp_path / "init", *common, "optim.lr=1e-12", "steps=1"), encoders=_encoders()))
    moved = 0
    for k in s:
        torch.testing.assert_close(d[k], s[k], rtol=1e-5, atol=1e-7, msg=k)
        torch.testing.assert_close(a[k], s[k], rtol=1e-5, atol=1e-7, msg=k)
        moved += int(not torch.allclose(s[k], i[k], atol=1e-4))
    assert moved > 10  # the two steps really changed the parameters
    rows = read_metrics(tmp_path / "ddp" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]  # rank 0 alone writes the log


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_WEIGHTS / "anyup_multi_backbone.pth").is_file(), reason="published weights missing")
def test_fine_tune_starts_from_published_weights(photos, tmp_path):
    ref = anyup.load(SHARED_WEIGHTS / "anyup_multi_backbone.pth").state_dict()
    cfg = _cfg(photos, tmp_path / "ft", "steps=1", "val.num_images=0", f"init={SHARED_WEIGHTS / 'anyup_multi_backbone.pth'}",
               "optim.lr=1e-7", "model={}")  # fmt: skip
    out = _params(train(cfg, encoders=_encoders()))
    for k, v in ref.items():
        torch.testing.assert_close(out[k], v, atol=1e-6, rtol=0, msg=k)
    assert not all(torch.equal(out[k], v) for k, v in ref.items())  # one step was taken


@pytest.mark.slow
def test_cli_runs_with_a_registry_encoder_and_resumes(photos, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    from anyup.cli import main

    argv = ["train", "--preset", "cpu_offline", "--data", str(photos), "--out", str(tmp_path / "run"), "--steps", "2",
            "--set", "encoders=[{name: efficientnet_lite0, pretrained: false}]", "data.input_size=32",
            "data.min_size=48", "data.num_workers=0", "val.num_images=1", "val.num_samples=1", "checkpoint.every=1",
            "num_threads=1", "log.progress=false", *SMALL_MODEL]  # fmt: skip
    assert main(argv) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == tmp_path / "run" / "model.safetensors" and out.is_file()
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()
    first = _params(out)
    argv[argv.index("--steps") + 1] = "3"  # the same command with more steps continues the run
    assert main(argv) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3
    assert not all(torch.equal(first[k], v) for k, v in _params(out).items())
