"""Evaluation datasets behind one registry.

>>> from anyup.eval import datasets
>>> ds = datasets.create("photos", config={"size": 224, "limit": 2})
>>> item = ds[0]; item["image"].shape, ds.tasks
(torch.Size([3, 224, 224]), ())

``create(name, root=None, split="val", config=None)`` returns a ``torch.utils.data.Dataset``
whose items are dicts (``image`` (3, H, W) float in [0, 1], and per task ``seg`` / ``depth`` /
``normals`` with their ``*_valid`` masks, plus ``name``; see :mod:`anyup.eval.datasets.base`).
Dataset objects expose ``tasks``, ``num_classes``, ``ignore_index``, ``class_names`` and
``depth_metric``. ``config`` is the dataset's config dataclass, a dict of overrides or None; every
config has ``size`` (short side, then centre crop when ``crop``) and ``limit``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anyup._registry import ConfigRegistry
from anyup.eval.datasets.base import (
    IGNORE_INDEX,
    TASKS,
    DatasetConfig,
    DenseDataset,
    add_valid_masks,
    resize_sample,
)
from anyup.eval.datasets.fidelity import fidelity_pair

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "TASKS",
    "DatasetConfig",
    "DatasetSpec",
    "DenseDataset",
    "add_valid_masks",
    "create",
    "fidelity_pair",
    "get_spec",
    "list_datasets",
    "register",
    "resize_sample",
]


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry."""

    name: str
    description: str  # one line: what it is and where its files come from
    config_cls: type  # dataclass subclassing DatasetConfig
    build: Callable[[str | None, str, Any], DenseDataset]  # (root, split, config) -> dataset
    tasks: tuple[str, ...]
    needs_root: bool  # True: files must be given with root=...; False: offline / generated
    splits: tuple[str, ...] = ("train", "val")
    layout: str = ""  # expected folder layout under root (for error messages and the README)


def _populate() -> None:
    from anyup.eval.datasets import registrations  # noqa: F401  (registers the built-in datasets on import)


# name -> DatasetSpec, in registration order; filled on first use
DATASETS: ConfigRegistry[DatasetSpec] = ConfigRegistry("dataset", populate=_populate)
register = DATASETS.register  # add a DatasetSpec (names are unique; config_cls must be a dataclass)
list_datasets = DATASETS.names  # names accepted by create()
get_spec = DATASETS.get  # the DatasetSpec of a name (ValueError listing the valid names if unknown)
make_config = DATASETS.config  # None / dict of overrides / config instance -> the dataset's config dataclass


def create(name: str, root: str | None = None, split: str = "val", config: Any = None) -> DenseDataset:
    """Build dataset ``name`` for ``split`` (``"train"`` or ``"val"``) from files under ``root``.

    Datasets with ``needs_root`` raise ``ValueError`` without ``root`` and ``FileNotFoundError``
    naming the expected path when the layout is missing; offline datasets ignore ``root``.
    """
    spec = get_spec(name)
    if split not in spec.splits:
        raise ValueError(f"dataset {name!r} has splits {list(spec.splits)}, got split={split!r}")
    if spec.needs_root and root is None:
        raise ValueError(f"dataset {name!r} needs root=<folder> holding {spec.layout}")
    ds = spec.build(root, split, make_config(name, config))
    return ds
