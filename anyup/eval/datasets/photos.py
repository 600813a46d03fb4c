"""Real photographs that ship with installed packages (no labels): for label-free checks.

Sources, all offline: scikit-image's bundled sample photos, scikit-learn's two sample images and,
when Debian's ``opencv-doc`` is installed, the photographs in its example data folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anyup.eval.datasets.base import DatasetConfig, DenseDataset

logger = logging.getLogger(__name__)

# Photographs among scikit-image's bundled samples (synthetic charts and binary masks left out).
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "rocket",
    "coins",
    "moon",
    "clock",
    "immunohistochemistry",
    "hubble_deep_field",
    "motorcycle_left",
)
SKLEARN_PHOTOS: tuple[str, ...] = ("china.jpg", "flower.jpg")
# Photographs in opencv-doc's sample data (charts, digits, calibration boards left out).
OPENCV_PHOTOS: tuple[str, ...] = (
    "aero1.jpg",
    "aloeL.jpg",
    "apple.jpg",
    "baboon.jpg",
    "basketball1.png",
    "board.jpg",
    "building.jpg",
    "butterfly.jpg",
    "chicky_512.png",
    "ela_original.jpg",
    "fruits.jpg",
    "graf1.png",
    "home.jpg",
    "lena.jpg",
    "leuvenA.jpg",
    "messi5.jpg",
    "orange.jpg",
    "rubberwhale1.png",
    "smarties.png",
    "squirrel_cls.jpg",
    "stuff.jpg",
)
OPENCV_DOC_DIRS: tuple[str, ...] = (
    "/usr/share/doc/opencv-doc/examples/data",
    "/usr/share/opencv4/samples/data",
    "/usr/share/doc/opencv-doc/examples/cpp",
)


def find_opencv_data() -> Path | None:
    """The folder of opencv-doc's example data, or None when the package is not installed.

    ``ANYUP_OPENCV_DATA`` overrides the search (a folder holding e.g. ``aloeL.jpg``).
    """
    import os

    env = os.environ.get("ANYUP_OPENCV_DATA")
    candidates = [env] if env else list(OPENCV_DOC_DIRS)
    for c in candidates:
        p = Path(c)
        if p.is_dir() and any(p.iterdir()):
            return p
    return None


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            import skimage.data as data
        except ImportError as err:  # pragma: no cover  (eval extra installed in CI)
            raise ImportError('the "photos" dataset needs scikit-image: pip install "anyup[eval]"') from err
        if name == "motorcycle_left":
            return np.array(data.stereo_motorcycle()[0])
        return np.array(getattr(data, name)())

    return load


def _sklearn_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as err:  # pragma: no cover
            raise ImportError('the "photos" dataset needs scikit-learn: pip install "anyup[eval]"') from err
        return np.array(load_sample_image(name))  # writable copy

    return load


def _file_loader(path: Path) -> Callable[[], Any]:
    return lambda: path


@dataclass
class PhotosConfig(DatasetConfig):
    sources: tuple[str, ...] = ("skimage", "sklearn", "opencv")  # any subset; opencv is skipped if absent
    grey: bool = True  # include greyscale photos (converted to 3 equal channels)


class PhotosDataset(DenseDataset):
    """Real sample photographs with only ``image`` and ``name`` (``tasks = ()``); split is ignored."""

    name = "photos"
    tasks = ()

    def __init__(self, root: str | None = None, split: str = "val", config: PhotosConfig | None = None) -> None:
        config = config or PhotosConfig()
        super().__init__(split, config)
        unknown = set(config.sources) - {"skimage", "sklearn", "opencv"}
        if unknown:
            raise ValueError(f"PhotosConfig.sources: unknown {sorted(unknown)}; allowed skimage, sklearn, opencv")
        items: list[tuple[str, Callable[[], Any]]] = []
        if "skimage" in config.sources:
            grey = {"camera", "coins", "moon", "clock"}
            items += [(f"skimage/{n}", _skimage_loader(n)) for n in SKIMAGE_PHOTOS if config.grey or n not in grey]
        if "sklearn" in config.sources:
            items += [(f"sklearn/{n.split('.')[0]}", _sklearn_loader(n)) for n in SKLEARN_PHOTOS]
        if "opencv" in config.sources:
            folder = find_opencv_data()
            if folder is None:
                logger.info("opencv-doc not installed (apt-get install opencv-doc): photos without its images")
            else:
                for n in OPENCV_PHOTOS:
                    if (folder / n).is_file():
                        items.append((f"opencv/{Path(n).stem}", _file_loader(folder / n)))
        self.items = items
        self._apply_limit()

    def load(self, index: int) -> dict[str, Any]:
        from anyup.image import load_image

        name, loader = self.items[index]
        return {"image": load_image(loader()), "name": name}
