"""Semantic-segmentation benchmarks in their standard on-disk layouts (files are never downloaded).

Each loader takes ``root`` (the folder given as ``--root``) and resolves the layout below it,
accepting the dataset folder itself or its parent; missing folders raise ``FileNotFoundError``
naming the expected path.

========== ===================================================================================
VOC 2012   ``VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png,
           ImageSets/Segmentation/{train,val}.txt}``; palette PNG indices, 255 = border/ignore
ADE20k     ``ADEChallengeData2016/{images,annotations}/{training,validation}/``;
           label 0 ("other") -> ignore, 1..150 -> 0..149
COCO-Stuff ``images/{train2017,val2017}/*.jpg`` + ``stuffthingmaps_trainval2017/{train2017,val2017}/*.png``
           (also ``annotations/`` or the ``dataset/images`` + ``dataset/annotations`` layout);
           27 coarse classes (JAFAR / FeatUp / STEGO protocol) or all 171
Cityscapes ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` + ``gtFine/{split}/{city}/*_gtFine_labelIds.png``;
           label ids -> the 19 train ids
========== ===================================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anyup.eval.datasets.base import IGNORE_INDEX, DatasetConfig, DenseDataset

logger = logging.getLogger(__name__)


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as its raw integer values (palette indices for ``P`` images), ``(H, W)`` int64."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(f"label image must be single-channel (P/L/I mode), got mode {im.mode!r}")
            return np.asarray(im).astype(np.int64)
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: {str(path)!r}") from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read label image {str(path)!r}: {err}") from err


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected folder {str(path)!r} does not exist")
    return path


def find_root(root: str | Path, marker: str, candidates: Sequence[str]) -> Path:
    """The first of ``root/<c>`` holding ``marker``; FileNotFoundError listing what was tried."""
    base = Path(root).expanduser()
    tried = []
    for c in candidates:
        p = (base / c) if c else base
        tried.append(str(p / marker))
        if (p / marker).exists():
            return p
    raise FileNotFoundError(f"dataset layout not found under {str(base)!r}: expected one of {tried}")


class SegmentationFolder(DenseDataset):
    """Image / label-PNG pairs; subclasses set the pairs and the label mapping (a lookup table)."""

    tasks = ("seg",)

    def __init__(
        self, split: str, config: DatasetConfig, pairs: list[tuple[Path, Path]], lut: np.ndarray | None
    ) -> None:
        super().__init__(split, config)
        self.items = sorted(pairs, key=lambda p: p[0].name)
        self.lut = lut  # raw label value -> class id (or 255); None: values are class ids already
        self._apply_limit()

    def load(self, index: int) -> dict[str, Any]:
        from anyup.image import load_image

        image_path, label_path = self.items[index]
        image = load_image(image_path)
        raw = read_label_png(label_path)
        if raw.shape != tuple(image.shape[-2:]):
            raise ValueError(
                f"label {str(label_path)!r} has size {raw.shape}, image {str(image_path)!r} "
                f"has {tuple(image.shape[-2:])}"
            )
        if self.lut is not None:
            raw = self.lut[np.clip(raw, 0, len(self.lut) - 1)]
        seg = torch.from_numpy(raw.astype(np.int64))
        seg[(seg >= self.num_classes) & (seg != IGNORE_INDEX)] = IGNORE_INDEX
        return {"image": image, "seg": seg, "name": image_path.stem}


# ----------------------------------------------------------------------------- Pascal VOC 2012
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@dataclass
class VOCConfig(DatasetConfig):
    pass


class VOCSegmentation(SegmentationFolder):
    name = "voc"
    num_classes = 21
    class_names = VOC_CLASSES

    def __init__(self, root: str | Path, split: str = "val", config: VOCConfig | None = None) -> None:
        base = find_root(root, "ImageSets/Segmentation", ["VOCdevkit/VOC2012", "VOC2012", ""])
        list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"VOC split list not found: {str(list_file)!r}")
        jpg = require_dir(base / "JPEGImages", "VOC images")
        png = require_dir(base / "SegmentationClass", "VOC labels")
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        pairs = [(jpg / f"{i}.jpg", png / f"{i}.png") for i in ids]
        missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"VOC {split}: {len(missing)} listed files missing, e.g. {missing[0]!r}")
        super().__init__(split, config or VOCConfig(), pairs, None)


# ----------------------------------------------------------------------------- ADE20k
@dataclass
class ADE20kConfig(DatasetConfig):
    pass


class ADE20kSegmentation(SegmentationFolder):
    name = "ade20k"
    num_classes = 150

    def __init__(self, root: str | Path, split: str = "val", config: ADE20kConfig | None = None) -> None:
        base = find_root(root, "images", ["ADEChallengeData2016", ""])
        sub = {"train": "training", "val": "validation"}[split]
        img_dir = require_dir(base / "images" / sub, "ADE20k images")
        ann_dir = require_dir(base / "annotations" / sub, "ADE20k annotations")
        pairs = _pairs_by_stem(sorted(img_dir.glob("*.jpg")), ann_dir, ".png", "ADE20k")
        lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
        lut[1:151] = np.arange(150)  # 0 = "other" -> ignore
        super().__init__(split, config or ADE20kConfig(), pairs, lut)


def _pairs_by_stem(
    images: list[Path], label_dir: Path, suffix: str, what: str, label_stem=lambda s: s
) -> list[tuple[Path, Path]]:
    if not images:
        raise FileNotFoundError(f"{what}: no images found in {str(images and images[0].parent)!r}")
    pairs = [(p, label_dir / f"{label_stem(p.stem)}{suffix}") for p in images]
    missing = [str(lbl) for _, lbl in pairs if not lbl.is_file()]
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} label files missing, e.g. {missing[0]!r}")
    return pairs


# ----------------------------------------------------------------------------- COCO-Stuff
# stuffthingmaps values are COCO category id - 1 (0..181, 255 = unlabeled). Things 0..90 map to
# their COCO supercategory, stuff 91..181 to the COCO-Stuff stuff supercategory: the 27 coarse
# classes used by STEGO, FeatUp, JAFAR and AnyUp ("things" 0..11, "stuff" 12..26).
COCO27_CLASSES = (
    "electronic",
    "appliance",
    "food",
    "furniture",
    "indoor",
    "kitchen",
    "accessory",
    "animal",
    "outdoor",
    "person",
    "sports",
    "vehicle",
    "ceiling",
    "floor",
    "food-stuff",
    "furniture-stuff",
    "rawmaterial",
    "textile",
    "wall",
    "window",
    "building",
    "ground",
    "plant",
    "sky",
    "solid",
    "structural",
    "water",
)
_THING_RANGES = (  # (first label, last label, coarse class name); gaps are unused ids
    (0, 0, "person"),
    (1, 8, "vehicle"),
    (9, 14, "outdoor"),
    (15, 24, "animal"),
    (25, 32, "accessory"),
    (33, 42, "sports"),
    (43, 50, "kitchen"),
    (51, 60, "food"),
    (61, 70, "furniture"),
    (71, 76, "electronic"),
    (77, 82, "appliance"),
    (83, 90, "indoor"),
)
# The 91 stuff classes (labels 91..181, in order) with their coarse class.
_STUFF = (
    ("banner", "textile"),
    ("blanket", "textile"),
    ("branch", "plant"),
    ("bridge", "building"),
    ("building-other", "building"),
    ("bush", "plant"),
    ("cabinet", "furniture-stuff"),
    ("cage", "structural"),
    ("cardboard", "rawmaterial"),
    ("carpet", "floor"),
    ("ceiling-other", "ceiling"),
    ("ceiling-tile", "ceiling"),
    ("cloth", "textile"),
    ("clothes", "textile"),
    ("clouds", "sky"),
    ("counter", "furniture-stuff"),
    ("cupboard", "furniture-stuff"),
    ("curtain", "textile"),
    ("desk-stuff", "furniture-stuff"),
    ("dirt", "ground"),
    ("door-stuff", "furniture-stuff"),
    ("fence", "structural"),
    ("floor-marble", "floor"),
    ("floor-other", "floor"),
    ("floor-stone", "floor"),
    ("floor-tile", "floor"),
    ("floor-wood", "floor"),
    ("flower", "plant"),
    ("fog", "water"),
    ("food-other", "food-stuff"),
    ("fruit", "food-stuff"),
    ("furniture-other", "furniture-stuff"),
    ("grass", "plant"),
    ("gravel", "ground"),
    ("ground-other", "ground"),
    ("hill", "solid"),
    ("house", "building"),
    ("leaves", "plant"),
    ("light", "furniture-stuff"),
    ("mat", "textile"),
    ("metal", "rawmaterial"),
    ("mirror-stuff", "furniture-stuff"),
    ("moss", "plant"),
    ("mountain", "solid"),
    ("mud", "ground"),
    ("napkin", "textile"),
    ("net", "structural"),
    ("paper", "rawmaterial"),
    ("pavement", "ground"),
    ("pillow", "textile"),
    ("plant-other", "plant"),
    ("plastic", "rawmaterial"),
    ("platform", "ground"),
    ("playingfield", "ground"),
    ("railing", "structural"),
    ("railroad", "ground"),
    ("river", "water"),
    ("road", "ground"),
    ("rock", "solid"),
    ("roof", "building"),
    ("rug", "textile"),
    ("salad", "food-stuff"),
    ("sand", "ground"),
    ("sea", "water"),
    ("shelf", "furniture-stuff"),
    ("sky-other", "sky"),
    ("skyscraper", "building"),
    ("snow", "ground"),
    ("solid-other", "solid"),
    ("stairs", "furniture-stuff"),
    ("stone", "solid"),
    ("straw", "plant"),
    ("structural-other", "structural"),
    ("table", "furniture-stuff"),
    ("tent", "building"),
    ("textile-other", "textile"),
    ("towel", "textile"),
    ("tree", "plant"),
    ("vegetable", "food-stuff"),
    ("wall-brick", "wall"),
    ("wall-concrete", "wall"),
    ("wall-other", "wall"),
    ("wall-panel", "wall"),
    ("wall-stone", "wall"),
    ("wall-tile", "wall"),
    ("wall-wood", "wall"),
    ("water-other", "water"),
    ("waterdrops", "water"),
    ("window-blind", "window"),
    ("window-other", "window"),
    ("wood", "solid"),
)
COCO_UNUSED_THING_LABELS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)  # COCO ids 12, 26, 29, ... never used


def cocostuff_lut(num_classes: int) -> np.ndarray:
    """Lookup table raw stuffthingmaps value (0..255) -> class id for 27 or 171 classes."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    if num_classes == 27:
        index = {n: i for i, n in enumerate(COCO27_CLASSES)}
        for first, last, name in _THING_RANGES:
            lut[first : last + 1] = index[name]
        for k, (_, coarse) in enumerate(_STUFF):
            lut[91 + k] = index[coarse]
    elif num_classes == 171:
        used = [v for v in range(182) if v not in COCO_UNUSED_THING_LABELS]
        lut[used] = np.arange(171)
    else:
        raise ValueError(f"COCO-Stuff num_classes must be 27 or 171, got {num_classes}")
    return lut


@dataclass
class COCOStuffConfig(DatasetConfig):
    num_classes: int = 27  # 27 coarse classes (JAFAR / FeatUp protocol) or 171 fine classes
    image_list: str | None = None  # txt of image ids to use (e.g. IIC's Coco164kFull_Stuff_Coarse.txt);
    # None: root/curated/<split>2017/Coco164kFull_Stuff_Coarse.txt if present (JAFAR's curated subset), else all


class COCOStuffSegmentation(SegmentationFolder):
    name = "cocostuff"

    def __init__(self, root: str | Path, split: str = "val", config: COCOStuffConfig | None = None) -> None:
        config = config or COCOStuffConfig()
        lut = cocostuff_lut(config.num_classes)
        self.num_classes = config.num_classes
        self.class_names = COCO27_CLASSES if config.num_classes == 27 else None
        sub = f"{split}2017"
        base = Path(root).expanduser()
        layouts = [  # (images dir, labels dir)
            (base / "images" / sub, base / "stuffthingmaps_trainval2017" / sub),
            (base / "images" / sub, base / "annotations" / sub),
            (base / "dataset" / "images" / sub, base / "dataset" / "annotations" / sub),
        ]
        for img_dir, ann_dir in layouts:
            if img_dir.is_dir() and ann_dir.is_dir():
                break
        else:
            raise FileNotFoundError(
                f"COCO-Stuff layout not found under {str(base)!r}: expected one of {[f'{i} + {a}' for i, a in layouts]}"
            )
        list_path = (
            Path(config.image_list) if config.image_list else base / "curated" / sub / "Coco164kFull_Stuff_Coarse.txt"
        )
        if config.image_list and not list_path.is_file():
            raise FileNotFoundError(f"COCO-Stuff image list not found: {str(list_path)!r}")
        if list_path.is_file():
            ids = [s.strip() for s in list_path.read_text().splitlines() if s.strip()]
            images = [img_dir / f"{i}.jpg" for i in ids]
            missing = [str(p) for p in images if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"COCO-Stuff: {len(missing)} listed images missing, e.g. {missing[0]!r}")
        else:
            images = sorted(img_dir.glob("*.jpg"))
        pairs = _pairs_by_stem(images, ann_dir, ".png", "COCO-Stuff")
        super().__init__(split, config, pairs, lut)


# ----------------------------------------------------------------------------- Cityscapes
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)  # -> train ids 0..18


@dataclass
class CityscapesConfig(DatasetConfig):
    pass


class CityscapesSegmentation(SegmentationFolder):
    name = "cityscapes"
    num_classes = 19
    class_names = CITYSCAPES_CLASSES

    def __init__(self, root: str | Path, split: str = "val", config: CityscapesConfig | None = None) -> None:
        base = find_root(root, "leftImg8bit", ["", "cityscapes"])
        img_dir = require_dir(base / "leftImg8bit" / split, "Cityscapes images")
        gt_dir = require_dir(base / "gtFine" / split, "Cityscapes labels")
        images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise FileNotFoundError(f"Cityscapes: no */*_leftImg8bit.png under {str(img_dir)!r}")
        pairs = []
        for p in images:
            lbl = gt_dir / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            if not lbl.is_file():
                raise FileNotFoundError(f"Cityscapes label missing: {str(lbl)!r}")
            pairs.append((p, lbl))
        lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
        lut[list(CITYSCAPES_LABEL_IDS)] = np.arange(19)
        super().__init__(split, config or CityscapesConfig(), pairs, lut)
