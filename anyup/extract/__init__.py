"""Dataset-scale feature extraction: ``anyup extract`` over folders, file lists or webdataset shards.

>>> from anyup.extract import ExtractConfig, run, read_item                     # doctest: +SKIP
>>> cfg = ExtractConfig(out="feats.zarr", encoder="efficientnet_lite0", dtype="float16", pca=32)
>>> summary = run(["photos/"], cfg, engine="ray")                                # doctest: +SKIP
>>> read_item("feats.zarr", "cat_01")["features"].shape                         # doctest: +SKIP
torch.Size([32, 448, 448])

Resumable (items already complete in the store are skipped), the same outputs with Ray Data
(one model-holding actor per CPU/GPU slot, any cluster) or in-process (the default without Ray).
"""

from __future__ import annotations

from anyup.extract.engine import ENGINES, ExtractConfig, Extractor, ExtractSummary, ray_available, run
from anyup.extract.sources import list_items
from anyup.extract.stores import PCA, STORES, open_store, read_item

__all__ = [
    "ENGINES",
    "ExtractConfig",
    "ExtractSummary",
    "Extractor",
    "PCA",
    "STORES",
    "list_items",
    "open_store",
    "ray_available",
    "read_item",
    "run",
]
