"""Device markers shared by the tests: CUDA cases skip, naming the reason, where no GPU is present."""

from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]  # parametrize("device", DEVICES)
