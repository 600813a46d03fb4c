"""The built-in datasets: a declarative table (imported once, lazily, by :data:`anyup.eval.datasets.DATASETS`)."""

from __future__ import annotations

from anyup.eval.datasets import DatasetSpec, register
from anyup.eval.datasets.photos import PhotosConfig, PhotosDataset


def _root(root: str | None) -> str:
    """The root of a ``needs_root`` dataset (``create`` already refuses ``None``; this keeps the types honest)."""
    if root is None:
        raise ValueError("this dataset needs root=<folder with its files>")
    return root


register(
    DatasetSpec(
        "photos",
        "real sample photos from scikit-image, scikit-learn and opencv-doc (no labels)",
        PhotosConfig,
        lambda root, split, cfg: PhotosDataset(root, split, cfg),
        tasks=(),
        needs_root=False,
        splits=("train", "val", "test"),
    )
)

from anyup.eval.datasets import depth, segmentation, synthetic  # noqa: E402

register(
    DatasetSpec(
        "voc",
        "Pascal VOC 2012 segmentation, 21 classes",
        segmentation.VOCConfig,
        lambda root, split, cfg: segmentation.VOCSegmentation(_root(root), split, cfg),
        tasks=("seg",),
        needs_root=True,
        layout="VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/{train,val}.txt}",
    )
)
register(
    DatasetSpec(
        "ade20k",
        "ADE20k (SceneParsing 2016), 150 classes",
        segmentation.ADE20kConfig,
        lambda root, split, cfg: segmentation.ADE20kSegmentation(_root(root), split, cfg),
        tasks=("seg",),
        needs_root=True,
        layout="ADEChallengeData2016/{images,annotations}/{training,validation}/",
    )
)
register(
    DatasetSpec(
        "cocostuff",
        "COCO-Stuff 164k, 27 coarse classes (or 171 with num_classes=171)",
        segmentation.COCOStuffConfig,
        lambda root, split, cfg: segmentation.COCOStuffSegmentation(_root(root), split, cfg),
        tasks=("seg",),
        needs_root=True,
        layout="images/{train2017,val2017}/*.jpg + stuffthingmaps_trainval2017/{train2017,val2017}/*.png",
    )
)
register(
    DatasetSpec(
        "cityscapes",
        "Cityscapes fine annotations, 19 train ids",
        segmentation.CityscapesConfig,
        lambda root, split, cfg: segmentation.CityscapesSegmentation(_root(root), split, cfg),
        tasks=("seg",),
        needs_root=True,
        layout="leftImg8bit/{split}/{city}/*_leftImg8bit.png + gtFine/{split}/{city}/*_gtFine_labelIds.png",
    )
)
register(
    DatasetSpec(
        "nyuv2",
        "NYUv2 depth (+ normals, NYU-40 seg when present), folder layout",
        depth.NYUv2Config,
        lambda root, split, cfg: depth.NYUv2(_root(root), split, cfg),
        tasks=("depth", "normals", "seg"),
        needs_root=True,
        layout="{train,val}/{rgb,depth[,normals][,seg]}/<name>.* (see anyup.eval.datasets.depth)",
    )
)
register(
    DatasetSpec(
        "middlebury",
        "Middlebury stereo photos with GT disparity -> relative depth (offline: skimage, opencv-doc)",
        depth.MiddleburyConfig,
        lambda root, split, cfg: depth.MiddleburyStereo(root, split, cfg),
        tasks=("depth",),
        needs_root=False,
        splits=("train", "val", "test"),
    )
)
register(
    DatasetSpec(
        "synthetic",
        "rendered scenes (pybullet): 8 classes, metric depth, normals; generated and cached",
        synthetic.SyntheticConfig,
        lambda root, split, cfg: synthetic.SyntheticScenes(root, split, cfg),
        tasks=("seg", "depth", "normals"),
        needs_root=False,
        splits=("train", "val", "test"),
    )
)
