"""``anyup eval run``: probes and label-free fidelity over datasets x encoders x methods.

A *suite* (:data:`SUITES`) names the datasets, encoders, methods and the protocol per task;
command-line options narrow or override it. For every encoder and dataset the runner

1. loads the train and evaluation splits, resizes them to the protocol's image size and runs
   the encoder once per image (features cached on disk, :mod:`anyup.eval.features`);
2. for every method, upsamples the features per batch and trains one 1x1 probe per task and
   seed, then evaluates it (:mod:`anyup.eval.probes`);
3. on the fidelity datasets, compares each method's upsampling of the features of a downscaled
   image with the encoder's own features of the full image.

Results go to ``results.csv`` after every (encoder, dataset) block, so an interrupted run keeps
what it finished; ``results.md`` and the plots are written at the end.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anyup._atomic import ensure_writable_dir
from anyup._checks import error_summary
from anyup.eval.features import FeatureCache, default_cache_dir, prepare_fidelity, prepare_samples
from anyup.eval.metrics import FidelityMeter, feature_edges
from anyup.eval.probes import ProbeSample, UpsampledFeatures, _normalize, evaluate_probes, image_float, train_probes
from anyup.eval.protocols import Protocol, get_protocol
from anyup.eval.report import ResultRow, versions, write_csv, write_markdown, write_plots

logger = logging.getLogger(__name__)

__all__ = ["RunOptions", "SUITES", "Suite", "load_splits", "make_upsampler", "run", "run_fidelity", "run_probes"]

PROBE_TASKS = ("seg", "depth", "normals")
ALL_TASKS = PROBE_TASKS + ("fidelity",)
UNAVAILABLE_ERRORS = (RuntimeError, ImportError, FileNotFoundError, OSError)
# Methods left out of label-free fidelity: "highres" encodes the full image, i.e. computes the reference.
FIDELITY_EXCLUDED = ("highres",)


@dataclass(frozen=True)
class Suite:
    """What ``anyup eval run --suite NAME`` evaluates by default."""

    name: str
    datasets: tuple[str, ...]  # probe datasets (their tasks) and fidelity datasets
    encoders: tuple[str, ...]
    methods: tuple[str, ...] | None  # None: every registered method that can be built here
    protocols: dict[str, str]  # task (seg/depth/normals/fidelity) -> protocol preset
    fidelity_datasets: tuple[str, ...]  # datasets on which fidelity is measured
    probe_encoders: tuple[str, ...] | None = None  # encoders used for probes (None: all)
    description: str = ""


SUITES: dict[str, Suite] = {
    "offline": Suite(
        name="offline",
        datasets=("synthetic", "middlebury", "photos"),
        encoders=("efficientnet_lite0", "vgg16_bn_craft", "vgg16_hed"),
        methods=None,
        protocols={"seg": "offline", "depth": "offline", "normals": "offline", "fidelity": "offline"},
        fidelity_datasets=("photos", "middlebury"),
        probe_encoders=("efficientnet_lite0",),
        description="everything that runs on this machine without downloads (CPU, < 20 min)",
    ),
    "paper": Suite(
        name="paper",
        datasets=("cocostuff", "ade20k", "voc", "nyuv2"),
        encoders=("dinov2_vits14",),
        methods=None,
        protocols={"seg": "jafar", "depth": "probe3d", "normals": "probe3d", "fidelity": "jafar"},
        fidelity_datasets=("voc",),
        description="the AnyUp paper's probes (needs the datasets via --root and the DINOv2 weights; GPU advised)",
    ),
}


@dataclass
class RunOptions:
    """Everything ``run`` needs; CLI flags map 1:1 onto these fields."""

    out: Path
    suite: str = "offline"
    datasets: Sequence[str] | None = None
    encoders: Sequence[str] | None = None
    methods: Sequence[str] | None = None
    tasks: Sequence[str] | None = None  # subset of ALL_TASKS
    protocol: str | None = None  # one preset for every task (overrides the suite's)
    overrides: dict[str, Any] = field(default_factory=dict)  # protocol field overrides
    roots: dict[str, str] = field(default_factory=dict)  # dataset -> folder ("*" = any)
    cache_dir: Path | None = None  # None: default_cache_dir()
    use_cache: bool = True  # False: never read or write cached encoder features
    pretrained: bool = True  # False: random-init encoders (tests)
    probe_encoders: Sequence[str] | None = None  # default: the suite's
    method_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> config overrides
    memory_budget: int = 3 << 30  # bytes of upsampled features kept in memory per split
    progress: bool = True
    command: str = ""
    title: str = "anyup evaluation"


def resolve_protocols(suite: Suite, options: RunOptions) -> dict[str, Protocol]:
    out = {}
    for task in ALL_TASKS:
        name = options.protocol or suite.protocols.get(task) or "offline"
        out[task] = get_protocol(name, **options.overrides)
    return out


def _root_for(name: str, roots: dict[str, str]) -> str | None:
    return roots.get(name) or roots.get("*")


def load_splits(name: str, roots: dict[str, str], config: dict[str, Any] | None = None) -> tuple[Any, Any, str]:
    """``(train, eval, note)`` datasets of ``name``; a dataset without a train split is split in two.

    Without a ``train`` split the ``val`` items are divided deterministically: even positions
    train the probe, odd positions evaluate it (``note`` says so). When the train and val
    splits hold the very same items (Middlebury), ``note`` starts with ``"same items"`` and the
    caller splits the pixels instead (:func:`split_pixels`).
    """
    from anyup.eval import datasets as D

    spec = D.get_spec(name)
    root = _root_for(name, roots)
    if "train" in spec.splits and "val" in spec.splits:
        train = D.create(name, root=root, split="train", config=config)
        val = D.create(name, root=root, split="val", config=config)
        items_t, items_v = getattr(train, "items", None), getattr(val, "items", None)
        if items_t and items_t == items_v:
            return (
                train,
                val,
                (
                    f"same items: {name} has the same images in train and val; probes train on the left "
                    "half of each image's pixels and are evaluated on the right half"
                ),
            )
        return train, val, ""
    only = "val" if "val" in spec.splits else spec.splits[0]
    ds = D.create(name, root=root, split=only, config=config)
    idx = list(range(len(ds)))
    return (
        _Subset(ds, idx[0::2]),
        _Subset(ds, idx[1::2]),
        f"{name}: no train split; even items train, odd items evaluate",
    )


def split_pixels(
    samples: Sequence[ProbeSample], ignore_index: int = 255
) -> tuple[list[ProbeSample], list[ProbeSample]]:
    """Two views of the same samples: labels kept on the left half of the columns / on the right half.

    Images and features are shared; outside its half a view's ``seg`` is ``ignore_index`` and its
    depth / normals valid masks are False.
    """

    def view(s: ProbeSample, left: bool) -> ProbeSample:
        w = s.size[1]
        keep = torch.zeros(s.size, dtype=torch.bool)
        if left:
            keep[:, : w // 2] = True
        else:
            keep[:, w // 2 :] = True
        v = dataclasses.replace(s)
        if s.seg is not None:
            v.seg = torch.where(keep, s.seg, torch.full_like(s.seg, ignore_index))
        if s.depth_valid is not None:
            v.depth_valid = s.depth_valid & keep
        if s.normals_valid is not None:
            v.normals_valid = s.normals_valid & keep
        return v

    return [view(s, True) for s in samples], [view(s, False) for s in samples]


class _Subset(torch.utils.data.Dataset):
    """A view of some items of a dataset that keeps its attributes (tasks, num_classes, ...)."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "indices"):
            raise AttributeError(name)
        return getattr(self.base, name)


def make_upsampler(method: str, encoder: Any = None, config: dict[str, Any] | None = None) -> Callable:
    """Build baseline ``method`` (eval mode) with optional config overrides.

    Methods whose config has an ``encoder`` field (``highres``) get the built ``encoder`` object,
    so they use the very same weights as the features they are compared with.
    """
    from anyup import baselines as B

    spec = B.get_spec(method)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    cfg = dict(config or {})
    if "encoder" in fields and encoder is not None and "encoder" not in cfg:
        cfg["encoder"] = encoder
    up = B.create(method, cfg or None)
    up.eval()
    return up


def resolve_methods(requested: Sequence[str] | None) -> tuple[list[str], bool]:
    """``(names, explicit)``: the requested methods (validated) or every registered one."""
    from anyup import baselines as B

    names = list(requested) if requested else B.list_methods()
    for n in names:
        B.get_spec(n)  # unknown name -> ValueError listing valid ones
    return names, bool(requested)


# --------------------------------------------------------------------------------------------
# Probes and fidelity for one (encoder, dataset)
# --------------------------------------------------------------------------------------------


def run_probes(
    *,
    dataset_name: str,
    encoder_name: str,
    train: Sequence[ProbeSample],
    evals: Sequence[ProbeSample],
    tasks: Sequence[str],
    upsamplers: dict[str, Callable],
    protocol: Protocol,
    num_classes: int = 0,
    ignore_index: int = 255,
    memory_budget: int = 3 << 30,
    progress: bool = False,
) -> list[ResultRow]:
    """Train and evaluate one probe per (method, task, seed) on prepared samples."""
    rows: list[ResultRow] = []
    for method, up in upsamplers.items():
        tr = UpsampledFeatures(up, train, budget_bytes=memory_budget)
        ev = UpsampledFeatures(up, evals, budget_bytes=memory_budget)
        for seed in protocol.seeds:
            t0 = time.perf_counter()
            # one probe per task, trained side by side (identical to training them one by one)
            heads = train_probes(
                tasks,
                tr,
                protocol,
                seed,
                num_classes=num_classes,
                ignore_index=ignore_index,
                progress=progress,
                desc=f"{dataset_name}/{encoder_name}/{method}/s{seed}",
            )
            results = evaluate_probes(heads, ev, protocol, num_classes=num_classes, ignore_index=ignore_index)
            for task, metrics in results.items():
                logger.info(
                    "%s %s %s %s seed %d: %s",
                    dataset_name,
                    encoder_name,
                    method,
                    task,
                    seed,
                    {k: round(v, 4) for k, v in metrics.items()},
                )
                rows += [ResultRow(dataset_name, encoder_name, method, task, k, v, seed) for k, v in metrics.items()]
            logger.info("%s %s %s seed %d: %.1fs", dataset_name, encoder_name, method, seed, time.perf_counter() - t0)
        tr.clear()
        ev.clear()
    return rows


@torch.no_grad()
def fidelity_metrics(samples: Sequence[Any], up: Callable, edge_quantile: float) -> dict[str, float]:
    """Cosine between ``up(full image, features of the small image, reference grid)`` and the reference."""
    meter = FidelityMeter()
    for s in samples:
        ref = s.features_hr[None].float()  # (1, C, H', W')
        img = _normalize(image_float([s.image]))  # (1, 3, H, W)
        pred = up(img, s.features_lr[None].float(), tuple(ref.shape[-2:])).float()
        meter.update(pred, ref, feature_edges(ref, edge_quantile))
    return meter.compute()


def fidelity_samples(
    dataset: Any, encoder: Any, protocol: Protocol, cache: FeatureCache, progress: bool = False, desc: str = "fidelity"
) -> list[Any]:
    """The fidelity pairs of ``dataset`` at the sizes of ``protocol`` (:func:`prepare_fidelity`, cached)."""
    return prepare_fidelity(
        dataset,
        encoder,
        protocol.fidelity_image_size,
        protocol.fidelity_scale,
        cache,
        max_images=protocol.fidelity_max_images,
        progress=progress,
        desc=desc,
    )


def run_fidelity(
    *,
    dataset_name: str,
    encoder_name: str,
    samples: Sequence[Any],
    upsamplers: dict[str, Callable],
    protocol: Protocol,
    progress: bool = False,
) -> list[ResultRow]:
    rows: list[ResultRow] = []
    items = upsamplers.items()
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(list(items), desc=f"{dataset_name}/{encoder_name}: fidelity", leave=False, dynamic_ncols=True)
    for method, up in items:
        m = fidelity_metrics(samples, up, protocol.fidelity_edge_quantile)
        rows += [ResultRow(dataset_name, encoder_name, method, "fidelity", k, v, None) for k, v in m.items()]
    return rows


# --------------------------------------------------------------------------------------------
# The whole suite
# --------------------------------------------------------------------------------------------


def _build_upsamplers(
    methods: Sequence[str],
    encoder: Any,
    configs: dict[str, dict[str, Any]],
    explicit: bool,
    skipped: list[tuple[str, str]],
) -> dict[str, Callable]:
    """Build every method; unavailable ones from the default list are skipped with their one-line reason.

    A method asked for explicitly (``--methods``) that cannot be built (missing weights, hub code,
    configuration such as ``anyup_checkpoint`` without ``checkpoint=``) is an error, never a
    silent skip.
    """
    from anyup.baselines import MethodUnavailable

    ups: dict[str, Callable] = {}
    for m in methods:
        try:
            ups[m] = make_upsampler(m, encoder, configs.get(m))
        except (MethodUnavailable, ValueError, FileNotFoundError) as err:
            if explicit:
                raise RuntimeError(
                    f"requested method {m!r} cannot run here: {error_summary(err, with_type=False)}"
                ) from err
            reason = error_summary(err, with_type=False)
            if (f"method {m}", reason) not in skipped:
                skipped.append((f"method {m}", reason))
            logger.warning("skipping method %s: %s", m, reason)
    return ups


def create_encoder(name: str, pretrained: bool) -> Any:
    """Build encoder ``name`` or ``name@layer`` (e.g. ``efficientnet_lite0@stage5``, a layer other
    than the default); random-init encoders (``pretrained=False``) are seeded (0) so runs repeat."""
    from anyup import encoders as E

    base, _, layer = name.partition("@")
    layers = layer or None
    if pretrained:
        return E.create(base, pretrained=True, layers=layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return E.create(base, pretrained=False, layers=layers)


def run(options: RunOptions) -> list[ResultRow]:
    """Run a suite; writes ``results.csv``, ``results.md`` and plots to ``options.out``; returns the rows."""
    if options.suite not in SUITES:
        raise ValueError(f"unknown suite {options.suite!r}; choose one of {list(SUITES)}")
    suite = SUITES[options.suite]
    tasks = tuple(options.tasks) if options.tasks else ALL_TASKS
    bad = sorted(set(tasks) - set(ALL_TASKS))
    if bad:
        raise ValueError(f"unknown task(s) {bad}; choose from {list(ALL_TASKS)}")
    datasets = tuple(options.datasets) if options.datasets else suite.datasets
    encoders = tuple(options.encoders) if options.encoders else suite.encoders
    probe_encoders = (
        tuple(options.probe_encoders)
        if options.probe_encoders
        else (suite.probe_encoders if (suite.probe_encoders and not options.encoders) else encoders)
    )
    fidelity_datasets = suite.fidelity_datasets if not options.datasets else datasets
    protocols = resolve_protocols(suite, options)
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    methods, explicit = resolve_methods(options.methods)
    out = ensure_writable_dir(options.out)  # before any work; removes temp files of killed runs
    cache_root = (options.cache_dir or default_cache_dir()) if options.use_cache else None
    cache = FeatureCache(cache_root)
    rows: list[ResultRow] = []
    t_start = time.perf_counter()
    date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")

    from anyup.eval import datasets as D

    for d in datasets:
        D.get_spec(d)  # fail fast on unknown names
    missing_roots = [d for d in datasets if D.get_spec(d).needs_root and _root_for(d, options.roots) is None]
    if missing_roots and (options.datasets or set(missing_roots) == set(datasets)):
        # asked for by name, or nothing of the suite could run: an error before any encoder is built
        need = ", ".join(f"--root {d}=FOLDER ({D.get_spec(d).layout})" for d in missing_roots)
        raise FileNotFoundError(f"dataset(s) {', '.join(missing_roots)} need their folders: pass {need}")

    def flush() -> None:
        write_csv(rows, out / "results.csv")

    from anyup import encoders as E

    hub_failure: str | None = None  # after one hub download fails, skip the other hub encoders at once
    for enc_name in encoders:
        needs_hub = options.pretrained and not E.get_spec(enc_name.partition("@")[0]).offline
        if needs_hub and hub_failure is not None:
            skipped.append(
                (f"encoder {enc_name}", f"pretrained weights come from the hub, unreachable here ({hub_failure})")
            )
            continue
        try:
            encoder = create_encoder(enc_name, options.pretrained)
        except UNAVAILABLE_ERRORS as err:
            if options.encoders:  # asked for by name: an error, not a skip
                raise RuntimeError(
                    f"requested encoder {enc_name!r} cannot run here: {error_summary(err, with_type=False)}"
                ) from err
            reason = error_summary(err, with_type=False)
            skipped.append((f"encoder {enc_name}", reason))
            logger.warning("skipping encoder %s: %s", enc_name, reason)
            if needs_hub:
                hub_failure = f"first failure: {enc_name}"
            continue
        ups = _build_upsamplers(methods, encoder, options.method_configs, explicit, skipped)
        for ds_name in datasets:
            spec = D.get_spec(ds_name)
            probe_tasks = [t for t in PROBE_TASKS if t in tasks and t in spec.tasks]
            do_probe = bool(probe_tasks) and enc_name in probe_encoders
            do_fid = "fidelity" in tasks and ds_name in fidelity_datasets
            if not (do_probe or do_fid):
                continue
            try:
                train_ds, eval_ds, note = load_splits(ds_name, options.roots)
            except (ValueError, FileNotFoundError, ImportError, RuntimeError) as err:
                if options.datasets:  # asked for by name: an error, not a skip
                    raise RuntimeError(
                        f"requested dataset {ds_name!r} cannot be loaded: {error_summary(err, with_type=False)}"
                    ) from err
                if spec.needs_root and _root_for(ds_name, options.roots) is None:
                    skipped.append((f"dataset {ds_name}", f"needs --root {ds_name}=FOLDER ({spec.layout})"))
                else:
                    skipped.append((f"dataset {ds_name}", error_summary(err, with_type=False)))
                logger.warning("skipping dataset %s: %s", ds_name, err)
                continue
            if note and note not in notes:
                notes.append(note)
            where = {"dataset_name": ds_name, "encoder_name": enc_name}  # names of the rows
            if do_probe:
                # tasks sharing a protocol share the prepared samples and the upsampled features
                by_protocol: dict[Protocol, list[str]] = {}
                for t in probe_tasks:
                    by_protocol.setdefault(protocols[t], []).append(t)
                ignore = int(getattr(train_ds, "ignore_index", 255))
                for proto, ptasks in by_protocol.items():
                    tag = f"{ds_name}/{enc_name}"
                    train = prepare_samples(
                        train_ds,
                        encoder,
                        proto.image_size,
                        cache,
                        max_images=proto.max_train_images,
                        flips=proto.hflip,
                        tasks=ptasks,
                        progress=options.progress,
                        desc=f"{tag} train",
                    )
                    if note.startswith("same items"):
                        train, evals = split_pixels(train, ignore)
                    else:
                        evals = prepare_samples(
                            eval_ds,
                            encoder,
                            proto.image_size,
                            cache,
                            max_images=proto.max_eval_images,
                            tasks=ptasks,
                            progress=options.progress,
                            desc=f"{tag} eval",
                        )
                    rows += run_probes(
                        **where,
                        train=train,
                        evals=evals,
                        tasks=ptasks,
                        upsamplers=ups,
                        protocol=proto,
                        num_classes=int(getattr(train_ds, "num_classes", 0)),
                        ignore_index=ignore,
                        memory_budget=options.memory_budget,
                        progress=options.progress,
                    )
                    flush()
            if do_fid:
                proto = protocols["fidelity"]
                fs = fidelity_samples(eval_ds, encoder, proto, cache, options.progress, f"{ds_name}/{enc_name}")
                # "highres" runs the encoder on the full image: the fidelity reference itself
                fid_ups = {m: u for m, u in ups.items() if m not in FIDELITY_EXCLUDED}
                for m in sorted(set(ups) - set(fid_ups)):
                    note = f"{m}: left out of fidelity (it encodes the full image, i.e. computes the reference itself)"
                    if note not in notes:
                        notes.append(note)
                rows += run_fidelity(**where, samples=fs, upsamplers=fid_ups, protocol=proto, progress=options.progress)
                flush()
        del encoder
    flush()
    elapsed = time.perf_counter() - t_start
    used = {t: protocols[t] for t in tasks if any(r.task == t for r in rows)}
    meta = {
        "title": options.title,
        "protocols": used,
        "versions": versions(),
        "date": date,
        "command": options.command,
        "elapsed_s": elapsed,
        "skipped": skipped,
        "notes": notes + [f"Feature cache: {cache_root} ({cache.hits} hits, {cache.misses} misses)."],
    }
    write_markdown(rows, out / "results.md", meta)
    try:
        write_plots(rows, out)
    except ImportError as err:
        logger.warning("no plots: %s", err)
    bad_values = [r for r in rows if not math.isfinite(r.value)]
    if bad_values:
        logger.warning("%d non-finite values in the results (e.g. %s)", len(bad_values), bad_values[0])
    logger.info("wrote %d rows to %s in %.1f min", len(rows), out, elapsed / 60)
    if not rows:
        reasons = (
            "; ".join(f"{what}: {why}" for what, why in skipped) or "no (dataset, encoder, task) combination applies"
        )
        raise RuntimeError(f"nothing could run, 0 results ({reasons})")
    return rows
