"""Every real photo that installs offline, deduplicated, split by a listing recorded in the repo.

Sources (all from package managers, no network at run time):

* scikit-image's bundled sample photos (``skimage.data``; charts, masks and text pages left out);
* scikit-learn's two sample images (``sklearn.datasets.load_sample_image``);
* matplotlib's sample data (``grace_hopper.jpg``);
* Debian's ``opencv-doc`` (``apt-get install opencv-doc``): its example data and the photographs
  among its tutorial pictures, selected by :func:`looks_like_photo`.

:func:`find_photos` lists the candidates, :func:`deduplicate` drops exact copies (SHA-256 of the
decoded pixels) and near-copies (a 64-bit difference hash of a small grey thumbnail within
``max_hamming`` bits; resized and recompressed copies of one photo), and :func:`build_photo_set`
writes ``train/`` and ``val/`` folders of PNGs following the split listing
``anyup/train/photo_split.json``: its ``val`` ids are the held-out photos of the model card, its
``excluded`` ids never enter training (the Middlebury depth scenes the evaluation probes), every
other photo is a training photo. The listing also records each photo's pixel hash, so a changed
package shows up as a warning, not as a silent change of the split.

Command line: ``python -m anyup.train.photos OUT_DIR [--write-listing]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

LISTING = Path(__file__).with_name("photo_split.json")
OPENCV_DOC = Path("/usr/share/doc/opencv-doc")

# Photographs among scikit-image's bundled samples (the ones that need a download are left out).
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "stereo_motorcycle",
)  # fmt: skip
SKLEARN_PHOTOS: tuple[str, ...] = ("china.jpg", "flower.jpg")
MATPLOTLIB_PHOTOS: tuple[str, ...] = ("grace_hopper.jpg",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Photo:
    """One candidate photo: a stable id (``source/name``) and how to load it as ``(H, W, 3)`` uint8."""

    id: str
    load: Callable[[], np.ndarray]
    curated: bool = False  # from a hand-made list of photos: :func:`looks_like_photo` is not applied


def _rgb(array: np.ndarray) -> np.ndarray:
    """Grey, RGBA or RGB ``uint8`` arrays -> ``(H, W, 3)`` uint8 (alpha dropped)."""
    a = np.asarray(array)
    if a.dtype != np.uint8:
        a = np.clip(a.astype(np.float64) * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def _file_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            return _rgb(np.asarray(im.convert("RGB")))

    return load


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        out = getattr(data, name)()
        return _rgb(out[0] if isinstance(out, tuple) else out)  # stereo_motorcycle: (left, right, disparity)

    return load


def _sklearn_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return _rgb(load_sample_image(name))

    return load


def looks_like_photo(rgb: np.ndarray, min_side: int) -> bool:
    """A heuristic for "a photograph, not a chart, screenshot or diagram".

    Args:
        rgb: ``(H, W, 3)`` uint8.
        min_side: the short side must be at least this many pixels.

    True when, on a 64x64 thumbnail quantised to 16 levels per channel, no single colour covers
    20 % of the pixels (diagrams have flat backgrounds) and more than 150 colours occur.
    """
    from PIL import Image

    if min(rgb.shape[:2]) < min_side:
        return False
    thumb = np.asarray(Image.fromarray(rgb).resize((64, 64), Image.Resampling.BILINEAR))
    _, counts = np.unique((thumb // 16).reshape(-1, 3), axis=0, return_counts=True)
    return counts.max() / counts.sum() < 0.2 and len(counts) > 150


def find_photos(opencv_doc: Path | None = OPENCV_DOC) -> list[Photo]:
    """Every candidate photo of the offline sources, in a fixed order (sources as listed above)."""
    photos: list[Photo] = []
    try:
        import skimage.data  # noqa: F401

        photos += [Photo(f"skimage/{n}", _skimage_loader(n), curated=True) for n in SKIMAGE_PHOTOS]
    except ImportError:
        logger.warning("scikit-image not installed: no skimage photos")
    try:
        import sklearn.datasets  # noqa: F401

        photos += [Photo(f"sklearn/{Path(n).stem}", _sklearn_loader(n), curated=True) for n in SKLEARN_PHOTOS]
    except ImportError:
        logger.warning("scikit-learn not installed: no sklearn photos")
    try:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "sample_data"
        photos += [
            Photo(f"matplotlib/{Path(n).stem}", _file_loader(folder / n), curated=True) for n in MATPLOTLIB_PHOTOS
        ]
    except ImportError:
        logger.warning("matplotlib not installed: no matplotlib photos")
    if opencv_doc is not None and opencv_doc.is_dir():
        files = sorted(p for p in opencv_doc.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        photos += [Photo(f"opencv/{p.relative_to(opencv_doc).as_posix()}", _file_loader(p)) for p in files]
    else:
        logger.warning("opencv-doc not installed (apt-get install opencv-doc): no opencv photos")
    return photos


def pixel_hash(rgb: np.ndarray) -> str:
    """SHA-256 (hex) of the shape and the decoded pixels."""
    h = hashlib.sha256(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def difference_hash(rgb: np.ndarray) -> int:
    """64-bit difference hash: signs of horizontal steps of a 9x8 grey thumbnail."""
    from PIL import Image

    grey = np.asarray(Image.fromarray(rgb).convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).reshape(-1)  # (64,)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


@dataclass
class Entry:
    """A photo kept by :func:`deduplicate` (with its hashes and size)."""

    id: str
    sha256: str
    dhash: int
    size: tuple[int, int]  # (width, height)
    image: np.ndarray  # (H, W, 3) uint8


def deduplicate(
    photos: Sequence[Photo], min_side: int = 256, max_hamming: int = 6, priority: Sequence[str] = ()
) -> tuple[list[Entry], dict[str, str]]:
    """Load, filter (:func:`looks_like_photo`) and deduplicate ``photos``.

    Args:
        photos: candidates; ids in ``priority`` are considered first, so that a near-copy of a
            held-out or excluded photo is the one dropped, never the held-out photo itself.
        min_side: smallest usable short side in pixels.
        max_hamming: two photos whose difference hashes differ in at most this many bits are
            near-copies (the later one is dropped).

    Returns:
        ``(kept entries, {dropped id: reason})``; reasons name the photo a copy duplicates.
    """
    first = {pid: i for i, pid in enumerate(priority)}
    order = sorted(range(len(photos)), key=lambda i: (first.get(photos[i].id, len(first)), i))
    kept: list[Entry] = []
    by_sha: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for i in order:
        p = photos[i]
        try:
            rgb = p.load()
        except Exception as err:  # noqa: BLE001 - an unreadable candidate is reported, never fatal
            dropped[p.id] = f"unreadable ({type(err).__name__})"
            continue
        sha = pixel_hash(rgb)
        if sha in by_sha:
            dropped[p.id] = f"same pixels as {by_sha[sha]}"
            continue
        if min(rgb.shape[:2]) < min_side or not (p.curated or p.id in first or looks_like_photo(rgb, min_side)):
            dropped[p.id] = "not a photo or too small"
            continue
        dh = difference_hash(rgb)
        near = next((e.id for e in kept if (e.dhash ^ dh).bit_count() <= max_hamming), None)
        if near is not None:
            dropped[p.id] = f"near-copy of {near}"
            continue
        by_sha[sha] = p.id
        kept.append(Entry(p.id, sha, dh, (rgb.shape[1], rgb.shape[0]), rgb))
    return kept, dropped


def load_listing(path: Path = LISTING) -> dict:
    """The recorded split: ``{"val": [ids], "excluded": {id: reason}, "photos": {id: {sha256, split}}}``."""
    data = json.loads(Path(path).read_text())
    for key in ("val", "excluded", "photos"):
        if key not in data:
            raise ValueError(f"photo listing {str(path)!r} has no {key!r} entry")
    return data


def file_name(photo_id: str) -> str:
    """``opencv/examples/data/baboon.jpg`` -> ``opencv__examples__data__baboon.png``."""
    stem = photo_id.rsplit(".", 1)[0] if photo_id.lower().endswith(IMAGE_SUFFIXES) else photo_id
    return stem.replace("/", "__") + ".png"


def build_photo_set(
    out_dir: str | os.PathLike,
    listing: Path = LISTING,
    opencv_doc: Path | None = OPENCV_DOC,
    max_side: int = 768,
    write_listing: bool = False,
) -> dict[str, int]:
    """Write ``OUT/train/*.png`` and ``OUT/val/*.png`` following the split listing.

    Photos are stored losslessly, downscaled (antialiased) so the short side is at most ``max_side``.
    With ``write_listing``, the listing's ``photos`` table is rewritten from what was found (its
    ``val`` and ``excluded`` entries are kept). Returns counts per split.
    """
    from PIL import Image

    from anyup._atomic import atomic_write_text

    spec = load_listing(listing)
    val, excluded = list(spec["val"]), dict(spec["excluded"])
    kept, dropped = deduplicate(find_photos(opencv_doc), priority=val + sorted(excluded))
    recorded = spec["photos"]
    missing_val = sorted(set(val) - {e.id for e in kept})
    if missing_val:
        logger.warning("held-out photos not found (is every source installed?): %s", missing_val)
    out = Path(out_dir)
    counts = {"train": 0, "val": 0, "excluded": 0, "dropped": len(dropped)}
    table = {}
    for e in kept:
        split = "val" if e.id in val else "excluded" if e.id in excluded else "train"
        table[e.id] = {"sha256": e.sha256, "split": split, "size": list(e.size)}
        if e.id in recorded and recorded[e.id]["sha256"] != e.sha256:
            logger.warning("photo %s changed since the listing was recorded (sha256 differs)", e.id)
        elif e.id not in recorded and not write_listing:
            logger.warning("photo %s is not in the listing: used for training", e.id)
        counts[split] += 1
        if split == "excluded":
            continue
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(e.image)
        scale = max_side / min(e.size)
        if scale < 1:
            image = image.resize((round(e.size[0] * scale), round(e.size[1] * scale)), Image.Resampling.LANCZOS)
        target = folder / file_name(e.id)
        tmp = target.with_suffix(".tmp.png")
        image.save(tmp, format="PNG")
        os.replace(tmp, target)
    if write_listing:
        spec["photos"] = dict(sorted(table.items()))
        # copies (the dedup evidence); the ~2000 charts and screenshots are not listed one by one
        spec["dropped"] = {k: v for k, v in sorted(dropped.items()) if v != "not a photo or too small"}
        atomic_write_text(listing, json.dumps(spec, indent=1) + "\n")
    logger.info("photos: %s", counts)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anyup.train.photos", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="where train/ and val/ are written")
    p.add_argument("--listing", type=Path, default=LISTING, help="split listing (default: the recorded one)")
    p.add_argument("--max-side", type=int, default=768, help="downscale so the short side is at most this")
    p.add_argument("--write-listing", action="store_true", help="record the photos found in the listing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    counts = build_photo_set(args.out_dir, args.listing, max_side=args.max_side, write_listing=args.write_listing)
    print(json.dumps(counts))  # the command's result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
