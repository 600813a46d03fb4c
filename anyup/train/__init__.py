"""Training AnyUp: the paper's recipe for any encoder, one CPU to many GPUs, resumable bit for bit.

>>> from anyup.train import resolve_config, train
>>> cfg = resolve_config(preset="cpu_offline", overrides=["data.root=[photos/]", "run_dir=runs/demo"])

A real run, made tiny (two steps of a small model on four generated pictures, a few seconds on a CPU):

>>> import numpy as np
>>> from pathlib import Path
>>> from PIL import Image
>>> Path("photos").mkdir()
>>> rng = np.random.default_rng(0)
>>> for i in range(4):
...     Image.fromarray((rng.random((128, 160, 3)) * 255).astype(np.uint8)).save(f"photos/{i}.png")
>>> tiny = ["steps=2", "data.input_size=64", "data.num_workers=0", "val.every=0", "val.num_images=1",
...         "log.progress=false", "model.dim=32", "model.num_heads=2", "model.num_groups=4"]
>>> cfg = resolve_config(preset="cpu_offline", overrides=["data.root=[photos/]", "run_dir=runs/demo", *tiny])
>>> train(cfg).as_posix()
'runs/demo/model.safetensors'

Command line: ``anyup train --preset cpu_offline --data DIR --out RUN_DIR --steps N`` (or
``python -m anyup.train ...``; under ``torchrun`` for several processes).
"""

from __future__ import annotations

from anyup._deprecation import deprecated_aliases
from anyup.train.config import (
    PRESETS,
    AugmentConfig,
    CheckpointConfig,
    DataConfig,
    LogConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
    TrainEncoderSpec,
    ValConfig,
    config_from_dict,
    get_preset,
    resolve_config,
    save_yaml,
)
from anyup.train.losses import cos_mse
from anyup.train.trainer import train

__all__ = [
    "PRESETS",
    "AugmentConfig",
    "CheckpointConfig",
    "DataConfig",
    "LogConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainEncoderSpec",
    "ValConfig",
    "config_from_dict",
    "cos_mse",
    "get_preset",
    "resolve_config",
    "save_yaml",
    "train",
]

# Renamed in 0.2.0 (``anyup.encoders.EncoderSpec`` is the registry entry); the old name warns for one release.
__getattr__ = deprecated_aliases(__name__, {"EncoderSpec": ("TrainEncoderSpec", TrainEncoderSpec)})
