"""Training images: listing, a cached size index, the per-sample recipe inputs, a resumable sampler.

* :func:`collect_images` expands folders (recursive) and ``.txt`` file lists into image paths.
* :class:`SizeIndex` records ``(width, height)`` of every file (read from the header only) in a JSON
  cache keyed by path, modification time and byte size; unreadable files are recorded as such,
  counted and skipped, never fatal.
* :class:`RecipeDataset` turns a key ``(file index, epoch, position)`` into the tensors of one
  training sample: the ``hr_factor * S`` image, the ``S`` image, its photometric augmentation and
  the uniform numbers that place the crops. Every random number comes from a generator seeded by
  ``(seed, epoch, position)``, so a sample does not depend on worker, rank or history.
* :class:`StepSampler` walks a seeded permutation per epoch; its state is a :class:`DataPosition`
  ``(epoch, index into the permutation)`` that the checkpoint stores.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from anyup._atomic import atomic_write_text
from anyup.image import IMAGE_SUFFIXES, list_images, load_image, resize, square_resize
from anyup.train.augment import photometric_augment
from anyup.train.config import AugmentConfig

logger = logging.getLogger(__name__)

INDEX_FILENAME = "image_sizes.json"


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts] + [len(parts)]).generate_state(2)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & 0x7FFF_FFFF_FFFF_FFFF


def generator_for(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


# ----------------------------------------------------------------------------------------------
# listing and size index


def collect_images(roots: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files under folders (recursive) and in ``.txt`` lists (one path per line, ``#`` comments).

    Relative paths in a list are relative to the list's folder. The result is sorted and unique.
    """
    if not roots:
        raise ValueError("no training images given: set data.root (folders or .txt file lists)")
    out: set[Path] = set()
    for root in map(Path, roots):
        if root.is_file() and root.suffix.lower() == ".txt":
            for line in root.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line)
                    out.add((p if p.is_absolute() else root.parent / p).resolve())
        elif root.is_file() and root.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{str(root)!r} is neither an image, a folder nor a .txt file list")
        else:
            out.update(p.resolve() for p in list_images([root]))
    return sorted(out)


def read_image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the file header, or ``None`` when PIL cannot identify it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - any failure means "unreadable", which is counted, not fatal
        return None


@dataclass
class IndexReport:
    """What :meth:`SizeIndex.filter` kept and dropped."""

    kept: int
    too_small: int
    unreadable: int
    unreadable_examples: list[str]


class SizeIndex:
    """Image sizes cached in ``<cache_dir>/image_sizes.json``, keyed by path, mtime and byte size."""

    def __init__(self, cache_dir: str | os.PathLike, threads: int = 8) -> None:
        self.path = Path(cache_dir) / INDEX_FILENAME
        self.threads = max(1, threads)
        self.entries: dict[str, list[int]] = {}  # path -> [mtime_ns, bytes, width, height]
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:
                logger.warning("ignoring unreadable size index %s (%s); rebuilding it", self.path, err)

    def sizes(self, files: Sequence[Path], progress: bool = False) -> list[tuple[int, int] | None]:
        """Sizes of ``files`` (``None`` for unreadable ones); new or changed files are (re)read."""
        stats: list[tuple[int, int] | None] = []  # (mtime_ns, size) per file, None if unreadable
        todo = []
        for i, f in enumerate(files):
            try:
                stat = f.stat()
            except OSError:
                stats.append(None)
                continue
            stats.append((stat.st_mtime_ns, stat.st_size))
            e = self.entries.get(str(f))
            if e is None or e[0] != stat.st_mtime_ns or e[1] != stat.st_size:
                todo.append(i)
        if todo:
            from tqdm.auto import tqdm

            logger.info("reading the size of %d new or changed images", len(todo))
            with ThreadPoolExecutor(self.threads) as pool:
                found = list(
                    tqdm(
                        pool.map(read_image_size, [files[i] for i in todo]),
                        total=len(todo),
                        desc="size index",
                        disable=not progress,
                    )
                )
            for i, size in zip(todo, found):
                w, h = size if size is not None else (-1, -1)
                mtime_ns, nbytes = cast(tuple[int, int], stats[i])  # files in todo were stat()-ed
                self.entries[str(files[i])] = [mtime_ns, nbytes, w, h]
            self.save()
        out: list[tuple[int, int] | None] = []
        for f, st in zip(files, stats):
            e = self.entries.get(str(f)) if st is not None else None
            out.append(None if e is None or e[2] < 0 else (e[2], e[3]))
        return out

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.entries))

    def filter(self, files: Sequence[Path], min_size: int, progress: bool = False) -> tuple[list[Path], IndexReport]:
        """Files whose short side is at least ``min_size`` and whose header is readable."""
        sizes = self.sizes(files, progress=progress)
        kept, small, bad = [], 0, []
        for f, s in zip(files, sizes):
            if s is None:
                bad.append(str(f))
            elif min(s) < min_size:
                small += 1
            else:
                kept.append(f)
        return kept, IndexReport(len(kept), small, len(bad), bad[:5])


def split_holdout(files: Sequence[Path], count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded split into ``(train, held_out)`` with ``count`` held-out files (order preserved).

    The hold-out is scaled to the data: at most a third of the files (at least one) are held
    out, with a warning saying how to choose (``--set val.num_images=N``, ``--val-data DIR``), so
    a preset's ``val.num_images`` also works on a handful of photos.
    """
    if count <= 0:
        return list(files), []
    n = len(files)
    if n < 2:
        raise ValueError(
            f"cannot hold out validation images from only {n} image(s): pass held-out images with "
            "--val-data DIR, or train without validation with --set val.num_images=0"
        )
    most = max(1, n // 3)
    if count > most:
        logger.warning(
            "holding out %d of the %d training images for validation, not val.num_images=%d (at most a third); "
            "choose with --set val.num_images=N or pass held-out images with --val-data DIR",
            most, n, count,
        )  # fmt: skip
        count = most
    perm = torch.randperm(n, generator=generator_for(seed, 0x5EED)).tolist()
    held = set(perm[:count])
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


# ----------------------------------------------------------------------------------------------
# one sample


def downsample(image: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``(..., 3, H, W)`` to ``(size, size)``."""
    return resize(image, (size, size), antialias=True, clamp=True)


def fit_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Resize ``(..., 3, H, W)`` to the nearest multiple of ``multiple`` per side (e.g. 128 -> 126 for patch 14).

    The whole image is kept (a global rescale), so its feature cells still tile the whole image.
    """
    h, w = image.shape[-2:]
    nh, nw = max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple)
    if (nh, nw) == (h, w):
        return image
    x = image if image.ndim == 4 else image[None]  # (B, 3, H, W)
    x = resize(x, (nh, nw), antialias=True, clamp=True)
    return x.reshape(*image.shape[:-2], nh, nw)


def load_square(path: Path, size: int, decode_size: int | None = None) -> torch.Tensor:
    """Decode (JPEG draft mode when it helps), then :func:`square_resize`; raises ``ValueError`` if broken.

    ``decode_size`` (default ``size``) is the smallest side the JPEG draft decoder may reduce to.
    """
    image = load_full(path, decode_size or size)
    return square_resize(image, size)


def load_full(path: Path, decode_size: int) -> torch.Tensor:
    """The whole image as ``(3, H, W)`` float in [0, 1] (JPEGs decoded at >= ``decode_size``)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (decode_size, decode_size))  # decode at a reduced scale that is still >= size
            im.load()
            return load_image(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {str(path)!r}: {err}") from err


def random_resized_square(
    image: torch.Tensor, size: int, scale: tuple[float, float], flip_p: float, generator: torch.Generator
) -> torch.Tensor:
    """A random square crop of ``(3, H, W)`` resized to ``(3, size, size)``, flipped with probability ``flip_p``.

    The square's side is ``u * min(H, W)`` with ``u`` uniform in ``scale``, its position uniform.
    Every number is drawn from ``generator`` (four draws, always).
    """
    h, w = image.shape[-2:]
    u = torch.rand(4, generator=generator).tolist()
    side = max(1, round((scale[0] + (scale[1] - scale[0]) * u[0]) * min(h, w)))
    top = min(h - side, int(u[1] * (h - side + 1)))
    left = min(w - side, int(u[2] * (w - side + 1)))
    crop = image[:, top : top + side, left : left + side]  # (3, side, side)
    out = resize(crop, (size, size), antialias=True)
    if u[3] < flip_p:
        out = out.flip(-1)
    return out.clamp(0, 1).contiguous()  # (3, size, size)


class RecipeDataset(torch.utils.data.Dataset):
    """Maps ``(file index, epoch, position)`` to one training sample (all CPU, float32, [0, 1]).

    Returns a dict with ``image_hr (3, F*S, F*S)``, ``image (3, S, S)``, ``image_aug (3, S, S)``,
    ``crop_u (K, 2)`` (uniform numbers in [0, 1) that place the K crops once the encoder stride is
    known), ``skipped`` (how many unreadable files were passed over to produce this sample).
    """

    def __init__(
        self,
        files: Sequence[Path],
        input_size: int,
        hr_factor: int,
        crops_per_image: int,
        augment: AugmentConfig,
        seed: int,
    ) -> None:
        if not files:
            raise ValueError("RecipeDataset needs at least one image")
        self.files = list(files)
        self.input_size = input_size
        self.hr_size = hr_factor * input_size
        self.crops = crops_per_image
        self.augment = augment
        self.seed = seed
        self.geometric = tuple(augment.crop_scale) != (1.0, 1.0) or augment.flip_p > 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor | int]:
        file_index, epoch, position = key
        skipped = 0
        image_hr = None
        for attempt in range(len(self.files)):
            path = self.files[(file_index + attempt) % len(self.files)]
            try:
                if self.geometric:
                    full = load_full(path, math.ceil(self.hr_size / self.augment.crop_scale[0]))
                    geo = generator_for(
                        self.seed, epoch, position, 0x6E0
                    )  # separate stream: photometric draws unchanged
                    image_hr = random_resized_square(
                        full, self.hr_size, self.augment.crop_scale, self.augment.flip_p, geo
                    )
                else:
                    image_hr = load_square(path, self.hr_size)
                break
            except ValueError as err:
                skipped += 1
                logger.warning("skipping unreadable training image: %s", err)
        if image_hr is None:
            raise RuntimeError("none of the training images can be decoded")
        g = generator_for(self.seed, epoch, position)
        image = downsample(image_hr, self.input_size)  # (3, S, S)
        image_aug = photometric_augment(image, self.augment, g)
        crop_u = torch.rand(self.crops, 2, generator=g)
        return {"image_hr": image_hr, "image": image, "image_aug": image_aug, "crop_u": crop_u, "skipped": skipped}


def load_eval_images(files: Sequence[Path], hr_size: int) -> tuple[torch.Tensor, list[Path]]:
    """Held-out images as ``(N, 3, hr_size, hr_size)``; unreadable ones are skipped with a warning."""
    out, used = [], []
    for f in files:
        try:
            out.append(load_square(f, hr_size))
            used.append(f)
        except ValueError as err:
            logger.warning("skipping unreadable validation image: %s", err)
    if not out:
        raise ValueError("no readable validation images")
    return torch.stack(out), used


# ----------------------------------------------------------------------------------------------
# sampler


@dataclass(frozen=True)
class DataPosition:
    """Where the next step starts: ``epoch`` and ``index`` into that epoch's permutation."""

    epoch: int = 0
    index: int = 0


class StepSampler:
    """Deterministic, resumable, distributed: which images each rank uses in each micro-step.

    Every epoch has its own seeded permutation. One optimiser step consumes
    ``batch_size * world_size * accum_steps`` consecutive entries: micro-step ``m`` of rank ``r``
    takes chunk ``m * world_size + r``. So one process with ``world_size * batch_size`` images sees
    exactly the images that ``world_size`` processes see together. An epoch's tail shorter than a
    step is dropped.
    """

    def __init__(self, num_items: int, batch_size: int, world_size: int = 1, accum_steps: int = 1, seed: int = 0):
        self.n = num_items
        self.batch_size = batch_size
        self.world_size = world_size
        self.accum_steps = accum_steps
        self.seed = seed
        self.per_step = batch_size * world_size * accum_steps
        if self.n < self.per_step:
            raise ValueError(
                f"{self.n} training images are fewer than one step needs "
                f"(batch_size {batch_size} x world_size {world_size} x accum_steps {accum_steps})"
            )
        self._cache: tuple[int, list[int]] | None = None

    def permutation(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            perm = torch.randperm(self.n, generator=generator_for(self.seed, 0xDA7A, epoch)).tolist()
            self._cache = (epoch, perm)
        return self._cache[1]

    def normalize(self, pos: DataPosition) -> DataPosition:
        if pos.index + self.per_step > self.n:
            return DataPosition(pos.epoch + 1, 0)
        return pos

    def advance(self, pos: DataPosition) -> DataPosition:
        """The position after one optimiser step starting at ``pos``."""
        pos = self.normalize(pos)
        return self.normalize(DataPosition(pos.epoch, pos.index + self.per_step))

    def keys(self, pos: DataPosition, rank: int, micro: int) -> list[tuple[int, int, int]]:
        """Dataset keys ``(file index, epoch, position)`` of one micro-batch."""
        pos = self.normalize(pos)
        perm = self.permutation(pos.epoch)
        start = pos.index + (micro * self.world_size + rank) * self.batch_size
        return [(perm[p], pos.epoch, p) for p in range(start, start + self.batch_size)]

    def iter_batches(self, start: DataPosition, rank: int) -> Iterator[list[tuple[int, int, int]]]:
        """Infinite stream of micro-batches of ``rank`` from ``start`` (use as a DataLoader batch_sampler)."""
        pos = self.normalize(start)
        while True:
            for micro in range(self.accum_steps):
                yield self.keys(pos, rank, micro)
            pos = self.advance(pos)


class _BatchSampler:
    """Wraps :meth:`StepSampler.iter_batches` as an iterable for ``DataLoader(batch_sampler=...)``."""

    def __init__(self, sampler: StepSampler, start: DataPosition, rank: int) -> None:
        self.sampler, self.start, self.rank = sampler, start, rank

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        return self.sampler.iter_batches(self.start, self.rank)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(
    dataset: RecipeDataset, sampler: StepSampler, start: DataPosition, rank: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """An infinite DataLoader of micro-batches starting at ``start``."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=_BatchSampler(sampler, start, rank),
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
    )
