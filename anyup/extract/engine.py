"""Running an extraction: one model-holding worker per CPU/GPU slot (Ray Data), or in-process.

Both engines run the same :class:`Extractor` on the same items and write the same store, so their
outputs are identical; Ray only changes where and how many at a time. The driver lists the items,
skips those the store already holds (resume), fits the PCA basis once (``pca``), then hands the rest
to the workers, which write straight into the store (on several nodes ``out`` must be a shared
filesystem path).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from anyup.extract.sources import ImageReader, batched, list_items
from anyup.extract.stores import PCA, STORAGE_DTYPES, STORES, Record, open_store
from anyup.weights import DEFAULT_WEIGHTS

logger = logging.getLogger(__name__)

ENGINES = ("auto", "local", "ray")


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract and where to (the same for every worker)."""

    out: str
    format: str = "zarr"  # "zarr" (one chunked array per item) or "wds" (webdataset shards)
    encoder: str = "efficientnet_lite0"
    encoder_weights: str | None = None  # local encoder weights file (hub encoders offline)
    pretrained: bool = True  # False: random-init encoder (tests)
    model: str = DEFAULT_WEIGHTS  # AnyUp weights name or path
    layer: str | None = None
    input_size: int | None = 448  # short side of the encoder input
    output_size: tuple[int, int] | None = None  # default: the encoder input size
    scale: float | None = None
    dtype: str = "float16"  # storage dtype; the networks run in float32
    pca: int | None = None  # keep k PCA components of the features (basis fitted once, stored)
    pca_fit_items: int = 16  # items whose low-res features fit the basis
    batch_size: int = 8  # items per worker call (and per webdataset shard)
    device: str = "cpu"
    threads: int | None = None  # torch threads per worker (default: the CPUs of its slot)

    def __post_init__(self) -> None:
        if self.format not in STORES:
            raise ValueError(f"format must be one of {sorted(STORES)}, got {self.format!r}")
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {self.dtype!r}")
        if self.pca is not None and (isinstance(self.pca, bool) or not isinstance(self.pca, int) or self.pca < 1):
            raise ValueError(f"pca must be a positive number of components or None, got {self.pca!r}")
        for name in ("batch_size", "pca_fit_items"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

    def settings(self) -> dict:
        """What a resumed run must share with the stored items."""
        keys = ("encoder", "encoder_weights", "pretrained", "model", "layer", "input_size", "scale", "dtype", "pca")
        d = {k: getattr(self, k) for k in keys}
        d["output_size"] = list(self.output_size) if self.output_size else None
        return d


@dataclass
class ExtractSummary:
    """What a run did."""

    total: int  # items in the inputs
    skipped: int  # already complete in the store before this run
    written: int
    failed: dict[str, str] = field(default_factory=dict)  # key -> error
    engine: str = "local"
    workers: int = 1


class Extractor:
    """Holds the encoder + AnyUp; ``__call__`` turns a batch of items into stored records.

    The Ray engine builds one per actor (``map_batches`` with this class), the local engine one in
    the driver. Batches are dicts of equal-length sequences ``key``, ``path``, ``member``.
    """

    def __init__(self, config: ExtractConfig | dict, pca: dict | None = None) -> None:
        from anyup.predictor import Upsampler

        self.config = config if isinstance(config, ExtractConfig) else _config_from_dict(config)
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.upsampler = Upsampler(
            cfg.encoder,
            cfg.model,
            weights=cfg.encoder_weights,
            pretrained=cfg.pretrained,
            layers=cfg.layer,
            input_size=cfg.input_size,
            device=cfg.device,
        )
        self.pca = PCA(torch.as_tensor(pca["mean"]), torch.as_tensor(pca["components"])) if pca else None
        self.store = open_store(cfg.out, cfg.format)
        self.reader = ImageReader()

    def lowres(self, item: dict[str, str]) -> torch.Tensor:
        """(C, h, w) float32 encoder features of one item (for the PCA fit)."""
        _, enc_in = self.upsampler.prepare(self.reader.read(item))
        with torch.no_grad():
            feats = self.upsampler.encoder(enc_in[None].to(self.upsampler.device))[0]  # (1, C, h, w)
        return feats[0].float().cpu()

    def record(self, item: dict[str, str]) -> Record:
        cfg = self.config
        res = self.upsampler(self.reader.read(item), output_size=cfg.output_size, scale=cfg.scale)
        feats = res.features[0].float().cpu()  # (C, H, W)
        meta = res.metadata()
        if self.pca is not None:
            feats = self.pca.project(feats)  # (k, H, W)
            meta["pca_components"] = str(feats.shape[0])
        dtype = STORAGE_DTYPES[cfg.dtype]
        meta.update({"key": item["key"], "source": item["path"] + (f":{item['member']}" if item["member"] else "")})
        meta["dtype"] = cfg.dtype
        return Record(item["key"], feats.to(dtype), res.lowres[0].float().cpu().to(dtype), meta)

    def __call__(self, batch: dict) -> dict:
        records, keys, errors = [], [], []
        for key, path, member in zip(batch["key"], batch["path"], batch["member"]):
            item = {"key": str(key), "path": str(path), "member": str(member)}
            try:
                records.append(self.record(item))
                error = ""
            except (OSError, ValueError, RuntimeError) as err:  # one bad image must not stop the rest
                error = f"{err.__class__.__name__}: {err}"
                logger.warning("item %s failed: %s", item["key"], error)
            keys.append(item["key"])
            errors.append(error)
        self.store.write(records)
        return {"key": keys, "error": errors}


def _config_from_dict(d: dict) -> ExtractConfig:
    d = dict(d)
    if d.get("output_size") is not None:
        d["output_size"] = tuple(d["output_size"])
    return ExtractConfig(**d)


def _fit_pca(extractor: Extractor, items: Sequence[dict[str, str]], k: int) -> PCA:
    """Basis of the pooled low-res pixels of ``items`` (AnyUp's outputs live in the same space)."""
    from anyup.viz.pca import fit_pca

    pixels = torch.cat([extractor.lowres(it).flatten(1) for it in items], dim=1)  # (C, N)
    basis = fit_pca(pixels[:, None, :], n_components=k)
    return PCA(basis.mean, basis.components)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def run(
    inputs: Sequence[str],
    config: ExtractConfig,
    engine: str = "auto",
    address: str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """Extract upsampled features of every input item into ``config.out``, skipping complete ones.

    Args:
        inputs: folders, image files, ``.txt`` file lists, ``.tar`` webdataset shards / brace patterns.
        engine: ``"ray"`` (Ray Data, ``map_batches`` over model-holding actors), ``"local"``
            (this process), or ``"auto"`` (ray when installed, else local).
        address: Ray cluster address (``"auto"``, ``"HOST:6379"``); default: ``$RAY_ADDRESS`` or a
            new local cluster.
        num_workers: Ray actors (default: one per GPU when ``device`` is CUDA, else one per CPU).

    Returns:
        An :class:`ExtractSummary`; ``failed`` lists items that could not be read or processed.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    bad_workers = isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1
    if num_workers is not None and bad_workers:
        raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
    if engine == "auto":
        engine = "ray" if ray_available() else "local"
    threads = torch.get_num_threads()
    try:
        return _run(inputs, config, engine, address, num_workers, progress)
    finally:
        torch.set_num_threads(threads)  # a local Extractor may have set its own thread count


def _run(inputs, config: ExtractConfig, engine: str, address, num_workers, progress) -> ExtractSummary:
    items = list_items(inputs)
    store = open_store(config.out, config.format)
    store.check_settings(config.settings())
    done = store.completed()
    todo = [it for it in items if it["key"] not in done]
    summary = ExtractSummary(total=len(items), skipped=len(items) - len(todo), written=0, engine=engine)
    logger.info("%d items, %d already in %s, %d to do", len(items), summary.skipped, config.out, len(todo))
    if not todo:
        return summary
    basis: PCA | None = None
    local: Extractor | None = None
    if config.pca is not None:
        basis = store.load_pca()
        if basis is None:
            local = Extractor(config)
            fit_items = items[: config.pca_fit_items]
            store.save_pca(_fit_pca(local, fit_items, config.pca), [it["key"] for it in fit_items])
            # project on the basis as stored (float32), as a resumed run will: not the float64 fit
            basis = store.load_pca()
    if engine == "local":
        extractor = local or Extractor(config)
        extractor.pca = basis
        results = _run_local(extractor, todo, config.batch_size, progress)
    else:
        pca = None if basis is None else {"mean": basis.mean.numpy(), "components": basis.components.numpy()}
        results, summary.workers = _run_ray(todo, config, pca, address, num_workers, progress)
    for key, error in results:
        if error:
            summary.failed[key] = error
        else:
            summary.written += 1
    return summary


def _run_local(extractor: Extractor, todo, batch_size: int, progress: bool):
    from tqdm import tqdm

    out = []
    with tqdm(total=len(todo), desc="extract", unit="img", disable=not progress) as bar:
        for batch in batched(todo, batch_size):
            res = extractor({k: [it[k] for it in batch] for k in ("key", "path", "member")})
            out += list(zip(res["key"], res["error"]))
            bar.update(len(batch))
    return out


def _run_ray(todo, config: ExtractConfig, pca, address, num_workers, progress):
    import ray
    from tqdm import tqdm

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    gpu = config.device.startswith("cuda")
    slots = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 1))
    if gpu and slots < 1:
        raise RuntimeError(f"device {config.device!r} but the Ray cluster has no GPU (resources: {resources})")
    workers = min(num_workers or max(1, slots), len(todo))
    cfg = asdict(config)
    if not gpu and not config.threads:
        cfg["threads"] = 1  # one CPU slot per actor
    ds = ray.data.from_items(todo, override_num_blocks=max(1, math.ceil(len(todo) / config.batch_size)))
    out_ds = ds.map_batches(
        Extractor,
        fn_constructor_kwargs={"config": cfg, "pca": pca},
        batch_size=config.batch_size,
        batch_format="numpy",
        concurrency=workers,
        num_cpus=0 if gpu else 1,
        num_gpus=1 if gpu else 0,
    )
    logger.info("ray: %d actors on %s", workers, resources)
    out = []
    with tqdm(total=len(todo), desc=f"extract (ray, {workers} workers)", unit="img", disable=not progress) as bar:
        for batch in out_ds.iter_batches(batch_size=None, batch_format="numpy"):
            keys, errors = [str(k) for k in batch["key"]], [str(e) for e in batch["error"]]
            out += list(zip(keys, errors))
            bar.update(len(keys))
    return out, workers
