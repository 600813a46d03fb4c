"""End-to-end: `anyup eval run` and the analyses on a tiny fake labelled dataset."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass

import pytest
import torch

from anyup.eval import datasets as D
from anyup.eval.protocols import get_protocol, parse_overrides
from anyup.eval.report import COLUMNS, ResultRow, comparison, read_csv, write_csv

FAKE = "_test_blocks"


@dataclass
class _FakeConfig(D.DatasetConfig):
    n: int = 6


class _FakeDataset(D.DenseDataset):
    """Two-class images: a bright square on a dark background, with depth and normals per class."""

    name = FAKE
    tasks = ("seg", "depth", "normals")
    num_classes = 2

    def __init__(self, root, split, config):
        super().__init__(split, config)
        self.items = list(range(config.n))
        self.seed = 0 if split == "train" else 100

    def load(self, index):
        g = torch.Generator().manual_seed(self.seed + index)
        h, w = 48, 64
        y0, x0 = int(torch.randint(4, 20, (1,), generator=g)), int(torch.randint(4, 30, (1,), generator=g))
        seg = torch.zeros(h, w, dtype=torch.long)
        seg[y0 : y0 + 20, x0 : x0 + 24] = 1
        seg[0, 0] = 255  # one ignored pixel
        image = 0.2 + 0.6 * seg.clamp(max=1).float()[None].expand(3, h, w) + 0.05 * torch.rand(3, h, w, generator=g)
        depth = torch.where(seg == 1, torch.tensor(2.0), torch.tensor(4.0))
        normals = torch.zeros(3, h, w)
        normals[2] = -1.0
        normals[0] = 0.3 * seg.clamp(max=1).float()
        return D.add_valid_masks(
            {"image": image.clamp(0, 1), "seg": seg, "depth": depth, "normals": normals, "name": f"{self.split}{index}"}
        )


@pytest.fixture(scope="module", autouse=True)
def fake_dataset():
    try:
        D.get_spec(FAKE)
    except ValueError:
        D.register(
            D.DatasetSpec(
                FAKE,
                "test blocks",
                _FakeConfig,
                lambda root, split, cfg: _FakeDataset(root, split, cfg),
                tasks=("seg", "depth", "normals"),
                needs_root=False,
            )
        )
    yield


SETS = [
    "image_size=64",
    "fidelity_image_size=64",
    "depth_bins=8",
    "epochs=1",
    "min_steps=0",
    "seeds=0,1",
    "max_train_images=3",
    "max_eval_images=3",
    "fidelity_max_images=3",
]
TINY = [a for kv in SETS for a in ("--set", kv)] + ["--no-progress", "--random-init"]


def _methods() -> str:
    from anyup import baselines as B

    extra = [m for m in ("jbu", "anyup") if m in B.list_methods() and B.available(m)[0]]
    return ",".join(["nearest", "bilinear"] + extra)


@pytest.mark.slow
def test_cli_run_end_to_end(tmp_path):
    from anyup.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "eval",
            "run",
            "--datasets",
            f"{FAKE},photos",
            "--encoders",
            "efficientnet_lite0",
            "--methods",
            _methods(),
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            *TINY,
        ]
    )
    assert code == 0
    with open(out / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header) == COLUMNS
    rows = read_csv(out / "results.csv")
    assert rows and all(math.isfinite(r.value) for r in rows)
    tasks = {r.task for r in rows}
    assert {"seg", "depth", "normals", "fidelity"} <= tasks
    assert {r.seed for r in rows if r.task == "seg"} == {0, 1}
    assert all(r.seed is None for r in rows if r.task == "fidelity")
    assert {r.dataset for r in rows if r.task == "fidelity"} == {FAKE, "photos"}
    md = (out / "results.md").read_text()
    assert f"`offline` v1 (hash `{get_protocol('offline', **parse_overrides(SETS)).hash}`)" in md
    assert "offline" in md and "hash `" in md and "torch" in md and "Date:" in md
    assert list(out.glob("*.png"))
    assert not list(out.glob(".*tmp"))
    # second run: encoder features come from the cache
    code = main(
        [
            "eval",
            "run",
            "--datasets",
            FAKE,
            "--encoders",
            "efficientnet_lite0",
            "--methods",
            "bilinear",
            "--tasks",
            "seg",
            "--out",
            str(tmp_path / "run2"),
            "--cache",
            str(tmp_path / "cache"),
            *TINY,
        ]
    )
    assert code == 0
    assert re.search(r"\(\d+ hits, [1-9]\d* misses\)", md)
    assert re.search(r"\([1-9]\d* hits, 0 misses\)", (tmp_path / "run2" / "results.md").read_text())


def test_cli_errors_are_clear(tmp_path, capsys):
    from anyup.cli import main

    assert main(["eval", "run", "--datasets", "nope", "--out", str(tmp_path), "--no-progress"]) == 1
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert main(["eval", "run", "--set", "colour=red", "--out", str(tmp_path)]) == 1
    assert "unknown protocol field" in capsys.readouterr().err
    assert main(["eval", "protocols"]) == 0
    out = capsys.readouterr().out
    assert "offline@" in out and "jafar@" in out and "probe3d@" in out


@pytest.mark.slow
def test_analyses_smoke(tmp_path):
    from anyup.cli import main

    common = ["--dataset", FAKE, "--fidelity-dataset", FAKE, "--cache", str(tmp_path / "cache"), *TINY]
    assert main(["eval", "probe-consistency", "--out", str(tmp_path / "pc"), *common]) == 0
    rows = read_csv(tmp_path / "pc" / "results.csv")
    assert {r.task for r in rows} == {"seg/lowres_logits_probe", "seg/lowres_labels_probe", "seg/native_probe"}
    assert {r.method for r in rows} == {"anyup", "bilinear"}

    assert main(["eval", "window-size", "--ratios", "0.05,0.4", "--out", str(tmp_path / "ws"), *common]) == 0
    rows = read_csv(tmp_path / "ws" / "results.csv")
    assert {r.method for r in rows} == {"bilinear", "anyup[r=0.05]", "anyup[r=0.4]"}
    assert list((tmp_path / "ws").glob("window_*.png"))

    assert main(["eval", "attention", "--images", "2", "--pixels", "4", "--out", str(tmp_path / "at"), *common]) == 0
    rows = {r.method + "/" + r.metric: r.value for r in read_csv(tmp_path / "at" / "results.csv")}
    assert 0.0 <= rows["anyup/same_class_mass"] <= 1.0 + 1e-6
    assert 0.0 <= rows["bilinear/same_class_mass"] <= 1.0 + 1e-6
    assert rows["anyup/pixels"] == 8
    assert (tmp_path / "at" / "attention_0.png").is_file()


def test_comparison_verdicts(tmp_path):
    rows = [ResultRow("d", "e", "anyup", "seg", "miou", v, s) for v, s in [(0.6, 0), (0.62, 1)]]
    rows += [ResultRow("d", "e", "bilinear", "seg", "miou", v, s) for v, s in [(0.5, 0), (0.51, 1)]]
    rows += [
        ResultRow("d", "e", "anyup", "depth", "rmse", 0.5, 0),
        ResultRow("d", "e", "bilinear", "depth", "rmse", 0.4, 0),
    ]
    rows += [
        ResultRow("d", "e", "anyup", "fidelity", "cos", 0.9, None),
        ResultRow("d", "e", "bilinear", "fidelity", "cos", 0.9, None),
    ]
    verdicts = {(c[2], c[3]): c[-1] for c in comparison(rows)}
    assert verdicts == {("seg", "miou"): "better", ("depth", "rmse"): "worse", ("fidelity", "cos"): "tie"}
    write_csv(rows, tmp_path / "r.csv")
    assert read_csv(tmp_path / "r.csv") == [
        ResultRow(r.dataset, r.encoder, r.method, r.task, r.metric, float(f"{r.value:.6g}"), r.seed) for r in rows
    ]


def test_hub_encoders_skipped_after_first_failure(tmp_path, monkeypatch):
    from anyup import encoders as E
    from anyup.eval import runner

    hub = [n for n in E.list_encoders() if not E.get_spec(n).offline][:3]
    if len(hub) < 2:
        pytest.skip("needs at least two hub encoders in the registry")
    tried = []

    def fake_create(name, pretrained):
        tried.append(name)
        raise RuntimeError(f"could not fetch the pretrained weights of encoder {name!r}\nmore")

    monkeypatch.setattr(runner, "create_encoder", fake_create)
    # asked for by name: the first failure is an error (exit 1 on the command line)
    with pytest.raises(RuntimeError, match=f"requested encoder '{hub[0]}' cannot run here"):
        runner.run(
            runner.RunOptions(
                out=tmp_path,
                datasets=["photos"],
                encoders=hub,
                methods=["bilinear"],
                tasks=["fidelity"],
                cache_dir=tmp_path / "c",
                progress=False,
            )
        )
    assert tried == hub[:1]
    # from a suite's defaults: skipped after the first hub failure, and 0 results is an error too
    tried.clear()
    suite = runner.Suite(
        name="hubs",
        datasets=("photos",),
        encoders=tuple(hub),
        methods=None,
        protocols=dict(runner.SUITES["offline"].protocols),
        fidelity_datasets=("photos",),
    )
    monkeypatch.setitem(runner.SUITES, "hubs", suite)
    with pytest.raises(RuntimeError, match="nothing could run, 0 results"):
        runner.run(
            runner.RunOptions(
                out=tmp_path,
                suite="hubs",
                methods=["bilinear"],
                tasks=["fidelity"],
                cache_dir=tmp_path / "c",
                progress=False,
            )
        )
    assert tried == hub[:1]
    md = (tmp_path / "results.md").read_text()
    assert all(f"encoder {n}" in md for n in hub) and "unreachable" in md


def test_paper_suite_without_data_fails_fast(tmp_path, monkeypatch, capsys):
    from anyup.cli import main
    from anyup.eval import runner

    def no_encoders(name, pretrained):
        raise AssertionError("no encoder may be built before the datasets are known to be there")

    monkeypatch.setattr(runner, "create_encoder", no_encoders)
    assert main(["eval", "run", "--suite", "paper", "--out", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "need their folders" in err and "--root cocostuff=FOLDER" in err and "--root voc=FOLDER" in err


def test_requested_method_that_cannot_run_exits_nonzero(tmp_path, monkeypatch, capsys):
    import anyup.weights as W
    from anyup.cli import main

    monkeypatch.delenv("ANYUP_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(W, "cache_dir", lambda: tmp_path / "weights")
    monkeypatch.setattr(W, "_download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    code = main(
        [
            "eval",
            "run",
            "--datasets",
            FAKE,
            "--encoders",
            "efficientnet_lite0",
            "--methods",
            "bilinear,anyup",
            "--method-set",
            "anyup.weights=anyup_paper",
            "--tasks",
            "fidelity",
            "--out",
            str(tmp_path / "r"),
            "--no-cache",
            *TINY,
        ]
    )
    assert code == 1
    assert (
        "requested method 'anyup' cannot run here: anyup: weights 'anyup_paper' unavailable" in capsys.readouterr().err
    )


def test_anyup_runs_offline_with_the_shipped_weights(tmp_path, monkeypatch):
    import anyup.weights as W
    from anyup import baselines as B
    from anyup.cli import main

    monkeypatch.setattr(W, "_download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    assert B.available("anyup") == (True, "")
    code = main(
        [
            "eval",
            "run",
            "--datasets",
            FAKE,
            "--encoders",
            "efficientnet_lite0",
            "--methods",
            "bilinear,jbu,anyup",
            "--tasks",
            "fidelity",
            "--out",
            str(tmp_path),
            "--no-cache",
            *TINY,
        ]
    )
    assert code == 0
    assert {r.method for r in read_csv(tmp_path / "results.csv")} == {"bilinear", "jbu", "anyup"}


def test_split_pixels_halves():
    from anyup.eval.probes import ProbeSample
    from anyup.eval.runner import split_pixels

    s = ProbeSample(
        name="a",
        image=torch.zeros(3, 4, 6, dtype=torch.uint8),
        features=torch.zeros(2, 1, 1),
        seg=torch.ones(4, 6, dtype=torch.long),
        depth=torch.ones(4, 6),
        depth_valid=torch.ones(4, 6, dtype=torch.bool),
    )
    (left,), (right,) = split_pixels([s], ignore_index=255)
    assert left.depth_valid[:, :3].all() and not left.depth_valid[:, 3:].any()
    assert right.depth_valid[:, 3:].all() and not right.depth_valid[:, :3].any()
    assert (left.seg[:, 3:] == 255).all() and (right.seg[:, :3] == 255).all()
    assert left.features is s.features and s.depth_valid.all()  # shared tensors, original untouched


def test_no_cache_writes_no_feature_files(tmp_path, monkeypatch):
    from anyup.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANYUP_CACHE_DIR", str(tmp_path / "default_cache"))
    out = tmp_path / "out"
    assert (
        main(["eval", "fidelity", "--datasets", FAKE, "--methods", "bilinear", "--out", str(out), "--no-cache", *TINY])
        == 0
    )
    assert not list(tmp_path.rglob("*.safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert len(read_csv(out / "results.csv")) == 2


def test_encoder_name_with_layer():
    """``name@layer`` selects a non-default layer (e.g. a stage held out of training)."""
    from anyup.eval.runner import create_encoder

    default = create_encoder("efficientnet_lite0", pretrained=False)
    stage5 = create_encoder("efficientnet_lite0@stage5", pretrained=False)
    assert [layer.name for layer in stage5.info.layers] == ["stage5"] and stage5.info.stride == 32
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert default(x)[0].shape == (1, 112, 4, 4) and stage5(x)[0].shape == (1, 192, 2, 2)
    with pytest.raises(ValueError, match="stage9"):
        create_encoder("efficientnet_lite0@stage9", pretrained=False)
