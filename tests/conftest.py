"""Shared fixtures: the read-only ``../shared`` folder (weights, golden outputs), a random-init model file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _require(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must provide ../shared beside the repository")
        pytest.skip(f"{path} not present (the read-only ../shared folder is only on project machines)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def weights_dir(shared_dir: Path) -> Path:
    return _require(shared_dir / "weights")


@pytest.fixture(scope="session")
def golden_file(shared_dir: Path) -> Path:
    return _require(shared_dir / "golden" / "anyup_reference.npz")


@pytest.fixture()
def published_weights_env(weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make ``anyup.load("anyup_multi_backbone")`` resolve to ../shared/weights."""
    monkeypatch.setenv("ANYUP_WEIGHTS_DIR", str(weights_dir))
    return weights_dir


@pytest.fixture(scope="session")
def random_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init AnyUp (seed 0) saved as safetensors: exercises loading without the published weights."""
    import torch
    from safetensors.torch import save_file

    from anyup.model import AnyUp

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "anyup_random.safetensors"
    save_file(AnyUp().state_dict(), str(path))
    return path


@pytest.fixture()
def one_thread():
    """Run the test with one torch thread (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def ieee_float32():
    """float32 convolutions and GEMMs in full float32 on CUDA (PyTorch lets cuDNN convolutions use
    TF32 by default, about 1e-3 relative: the dense reference's 1x1 convs would, the engine's
    GEMMs would not, and the two would differ by that, not by the engine).

    Saved and restored by hand: the two flags are properties of torch's backend modules, not
    attributes, and pytest >= 9.2's ``monkeypatch`` then tries to delete them on teardown."""
    import torch

    flags = (torch.backends.cudnn, torch.backends.cuda.matmul)
    old = [f.allow_tf32 for f in flags]
    for f in flags:
        f.allow_tf32 = False
    try:
        yield
    finally:
        for f, value in zip(flags, old, strict=True):
            f.allow_tf32 = value
