"""Depth / surface-normal datasets: NYUv2 (folder layout, with a converter from the official
``nyu_depth_v2_labeled.mat``) and the offline Middlebury stereo scenes (relative depth from
ground-truth disparity).

NYUv2 layout expected under ``root`` (``root`` may also be its parent holding ``nyuv2/``)::

    {split}/rgb/<name>.png|.jpg          RGB image
    {split}/depth/<name>.npy|.png        depth in metres (.npy float, H x W) or millimetres (.png uint16); 0 = invalid
    {split}/normals/<name>.npy|.png      optional: unit normals (.npy float H x W x 3 or 3 x H x W, camera frame
                                         x right / y down / z forward) or .png uint8 with n = v / 127.5 - 1;
                                         all-zero = invalid
    {split}/seg/<name>.png               optional: NYU-40 labels, 0 = unlabeled (-> ignore), 1..40 -> 0..39

``split`` is ``train`` or ``val`` (folders named ``test`` are accepted for ``val``, as in the
standard 795 / 654 split). :func:`nyuv2_from_mat` writes this layout from the official file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anyup.eval.datasets.base import IGNORE_INDEX, DatasetConfig, DenseDataset, add_valid_masks
from anyup.eval.datasets.segmentation import read_label_png

logger = logging.getLogger(__name__)

_RGB_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class NYUv2Config(DatasetConfig):
    depth_png_scale: float = 1000.0  # .png depth values per metre
    max_depth: float = 10.0  # depths beyond this are marked invalid (NYU's range)


def _find_one(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for s in suffixes:
        p = folder / f"{stem}{s}"
        if p.is_file():
            return p
    return None


def _need_one(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path:
    """Like :func:`_find_one`, but a missing file is an error naming what was looked for."""
    p = _find_one(folder, stem, suffixes)
    if p is None:
        raise FileNotFoundError(f"no {stem}{{{','.join(suffixes)}}} in {folder}")
    return p


class NYUv2(DenseDataset):
    """NYUv2 in the folder layout of the module docstring; ``tasks`` follow the folders present."""

    config: NYUv2Config
    name = "nyuv2"
    ignore_index = IGNORE_INDEX

    def __init__(self, root: str | Path, split: str = "val", config: NYUv2Config | None = None) -> None:
        config = config or NYUv2Config()
        super().__init__(split, config)
        base = Path(root).expanduser()
        if not (base / "train").is_dir() and (base / "nyuv2").is_dir():
            base = base / "nyuv2"
        names = [split] + (["test"] if split == "val" else [])
        folder = next((base / n for n in names if (base / n / "rgb").is_dir()), None)
        if folder is None:
            raise FileNotFoundError(
                f"NYUv2: expected folder {str(base / split / 'rgb')!r} (see anyup.eval.datasets"
                f".depth for the layout; nyuv2_from_mat() writes it from the official .mat)"
            )
        self.folder = folder
        if not (folder / "depth").is_dir():
            raise FileNotFoundError(f"NYUv2: expected folder {str(folder / 'depth')!r}")
        stems = sorted(p.stem for p in (folder / "rgb").iterdir() if p.suffix.lower() in _RGB_SUFFIXES)
        if not stems:
            raise FileNotFoundError(f"NYUv2: no images in {str(folder / 'rgb')!r}")
        tasks = ["depth"]
        if (folder / "normals").is_dir():
            tasks.append("normals")
        if (folder / "seg").is_dir():
            tasks.insert(0, "seg")
            self.num_classes = 40
        self.tasks = tuple(tasks)
        for stem in stems:  # fail early with the exact missing file
            for sub, suffixes in (("depth", (".npy", ".png")), ("normals", (".npy", ".png")), ("seg", (".png",))):
                if sub in ("depth",) or (sub == "normals" and "normals" in tasks) or (sub == "seg" and "seg" in tasks):
                    if _find_one(folder / sub, stem, suffixes) is None:
                        raise FileNotFoundError(f"NYUv2: missing {str(folder / sub / stem)}{{{','.join(suffixes)}}}")
        self.items = stems
        self._apply_limit()

    def load(self, index: int) -> dict[str, Any]:
        from anyup.image import load_image

        stem = self.items[index]
        f = self.folder
        image = load_image(_need_one(f / "rgb", stem, _RGB_SUFFIXES))
        h, w = image.shape[-2:]
        sample: dict[str, Any] = {"image": image, "name": stem}
        dpath = _need_one(f / "depth", stem, (".npy", ".png"))
        if dpath.suffix == ".npy":
            depth = np.load(dpath).astype(np.float32)
        else:
            depth = read_label_png(dpath).astype(np.float32) / self.config.depth_png_scale
        depth = np.squeeze(depth)
        depth[depth > self.config.max_depth] = 0
        _check_size(depth.shape, (h, w), dpath)
        sample["depth"] = torch.from_numpy(np.ascontiguousarray(depth))
        if "normals" in self.tasks:
            npath = _need_one(f / "normals", stem, (".npy", ".png"))
            sample["normals"] = _read_normals(npath, (h, w))
        if "seg" in self.tasks:
            spath = f / "seg" / f"{stem}.png"
            raw = read_label_png(spath)
            _check_size(raw.shape, (h, w), spath)
            lut = np.full(max(256, int(raw.max()) + 1), IGNORE_INDEX, dtype=np.int64)
            lut[1:41] = np.arange(40)
            sample["seg"] = torch.from_numpy(lut[raw])
        return add_valid_masks(sample)


def _check_size(shape: tuple, expected: tuple, path: Path) -> None:
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{str(path)!r} has size {tuple(shape)}, the image has {tuple(expected)}")


def _read_normals(path: Path, size: tuple[int, int]) -> torch.Tensor:
    if path.suffix == ".npy":
        n = np.load(path).astype(np.float32)
        if n.ndim == 3 and n.shape[-1] == 3 and n.shape[0] != 3:
            n = n.transpose(2, 0, 1)
    else:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB")).astype(np.float32)
        zero = (arr == 0).all(-1)
        n = (arr / 127.5 - 1.0).transpose(2, 0, 1)
        n[:, zero] = 0
    if n.ndim != 3 or n.shape[0] != 3:
        raise ValueError(f"normals {str(path)!r} must be (H, W, 3) or (3, H, W), got {n.shape}")
    _check_size(n.shape[1:], size, path)
    t = torch.from_numpy(np.ascontiguousarray(n))
    norm = t.norm(dim=0, keepdim=True)
    return torch.where(norm > 1e-6, t / norm.clamp_min(1e-6), torch.zeros_like(t))


def nyuv2_from_mat(
    mat_path: str | os.PathLike, out_root: str | os.PathLike, splits_path: str | os.PathLike | None = None
) -> Path:
    """Write the NYUv2 folder layout from the official ``nyu_depth_v2_labeled.mat`` (HDF5 / v7.3).

    Writes ``rgb/*.png`` and ``depth/*.npy`` (metres) for the 1449 labelled frames. With
    ``splits_path`` (the official ``splits.mat`` holding ``trainNdxs`` / ``testNdxs``, 1-based) the
    frames go to ``train`` / ``val``; without it everything goes to ``val``. Needs ``h5py`` (and
    ``scipy`` for ``splits.mat``). Labels (894 classes) are not converted: NYU-40 needs a separate
    mapping file; put NYU-40 PNGs in ``{split}/seg`` yourself if needed.
    """
    try:
        import h5py
    except ImportError as err:  # pragma: no cover
        raise ImportError('nyuv2_from_mat needs h5py: pip install "anyup[encoders]"') from err
    from PIL import Image

    mat_path, out = Path(mat_path), Path(out_root)
    if not mat_path.is_file():
        raise FileNotFoundError(f"NYUv2 .mat file not found: {str(mat_path)!r}")
    split_of: dict[int, str] = {}
    if splits_path is not None:
        from scipy.io import loadmat

        s = loadmat(str(splits_path))
        split_of.update({int(i) - 1: "train" for i in np.ravel(s["trainNdxs"])})
        split_of.update({int(i) - 1: "val" for i in np.ravel(s["testNdxs"])})
    with h5py.File(mat_path, "r") as f:
        if "images" not in f or "depths" not in f:
            raise ValueError(f"{str(mat_path)!r} lacks 'images' / 'depths' datasets (not nyu_depth_v2_labeled.mat?)")
        images, depths = f["images"], f["depths"]  # (N, 3, W, H) uint8, (N, W, H) float metres (MATLAB order)
        for i in range(images.shape[0]):
            split = split_of.get(i, "val")
            for sub in ("rgb", "depth"):
                (out / split / sub).mkdir(parents=True, exist_ok=True)
            rgb = np.asarray(images[i]).transpose(2, 1, 0)  # (H, W, 3)
            depth = np.asarray(depths[i]).T.astype(np.float32)  # (H, W)
            stem = f"{i:04d}"
            _atomic_save_png(Image.fromarray(rgb), out / split / "rgb" / f"{stem}.png")
            _atomic_save_npy(depth, out / split / "depth" / f"{stem}.npy")
    return out


def _atomic_save_png(im: Any, path: Path) -> None:
    from anyup._atomic import atomic_write

    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


def _atomic_save_npy(arr: np.ndarray, path: Path) -> None:
    from anyup._atomic import atomic_write

    atomic_write(path, lambda tmp: np.save(tmp, arr))


# ----------------------------------------------------------------------------- Middlebury (offline)
# skimage's motorcycle pair (Middlebury 2014, downsampled 4x): calibration from its docstring.
MOTORCYCLE_FOCAL_PX = 994.978
MOTORCYCLE_BASELINE_M = 0.193001
MOTORCYCLE_DOFFS_PX = 31.086


@dataclass
class MiddleburyConfig(DatasetConfig):
    scenes: tuple[str, ...] = ("motorcycle", "aloe")  # "motorcycle" (scikit-image), "aloe" (opencv-doc)


class MiddleburyStereo(DenseDataset):
    """Real photos with ground-truth disparity from the Middlebury stereo benchmark, offline.

    ``depth`` is *relative*: ``median(disparity) / disparity`` over valid pixels (1 = the median
    depth; ``depth_metric = False``), invalid disparities -> 0. Items also carry ``disparity``
    (pixels, 0 = invalid) and, for the motorcycle (calibrated), ``depth_m`` in metres
    (``f * B / (d + doffs)``). ``motorcycle`` comes from scikit-image; ``aloe`` from Debian's
    ``opencv-doc`` (``apt-get install opencv-doc``), skipped with a log message if absent.
    The same scenes are returned for every split: for qualitative and sanity checks, not training.
    """

    name = "middlebury"
    tasks = ("depth",)
    depth_metric = False

    def __init__(self, root: str | None = None, split: str = "val", config: MiddleburyConfig | None = None) -> None:
        config = config or MiddleburyConfig()
        super().__init__(split, config)
        unknown = set(config.scenes) - {"motorcycle", "aloe"}
        if unknown:
            raise ValueError(f"MiddleburyConfig.scenes: unknown {sorted(unknown)}; allowed motorcycle, aloe")
        items = []
        if "motorcycle" in config.scenes:
            items.append("motorcycle")
        if "aloe" in config.scenes:
            from anyup.eval.datasets.photos import find_opencv_data

            folder = find_opencv_data()
            if folder is not None and (folder / "aloeL.jpg").is_file() and (folder / "aloeGT.png").is_file():
                self.aloe_dir = folder
                items.append("aloe")
            else:
                logger.warning(
                    "middlebury: 'aloe' skipped: opencv-doc's aloeL.jpg / aloeGT.png not found "
                    "(apt-get install opencv-doc, or set ANYUP_OPENCV_DATA)"
                )
        if not items:
            raise FileNotFoundError("middlebury: none of the requested scenes is available here")
        self.items = items
        self._apply_limit()

    def load(self, index: int) -> dict[str, Any]:
        from anyup.image import load_image

        scene = self.items[index]
        sample: dict[str, Any] = {"name": scene}
        if scene == "motorcycle":
            try:
                import skimage.data as data
            except ImportError as err:  # pragma: no cover
                raise ImportError('middlebury needs scikit-image: pip install "anyup[eval]"') from err
            left, _, disp = data.stereo_motorcycle()
            disp = np.where(np.isfinite(disp) & (disp > 0), disp, 0).astype(np.float32)
            image = load_image(np.array(left))
            depth_m = np.where(
                disp > 0, MOTORCYCLE_FOCAL_PX * MOTORCYCLE_BASELINE_M / (disp + MOTORCYCLE_DOFFS_PX), 0
            ).astype(np.float32)
            sample["depth_m"] = torch.from_numpy(depth_m)
        else:
            image = load_image(self.aloe_dir / "aloeL.jpg")
            disp = read_label_png(self.aloe_dir / "aloeGT.png").astype(np.float32)  # pixels, 0 = unknown
        valid = disp > 0
        rel = np.zeros_like(disp)
        rel[valid] = np.median(disp[valid]) / disp[valid]
        sample.update(image=image, disparity=torch.from_numpy(disp), depth=torch.from_numpy(rel))
        out = add_valid_masks(sample)
        return out
