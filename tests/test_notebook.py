"""examples/quickstart.ipynb runs top to bottom, offline, with nbclient."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("sklearn")
    pytest.importorskip("skimage")
    # the kernel is a subprocess: it must import this checkout's anyup, offline, headless
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}  # the kernel's working directory
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources=resources)
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "low-res (1, 112, 14, 14) -> AnyUp (1, 112, 224, 224)" in text
    assert "AnyUp: scribble accuracy" in text
    grads = dict(re.findall(r"(bilinear|AnyUp): mean \|grad\| of the mask ([0-9.]+)", text))
    assert float(grads["AnyUp"]) > float(grads["bilinear"])  # the probe's mask is sharper on AnyUp features
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # PCA row, attention row, probe masks
