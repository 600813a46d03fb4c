"""Evaluate a training run against baselines and plot its curves (``anyup train-eval RUN_DIR``).

For every encoder of the run, on the run's held-out images: feature fidelity (mean cosine to the
encoder's full-size features, see :func:`anyup.train.validate.feature_fidelity`) of bilinear
upsampling, the untrained initialisation, the trained model and any reference weights (e.g. the
published ``anyup_multi_backbone``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from anyup.train.config import TrainConfig, config_from_dict, load_yaml

logger = logging.getLogger(__name__)


def held_out_images(cfg: TrainConfig, run_dir: Path) -> torch.Tensor:
    """The validation images of a run, exactly as the trainer chose them: ``(N, 3, F*S, F*S)``."""
    from anyup.train.data import SizeIndex, collect_images, load_eval_images, split_holdout

    d = cfg.data
    if cfg.val.root:
        files = collect_images(cfg.val.root)
    else:
        min_size = d.min_size if d.min_size is not None else d.hr_factor * d.input_size
        kept, _ = SizeIndex(d.cache_dir or run_dir, threads=d.index_threads).filter(collect_images(d.root), min_size)
        files = split_holdout(kept, cfg.val.num_images, cfg.seed)[1]
    if not files:
        raise ValueError(f"run {str(run_dir)!r} has no held-out images (val.root empty and val.num_images=0)")
    return load_eval_images(files, d.hr_factor * d.input_size)[0]


def evaluate_run(
    run_dir: str | os.PathLike,
    references: dict[str, str] | None = None,
    device: str = "cpu",
    weights: str | os.PathLike | None = None,
    encoders: dict[str, torch.nn.Module] | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{"encoder", "method", "cosine"}`` for bilinear, untrained init, trained and reference weights.

    Args:
        run_dir: a run directory (``config.yaml`` and ``model.safetensors`` or ``checkpoints/last.pt``).
        references: ``{label: name or path}`` of other AnyUp weights to compare (``anyup.load``).
        device: where to evaluate.
        weights: the trained weights to evaluate (default: the run's export, else its last checkpoint).
        encoders: ready-made encoders by label, as for :func:`anyup.train.train`.
    """
    import anyup
    from anyup.model import AnyUpConfig
    from anyup.train.trainer import LAST_CHECKPOINT, MODEL_FILE, build_encoder, build_model
    from anyup.train.validate import feature_fidelity

    run_dir = Path(run_dir)
    cfg = config_from_dict(load_yaml(run_dir / "config.yaml"))
    images = held_out_images(cfg, run_dir)
    dev = torch.device(device)
    arch = AnyUpConfig(**{"max_memory": 8 * 2**30, **cfg.model})
    if weights is None:
        weights = run_dir / MODEL_FILE if (run_dir / MODEL_FILE).is_file() else run_dir / LAST_CHECKPOINT
    models: dict[str, torch.nn.Module] = {
        "untrained init": build_model(cfg, dev).eval(),
        f"trained ({Path(weights).name})": anyup.load(weights, device=dev, config=arch),
    }
    for label, ref in (references or {}).items():
        models[label] = anyup.load(ref, device=dev)  # architecture from the file's metadata when stored
    rows = []
    for spec in cfg.encoders:
        enc = (encoders or {}).get(spec.label) or build_encoder(spec, dev, cfg.seed)
        results = {
            label: feature_fidelity(m, enc, images, cfg.data.input_size, cfg.val.batch_size, dev)
            for label, m in models.items()
        }
        bilinear = next(iter(results.values()))["bilinear"]
        rows.append({"encoder": spec.label, "method": "bilinear", "cosine": bilinear})
        rows += [{"encoder": spec.label, "method": label, "cosine": r["anyup"]} for label, r in results.items()]
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Encoders as rows, methods as columns (mean cosine, 4 decimals)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    value = {(r["encoder"], r["method"]): r["cosine"] for r in rows}
    lines = ["| encoder | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for e in encoders:
        lines.append(f"| {e} | " + " | ".join(f"{value[(e, m)]:.4f}" for m in methods) + " |")
    if len(encoders) > 1:
        means = [sum(value[(e, m)] for e in encoders) / len(encoders) for m in methods]
        lines.append("| **mean** | " + " | ".join(f"**{v:.4f}**" for v in means) + " |")
    return "\n".join(lines)


def plot_curves(
    run_dir: str | os.PathLike, out: str | os.PathLike, reference: list[dict[str, Any]] | None = None
) -> Path:
    """Training loss and held-out fidelity vs step (from ``metrics.csv``), reference methods as lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError('plotting needs matplotlib: pip install "anyup[viz]"') from err
    from anyup.train.checkpoint import atomic_write
    from anyup.train.metrics import read_metrics

    rows = read_metrics(Path(run_dir) / "metrics.csv")
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.2))
    steps = [r["step"] for r in rows if "loss" in r]
    ax_loss.plot(steps, [r["loss"] for r in rows if "loss" in r], lw=0.6, alpha=0.35, color="C0", label="loss")
    window = max(1, len(steps) // 12)
    if window > 1 and len(steps) > window:
        vals = torch.tensor([r["loss"] for r in rows if "loss" in r])
        smooth = vals.unfold(0, window, 1).mean(1)
        ax_loss.plot(steps[window - 1 :], smooth.tolist(), color="C0", label=f"loss (mean of {window} logs)")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    key = "val_cos_anyup/mean" if any("val_cos_anyup/mean" in r for r in rows) else None
    if key is None:
        keys = sorted({k for r in rows for k in r if k.startswith("val_cos_anyup/")})
        key = keys[0] if keys else None
    if key is not None:
        label = key.split("/", 1)[1]
        val = [r for r in rows if key in r]
        ax_val.plot(
            [r["step"] for r in val], [r[key] for r in val], "o-", color="C1", label=f"AnyUp being trained ({label})"
        )
        bil_key = key.replace("anyup", "bilinear")
        ax_val.axhline(val[0][bil_key], color="gray", ls="--", label="bilinear")
    for i, ref in enumerate(reference or []):
        ax_val.axhline(ref["cosine"], color=f"C{i + 2}", ls=":", label=ref["method"])
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("held-out cosine to full-size features")
    ax_val.legend(fontsize=8)
    ax_val.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out
