"""Training AnyUp: the paper's recipe for any encoder, one CPU to many GPUs, resumable bit for bit.

>>> from anyup.train import resolve_config, train
>>> cfg = resolve_config(preset="cpu_offline", overrides=["data.root=[photos/]", "run_dir=runs/demo"])
>>> path = train(cfg)                      # doctest: +SKIP   (runs/demo/model.safetensors)

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
