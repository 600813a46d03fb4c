"""What ``anyup extract`` reads: image folders, file lists and webdataset shards, as keyed items.

An item is ``{"key": str, "path": str, "member": str}``: ``path`` is an image file, or a ``.tar``
shard whose tar member ``member`` holds the image (``member`` is ``""`` for plain files). Keys are
unique, stable across runs (so a resumed run skips what is done) and safe as array / sample names.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from anyup.image import IMAGE_SUFFIXES

LIST_SUFFIXES = (".txt", ".lst")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(text: str) -> str:
    """A path-like name as a key: folders joined with ``__``, other unsafe characters as ``_``."""
    parts = [_UNSAFE.sub("_", p).strip("_") or "_" for p in re.split(r"[\\/]+", text) if p]
    return "__".join(parts)


def expand_shards(pattern: str) -> list[str]:
    """``shards-{000..009}.tar`` -> the 10 names (brace expansion as webdataset does it)."""
    if "{" not in pattern:
        return [pattern]
    try:
        from braceexpand import braceexpand
    except ImportError as err:  # pragma: no cover - webdataset depends on braceexpand
        raise ImportError('shard patterns need braceexpand: pip install "anyup[extract]"') from err
    return list(braceexpand(pattern))


def _folder_items(folder: Path) -> list[dict[str, str]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [{"key": safe_key(str(p.relative_to(folder).with_suffix(""))), "path": str(p), "member": ""} for p in files]


def _list_items(listing: Path) -> list[dict[str, str]]:
    items = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        p = p if p.is_absolute() else listing.parent / p
        if not p.is_file():
            raise FileNotFoundError(f"{listing}:{n}: image file not found: {str(p)!r}")
        items.append({"key": safe_key(str(Path(line).with_suffix(""))), "path": str(p), "member": ""})
    return items


def _shard_items(shard: Path) -> list[dict[str, str]]:
    """One item per webdataset sample with an image member (the first image extension wins)."""
    samples: dict[str, str] = {}
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            if not m.isfile():
                continue
            folder, _, base = m.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if dot and "." + ext.lower() in IMAGE_SUFFIXES:
                samples.setdefault(f"{folder}/{stem}" if folder else stem, m.name)
    stem = shard.name[: -len(".tar")] if shard.name.endswith(".tar") else shard.stem
    return [{"key": safe_key(f"{stem}/{k}"), "path": str(shard), "member": v} for k, v in samples.items()]


def list_items(inputs: Sequence[str]) -> list[dict[str, str]]:
    """Every item of ``inputs`` (folders, image files, ``.txt`` lists, ``.tar`` shards or brace patterns).

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: no images, or two inputs give the same key (e.g. ``a.jpg`` and ``a.png``).
    """
    items: list[dict[str, str]] = []
    for raw in inputs:
        for name in expand_shards(str(raw)):
            p = Path(name).expanduser()
            if p.is_dir():
                items += _folder_items(p)
            elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
                items += _list_items(p)
            elif p.is_file() and p.name.endswith(".tar"):
                items += _shard_items(p)
            elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                items.append({"key": safe_key(p.stem), "path": str(p), "member": ""})
            elif p.exists():
                raise ValueError(f"{name!r} is not a folder, an image, a .txt file list or a .tar shard")
            else:
                raise FileNotFoundError(f"input not found: {name!r}")
    if not items:
        raise ValueError(f"no images found in {list(inputs)}")
    seen: dict[str, str] = {}
    for it in items:
        where = it["path"] + (f":{it['member']}" if it["member"] else "")
        if it["key"] in seen:
            raise ValueError(f"two inputs give the item key {it['key']!r}: {seen[it['key']]} and {where}; rename one")
        seen[it["key"]] = where
    return items


class ImageReader:
    """Opens items as images; keeps shards open (one reader per worker)."""

    def __init__(self) -> None:
        self._tars: dict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = {}

    def read(self, item: dict[str, str]):
        """The item's image as a PIL image (RGB conversion is left to ``anyup.load_image``)."""
        from PIL import Image

        if not item["member"]:
            return item["path"]
        if item["path"] not in self._tars:
            tar = tarfile.open(item["path"])
            self._tars[item["path"]] = (tar, {m.name: m for m in tar.getmembers()})
        tar, members = self._tars[item["path"]]
        fh = tar.extractfile(members[item["member"]])
        if fh is None:
            raise ValueError(f"{item['path']}: member {item['member']!r} is not a regular file")
        data = fh.read()
        return Image.open(io.BytesIO(data))

    def close(self) -> None:
        for tar, _ in self._tars.values():
            tar.close()
        self._tars.clear()


def batched(items: Iterable[dict[str, str]], size: int) -> Iterable[list[dict[str, str]]]:
    batch: list[dict[str, str]] = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
