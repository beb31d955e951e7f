"""Test-set predictions of a run's best checkpoint, and the per-class numbers built from them.

The model is rebuilt from the run's config.yaml and loaded from checkpoints/best.pt
(never from the hub or `model.weights`: best.pt holds every tensor), the test split
is rebuilt by the same data code, and the trainer's own `predict` runs it (so test
time augmentation and precision are those of the run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainpipe.report.runs import Run


@dataclass
class TestPredictions:
    pred: np.ndarray  # (N,) predicted class
    target: np.ndarray  # (N,) true class
    classes: list[str]

    @property
    def accuracy(self) -> float:
        return float((self.pred == self.target).mean()) if len(self.target) else float("nan")


def predict_test(run: Run, *, device: str = "auto") -> TestPredictions:
    """Evaluate `run`'s best.pt (last.pt when there is no best) on its test split.

    Raises ConfigError/DataError when the data or the checkpoint are not there, and
    LookupError when the dataset has no test split.
    """
    from trainpipe import checkpoint as ckpt
    from trainpipe import config as config_mod
    from trainpipe import data as data_mod
    from trainpipe import models
    from trainpipe.engine import Trainer, resolve_device
    from trainpipe.errors import ConfigError

    path = run.path / "checkpoints" / "best.pt"
    if not path.is_file():
        path = run.path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise ConfigError(f"report: {run.path} has no checkpoints/best.pt or last.pt to evaluate.")
    cfg = config_mod.validate(run.config)
    # Only the evaluation is rebuilt: no EMA copy, no compile.
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"ema": None, "compile": False})})
    dev = resolve_device(device)
    data = data_mod.build(cfg.data, seed=cfg.seed, device=dev, channels_last=cfg.train.channels_last)
    if data.test is None:
        raise LookupError(f"dataset {cfg.data.dataset} has no test split")
    m = cfg.model
    model = models.build(m.name, m.options(), data.spec, pretrained=False, weights=None,
                         input_size=m.input_size, freeze="none")
    model.load_state_dict(ckpt.load(path, map_location="cpu")["model"])
    model = model.to(dev, memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
    trainer = Trainer(cfg, model, None, None, data, device=dev)  # type: ignore[arg-type]
    logits, y = trainer.predict(data.test, model=model)
    if y.dim() == 2:
        y = y.argmax(dim=1)
    return TestPredictions(logits.argmax(dim=1).cpu().numpy(), y.cpu().numpy(), list(data.spec.classes))


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[i, j]: test samples of true class i predicted as j."""
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class; NaN for a class absent from the test split."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def most_confused(cm: np.ndarray, classes: list[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The k (true, predicted, count) pairs with the most mistakes."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None)[::-1][:k]
    pairs = [np.unravel_index(i, off.shape) for i in flat]
    return [(classes[i], classes[j], int(off[i, j])) for i, j in pairs if off[i, j] > 0]
