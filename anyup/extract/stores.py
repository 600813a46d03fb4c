"""Where ``anyup extract`` writes: a zarr store (one chunked array per item) or webdataset shards.

Both keep, per item, ``features`` (C, H, W) — AnyUp's output, or its projection on the stored PCA
basis (k, H, W) — and ``lowres`` (C, h, w), in float16, bfloat16 or float32, with the metadata
of :meth:`anyup.predictor.UpsampleResult.metadata` plus the source. An item counts as complete
only once all of it is written, so a run killed at any moment resumes with nothing half-written
counted and nothing written twice.

zarr layout (``OUT.zarr/``)::

    attrs["anyup_extract"]      the run's settings (a resumed run must match them)
    features/<key>              (C, H, W) chunked (64, 128, 128); attrs: metadata, complete=True last
    lowres/<key>                (C, h, w)
    pca/mean, pca/components    (C,), (k, C) float32, when --pca k

bfloat16 has no numpy dtype: its raw bits are stored as uint16 with ``attrs["dtype"] = "bfloat16"``
(:func:`read_item` gives back a bfloat16 tensor).

webdataset layout (``OUT/``): ``config.json``, ``pca.safetensors``, and shards ``part-<hash>.tar``
(one per batch, written to a temp file and renamed when whole) whose samples are
``<key>.safetensors`` (tensors ``features``, ``lowres`` + metadata) and ``<key>.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from anyup._atomic import atomic_write, atomic_write_text

STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Record:
    """One finished item, ready to store."""

    key: str
    features: torch.Tensor  # (C or k, H, W) in the storage dtype
    lowres: torch.Tensor  # (C, h, w) in the storage dtype
    metadata: dict[str, str]


@dataclass
class PCA:
    """A basis fitted once per store: ``project`` maps (C, H, W) to (k, H, W)."""

    mean: torch.Tensor  # (C,) float32
    components: torch.Tensor  # (k, C) float32, unit rows

    def project(self, features: torch.Tensor) -> torch.Tensor:
        c, h, w = features.shape
        x = features.float().reshape(c, -1).T - self.mean  # (H*W, C)
        return (x @ self.components.T).T.reshape(-1, h, w)  # (k, H, W)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _from_numpy(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


class Store:
    """The interface both stores implement."""

    def check_settings(self, settings: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def completed(self) -> set[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def write(self, records: Sequence[Record]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def save_pca(self, pca: PCA, fit_keys: Sequence[str]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def load_pca(self) -> PCA | None:  # pragma: no cover - interface
        raise NotImplementedError


def _settings_mismatch(path, stored: dict, settings: dict) -> None:
    diff = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: stored {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{path} was written with other settings ({detail}); use a new --out or the same settings")


OPEN_ATTEMPTS = 5  # ZarrStore: tries to open a store that another process is creating


class ZarrStore(Store):
    """One zarr array per item (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            import zarr
        except ImportError as err:
            raise ImportError('zarr output needs zarr: pip install "anyup[extract]"') from err
        self.path = Path(path)
        # zarr's own types (JSON-union attrs, array-or-group items) are not what this store reads back; Any.
        self.root: Any
        self.features: Any
        self.lowres: Any
        # Opening creates what is missing. Another process (a Ray driver and a reader, two workers) may
        # create the same group between zarr's look and its write: zarr then raises ContainsGroupError,
        # and a second look finds the group and opens it.
        for attempt in range(OPEN_ATTEMPTS):
            try:
                self.root = zarr.open_group(str(self.path), mode="a")
                self.features = self.root.require_group("features")
                self.lowres = self.root.require_group("lowres")
                break
            except zarr.errors.ContainsGroupError:
                if attempt == OPEN_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def check_settings(self, settings: dict) -> None:
        stored = self.root.attrs.get("anyup_extract")
        if stored is None:
            self.root.attrs["anyup_extract"] = settings
        else:
            _settings_mismatch(self.path, stored, settings)

    def completed(self) -> set[str]:
        return {k for k, arr in self.features.arrays() if arr.attrs.get("complete") is True}

    def _array(self, group, key: str, t: torch.Tensor, chunks: tuple[int, ...]):
        a = _to_numpy(t)
        arr = group.create_array(name=key, shape=a.shape, dtype=a.dtype, chunks=chunks, overwrite=True)
        arr[...] = a
        return arr

    def write(self, records: Sequence[Record]) -> None:
        for r in records:
            c, h, w = r.features.shape
            low = self._array(self.lowres, r.key, r.lowres, tuple(r.lowres.shape))
            low.attrs["dtype"] = str(r.lowres.dtype).replace("torch.", "")
            arr = self._array(self.features, r.key, r.features, (min(c, 64), min(h, 128), min(w, 128)))
            arr.attrs.update({**r.metadata, "dtype": str(r.features.dtype).replace("torch.", "")})
            arr.attrs["complete"] = True  # last: the item counts only once everything is on disk

    def save_pca(self, pca: PCA, fit_keys: Sequence[str]) -> None:
        g = self.root.require_group("pca")
        for name, t in (("mean", pca.mean), ("components", pca.components)):
            arr = g.create_array(name=name, shape=tuple(t.shape), dtype="float32", overwrite=True)
            arr[...] = t.float().numpy()
        g.attrs.update({"fit_items": list(fit_keys), "k": int(pca.components.shape[0]), "complete": True})

    def load_pca(self) -> PCA | None:
        if "pca" not in self.root or self.root["pca"].attrs.get("complete") is not True:
            return None
        g = self.root["pca"]
        return PCA(torch.from_numpy(g["mean"][...]), torch.from_numpy(g["components"][...]))

    def read(self, key: str) -> dict:
        f, low = self.features[key], self.lowres[key]
        if f.attrs.get("complete") is not True:
            raise KeyError(f"item {key!r} of {self.path} is not complete")
        meta = dict(f.attrs)
        return {
            "features": _from_numpy(f[...], meta["dtype"]),
            "lowres": _from_numpy(low[...], low.attrs["dtype"]),
            "metadata": meta,
        }


def _member(tar: tarfile.TarFile, name: str, shard: object) -> IO[bytes]:
    """The open member ``name`` of a shard (an error naming it when it is not a regular file)."""
    fh = tar.extractfile(name)
    if fh is None:
        raise ValueError(f"{shard}: member {name!r} is not a regular file")
    return fh


class WdsStore(Store):
    """webdataset shards, one per written batch (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def check_settings(self, settings: dict) -> None:
        cfg = self.path / "config.json"
        if cfg.is_file():
            _settings_mismatch(self.path, json.loads(cfg.read_text()), settings)
        else:
            atomic_write_text(cfg, json.dumps(settings, indent=2))

    def shards(self) -> list[Path]:
        return sorted(self.path.glob("part-*.tar"))  # temp files are hidden (".part-...tmp.tar")

    def completed(self) -> set[str]:
        keys: set[str] = set()
        for shard in self.shards():
            with tarfile.open(shard) as tar:
                keys.update(n[: -len(".safetensors")] for n in tar.getnames() if n.endswith(".safetensors"))
        return keys

    def write(self, records: Sequence[Record]) -> None:
        from safetensors.torch import save

        if not records:
            return
        name = hashlib.sha1("\n".join(sorted(r.key for r in records)).encode()).hexdigest()[:16]

        def write_tar(tmp: str) -> None:
            with tarfile.open(tmp, "w") as tar:
                for r in records:
                    blob = save(
                        {"features": r.features.contiguous().cpu(), "lowres": r.lowres.contiguous().cpu()},
                        metadata=r.metadata,
                    )
                    for ext, data in (("safetensors", blob), ("json", json.dumps(r.metadata).encode())):
                        info = tarfile.TarInfo(f"{r.key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))

        atomic_write(self.path / f"part-{name}.tar", write_tar)

    def save_pca(self, pca: PCA, fit_keys: Sequence[str]) -> None:
        from safetensors.torch import save_file

        tensors = {"mean": pca.mean.float().contiguous(), "components": pca.components.float().contiguous()}
        atomic_write(
            self.path / "pca.safetensors",
            lambda tmp: save_file(tensors, tmp, metadata={"fit_items": json.dumps(list(fit_keys))}),
        )

    def load_pca(self) -> PCA | None:
        from safetensors.torch import load_file

        p = self.path / "pca.safetensors"
        if not p.is_file():
            return None
        t = load_file(str(p))
        return PCA(t["mean"], t["components"])

    def read(self, key: str) -> dict:
        from safetensors.torch import load

        for shard in self.shards():
            with tarfile.open(shard) as tar:
                names = set(tar.getnames())
                if f"{key}.safetensors" not in names:
                    continue
                tensors = load(_member(tar, f"{key}.safetensors", shard).read())
                meta = json.loads(_member(tar, f"{key}.json", shard).read())
            return {"features": tensors["features"], "lowres": tensors["lowres"], "metadata": meta}
        raise KeyError(f"item {key!r} is in no shard of {self.path}")


STORES = {"zarr": ZarrStore, "wds": WdsStore}


def open_store(path: str | os.PathLike, format: str) -> Store:
    """A store of ``format`` (``"zarr"`` or ``"wds"``) at ``path``."""
    if format not in STORES:
        raise ValueError(f"format must be one of {sorted(STORES)}, got {format!r}")
    return STORES[format](path)


def read_item(path: str | os.PathLike, key: str, format: str | None = None) -> dict:
    """One stored item: ``{"features": (C|k, H, W), "lowres": (C, h, w), "metadata": dict}`` tensors in
    their storage dtype. ``format`` defaults to ``"zarr"`` for a ``.zarr`` path, else ``"wds"``."""
    fmt = format or ("zarr" if str(path).rstrip("/").endswith(".zarr") else "wds")
    return open_store(path, fmt).read(key)  # type: ignore[attr-defined]
