"""Checkpoint registry, strict loading, safetensors, hub entry points, safety."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import anyup
from anyup import weights as W
from anyup.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No weights dir, an empty cache, and downloads that fail like an offline machine."""
    monkeypatch.delenv("ANYUP_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("ANYUP_CACHE_DIR", str(tmp_path / "cache"))

    def refuse(url, dest, sha):
        raise OSError("network unreachable")

    monkeypatch.setattr(W, "_download", refuse)
    return tmp_path


def test_published_checkpoints_load_strictly_by_name(published_weights_env):
    for name in ("anyup_paper", "anyup_multi_backbone"):
        m = anyup.load(name)
        assert not m.training
        assert sum(p.numel() for p in m.parameters()) == 878_080
        path = W.resolve_weights(name, download=False)
        assert W.sha256_file(path) == W.available_weights()[name].sha256


def test_offline_error_says_how_to_pass_a_file(offline):
    with pytest.raises(RuntimeError) as exc:
        anyup.load("anyup_multi_backbone")
    msg = str(exc.value)
    assert "anyup_multi_backbone.pth" in msg and "ANYUP_WEIGHTS_DIR" in msg and "--model" in msg
    assert not any((offline / "cache").glob("*.part"))  # nothing half-written left behind


def test_download_is_verified_and_atomic(monkeypatch, tmp_path):
    src = tmp_path / "remote.bin"
    src.write_bytes(b"not the real weights")
    dest = tmp_path / "cache" / "w.pth"
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        W._download(src.as_uri(), dest, "0" * 64)
    assert not dest.exists() and not list(dest.parent.glob("*.part"))
    W._download(src.as_uri(), dest, W.sha256_file(src))
    assert dest.read_bytes() == src.read_bytes()


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    m = anyup.AnyUp()
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    m2 = anyup.load(path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])


def test_save_pretrained_from_pretrained(tmp_path):
    torch.manual_seed(0)
    m = anyup.AnyUp(anyup.AnyUpConfig(window_ratio=0.2))
    m.save_pretrained(tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    m2 = anyup.AnyUp.from_pretrained(str(tmp_path / "hf"))
    assert m2.window_ratio == 0.2
    x, f = torch.randn(1, 3, 12, 12), torch.randn(1, 3, 3, 3)
    with torch.no_grad():
        assert torch.equal(m.eval()(x, f), m2(x, f))


def test_strict_key_check_names_the_problem(tmp_path):
    sd = anyup.AnyUp().state_dict()
    sd.pop("rope.freqs")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing keys \['rope.freqs'\].*unexpected keys \['extra.weight'\]"):
        anyup.load(path)
    sd = anyup.AnyUp().state_dict()
    sd["rope.freqs"] = torch.zeros(3, 128)
    torch.save(sd, path)
    with pytest.raises(ValueError, match="shape mismatches"):
        anyup.load(path)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.target),))


def test_foreign_or_corrupt_files_never_execute_pickles(tmp_path):
    _Evil.target = str(tmp_path / "pwned")
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    with pytest.raises(ValueError, match="not a plain PyTorch state dict"):
        anyup.load(evil)
    assert not (tmp_path / "pwned").exists()
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError):
        anyup.load(corrupt)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="safetensors"):
        anyup.load(bad_st)
    with pytest.raises(ValueError, match="neither a registered weights name"):
        anyup.load("no_such_weights")
    with pytest.raises(FileNotFoundError):
        anyup.load(tmp_path / "missing.pth")


def test_hubconf_entry_points(published_weights_env):
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    assert "torch" in hub.dependencies
    m = hub.anyup_multi_backbone(pretrained=True, device="cpu")
    ref = anyup.load("anyup_multi_backbone")
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in m.state_dict().items())
    assert isinstance(hub.anyup(pretrained=False), anyup.AnyUp)


def test_weights_cli(published_weights_env, capsys):
    assert cli_main(["weights", "list"]) == 0
    assert "anyup_paper" in capsys.readouterr().out
    assert cli_main(["weights", "verify", "anyup_paper"]) == 0
    assert "sha256 OK" in capsys.readouterr().out
    assert cli_main(["weights", "verify", "nope"]) == 1


def test_load_reads_architecture_from_safetensors_metadata(tmp_path):
    """A reduced-width export (anyup train, save_pretrained) loads by path alone."""
    from anyup import AnyUp, AnyUpConfig

    small = AnyUp(AnyUpConfig(dim=32, num_heads=2)).eval()
    folder = small.save_pretrained(tmp_path / "small")
    model = anyup.load(folder / "model.safetensors")
    assert model.config.dim == 32 and model.config.num_heads == 2
    for k, v in small.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    # an explicit config still wins, and a mismatch fails the strict shape check
    with pytest.raises(ValueError, match="shape"):
        anyup.load(folder / "model.safetensors", config=AnyUpConfig())
