"""`trainpipe eval RUN_DIR|CHECKPOINT`: loss, top-1/top-5, per-class accuracy and a confusion matrix.

Data and model are rebuilt from the config stored in the checkpoint (never from the
hub or `model.weights`: the checkpoint holds every tensor). A run directory is
evaluated with checkpoints/best.pt, else its newest good full checkpoint; a full
checkpoint is evaluated with its EMA weights when it has them, since those are
the weights the run evaluated. Results go next to the run, one pair of files per
checkpoint: eval-CHECKPOINT-SPLIT.json and confusion-CHECKPOINT-SPLIT.png (e.g.
eval-best-test.json; with `-tta` in the names when flip TTA is on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from trainpipe import files
from trainpipe.run import checkpoints as ckpt
from trainpipe.run import rundir
from trainpipe.errors import ConfigError


@dataclass(repr=False)
class EvalResult:
    checkpoint: Path
    split: str
    tta: bool
    metrics: dict[str, float]
    classes: list[str]
    per_class: dict[str, float]  # accuracy (recall) of each class; NaN for a class absent from the split
    confusion: np.ndarray  # confusion[i, j]: samples of true class i predicted as j
    json_path: Path
    image_path: Path

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items() if isinstance(v, float))
        return f"EvalResult({self.split}{' with tta' if self.tta else ''}: {shown}, checkpoint={str(self.checkpoint)!r})"


def locate(target: str | Path) -> tuple[Path, Path]:
    """(checkpoint, directory the results are written to) for a run directory or a checkpoint file."""
    p = Path(target)
    if p.is_dir():
        best = p / rundir.CHECKPOINTS / ckpt.BEST
        if best.is_file():
            return best, p
        cands = ckpt.resume_candidates(p / rundir.CHECKPOINTS)
        if not cands:
            raise ConfigError(f"eval: {str(p)!r} has no checkpoints/best.pt or last.pt; pass a run directory "
                              f"of `trainpipe train` or the path of a checkpoint file.")
        return cands[0], p
    if p.is_file():
        return p, p.parent.parent if p.parent.name == rundir.CHECKPOINTS else p.parent
    raise ConfigError(f"eval: {str(p)!r} does not exist; pass a run directory or a checkpoint (.pt) file.")


def _weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    ema = state.get("ema")
    if isinstance(ema, dict) and "module" in ema:
        return ema["module"]
    return state["model"]


def evaluate_checkpoint(
    target: str | Path,
    *,
    split: Literal["test", "val"] = "test",
    tta: bool = False,
    device: str | None = None,
) -> EvalResult:
    from sklearn.metrics import confusion_matrix

    from trainpipe import config as config_mod
    from trainpipe import data as data_mod
    from trainpipe import models
    from trainpipe.loop.device import memory_format, resolve_channels_last, resolve_device, resolve_precision
    from trainpipe.loop.trainer import metrics_from_logits, predict

    path, out_dir = locate(target)
    state = ckpt.load(path)
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise ConfigError(f"eval: checkpoint {str(path)!r} holds no trainpipe config and weights; only files "
                          f"written by trainpipe (checkpoints/best.pt, last.pt) can be evaluated.")
    cfg = config_mod.validate(state["config"])
    try:
        dev = resolve_device(device or cfg.train.device, key="--device")
    except ConfigError as e:
        if device:
            raise
        raise ConfigError(f"eval: the run trained on train.device={cfg.train.device}, which this machine cannot "
                          f"use; pass --device to evaluate on another device. {e}") from None
    splits = data_mod.load_splits(cfg.data, seed=cfg.seed)
    m = cfg.model
    model = models.build(m.name, m.options(), splits.spec, pretrained=False, weights=None,
                         input_size=m.input_size, freeze="none")
    # The same choice as the run made on this device; the weights load in either format.
    channels_last, _ = resolve_channels_last(cfg.train.channels_last, model, dev)
    data = data_mod.build(cfg.data, seed=cfg.seed, device=dev, channels_last=channels_last, splits=splits)
    loader = data.test if split == "test" else data.val
    if loader is None:
        other = "val" if split == "test" else "test"
        hint = ("the run used data.val_split=0" if split == "val"
                else f"dataset {cfg.data.dataset} has no test split")
        raise ConfigError(f"eval: --split {split}: this run has no {split} split ({hint}); try --split {other}.")
    model.load_state_dict(_weights(state))
    model = model.to(dev, memory_format=memory_format(channels_last))
    logits, y = predict(model, loader, device=dev, amp_dtype=resolve_precision(cfg.train.precision, dev),
                        tta="flip" if tta else "none")
    metrics = metrics_from_logits(logits, y, split)
    y_true = (y.argmax(1) if y.dim() == 2 else y).cpu().numpy()
    y_pred = logits.argmax(1).cpu().numpy()
    classes = [str(c) for c in data.spec.classes]
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    per_class = {c: float(a) for c, a in zip(classes, recall)}
    json_name, image_name = rundir.eval_names(path, split, tta)
    json_path, image_path = out_dir / json_name, out_dir / image_name
    files.write_text(json_path, json.dumps({
        "checkpoint": str(path), "split": split, "tta": tta, "samples": int(len(y_true)), "metrics": metrics,
        "per_class_accuracy": {c: (None if np.isnan(a) else a) for c, a in per_class.items()},
        "classes": classes, "confusion": cm.tolist(),
    }, indent=2) + "\n")
    draw_confusion(cm, classes, image_path, title=f"{cfg.name}: {split} ({metrics[f'{split}/acc']:.4f} top-1)")
    return EvalResult(path, split, tta, metrics, classes, per_class, cm, json_path, image_path)


def draw_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "") -> Path:
    """The confusion matrix as a PNG (counts in the cells up to 20 classes)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(classes)
    size = min(max(5.0, 0.45 * n + 2), 24.0)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay(cm, display_labels=classes if n <= 50 else None).plot(
        ax=ax, include_values=n <= 20, cmap="Blues", colorbar=n <= 50, xticks_rotation="vertical")
    if title:
        ax.set_title(title)
    files.atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    return path


def print_report(r: EvalResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    head = "  ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
    console.print(f"[bold]{r.checkpoint}[/] on {r.split}{' with flip TTA' if r.tta else ''}: {head}")
    table = Table(title="per-class accuracy")
    for col in ("class", "accuracy", "samples"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for i, c in enumerate(r.classes):
        a = r.per_class[c]
        table.add_row(c, "-" if np.isnan(a) else f"{a:.4f}", str(int(r.confusion[i].sum())))
    console.print(table)
    console.print(f"wrote {r.json_path} and {r.image_path}")
