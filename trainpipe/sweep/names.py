"""Names in a sweep file: W&B-style flat names, metric names, and labels for list/dict values.

A W&B user's sweep.yaml names the arguments of their own `train.py` (`learning_rate`,
`batch_size`, `epochs`) and the metrics it logs (`val_accuracy`). `param_key` maps
such a name to the config key it means, `metric_key` maps a logged metric name to
trainpipe's; the user's names are kept for results and reports.

A parameter whose values are lists or dicts (augmentation sets, an optimizer block)
is shown and stored in Optuna under a short label per value: the user's own (a
mapping `values: {label: value}`) or one derived from the value (`hflip+random_crop`,
`adamw(lr=0.001)`). Nothing here imports Optuna or torch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

# Flat names of W&B-style sweep files -> config keys. Several spellings of one thing
# are listed because each comes from a common train.py (argparse defaults, Keras,
# Lightning, timm's train.py).
PARAM_ALIASES: dict[str, str] = {
    "lr": "optim.lr", "learning_rate": "optim.lr", "base_lr": "optim.lr",
    "optimizer": "optim.name", "optimiser": "optim.name", "opt": "optim.name",
    "momentum": "optim.momentum", "nesterov": "optim.nesterov",
    "weight_decay": "optim.weight_decay", "wd": "optim.weight_decay",
    "batch_size": "data.batch_size", "dataset": "data.dataset", "val_split": "data.val_split",
    "augment": "data.augment", "augmentation": "data.augment", "augmentations": "data.augment",
    "epochs": "train.epochs", "num_epochs": "train.epochs", "max_epochs": "train.epochs", "n_epochs": "train.epochs",
    "scheduler": "sched.name", "lr_scheduler": "sched.name", "schedule": "sched.name",
    "warmup_epochs": "sched.warmup_epochs", "warmup_steps": "sched.warmup_steps",
    "label_smoothing": "train.label_smoothing", "smoothing": "train.label_smoothing",
    "grad_clip": "train.grad_clip", "clip_grad": "train.grad_clip", "max_grad_norm": "train.grad_clip",
    "gradient_clip_val": "train.grad_clip", "precision": "train.precision",
    "dropout": "model.dropout",
    "seed": "seed", "random_seed": "seed",
    "model": "model.name", "arch": "model.name", "architecture": "model.name", "model_name": "model.name",
    "mixup": "data.mix.mixup_alpha", "mixup_alpha": "data.mix.mixup_alpha",
    "cutmix": "data.mix.cutmix_alpha", "cutmix_alpha": "data.mix.cutmix_alpha",
}
# A section name whose values are plain names picks the component: `optim: {values: [sgd, adam]}`.
SECTION_NAME_KEYS = {"data": "data.dataset", "model": "model.name", "optim": "optim.name", "sched": "sched.name"}
# A flat name whose values are dicts sets the whole section: `optimizer: {values: [{name: sgd, lr: 0.1}]}`.
SECTION_OF = {"optimizer": "optim", "optimiser": "optim", "opt": "optim", "model": "model", "arch": "model",
              "architecture": "model", "scheduler": "sched", "lr_scheduler": "sched", "schedule": "sched"}
TOP_LEVEL_KEYS = ("name", "seed", "data", "model", "optim", "sched", "train", "tracking")

# Metric names W&B users log (Keras: accuracy/val_accuracy; Lightning and plain scripts:
# val_acc, val_loss, ...) -> trainpipe's per-epoch metric keys.
METRIC_ALIASES: dict[str, str] = {
    **dict.fromkeys(("val_accuracy", "val_acc", "validation_accuracy", "valid_accuracy", "valid_acc",
                     "eval_accuracy", "eval_acc", "val/accuracy", "val_top1", "val/top1"), "val/acc"),
    **dict.fromkeys(("val_loss", "validation_loss", "valid_loss", "eval_loss"), "val/loss"),
    **dict.fromkeys(("val_top5", "val_top5_acc", "val_top5_accuracy", "val/top5_acc"), "val/top5"),
    **dict.fromkeys(("train_accuracy", "train_acc", "accuracy", "acc", "training_accuracy", "train/accuracy"),
                    "train/acc"),
    **dict.fromkeys(("train_loss", "loss", "training_loss"), "train/loss"),
    **dict.fromkeys(("test_accuracy", "test_acc", "test/accuracy"), "test/acc"),
    **dict.fromkeys(("test_loss",), "test/loss"),
}

LABEL_WIDTH = 40


def metric_key(name: str) -> str:
    """trainpipe's key for a metric name (itself when it is one already)."""
    return METRIC_ALIASES.get(name, name)


def is_plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def param_key(name: str, values: Sequence[Any] | None = None) -> str:
    """The config key a sweep parameter sets. `values` (the choices, when known) decide
    between a component's name and its whole section for names such as `model`."""
    if "." in name:
        return name
    strings = values is not None and len(values) > 0 and all(isinstance(v, str) for v in values)
    dicts = values is not None and len(values) > 0 and all(isinstance(v, dict) for v in values)
    if name in SECTION_NAME_KEYS and strings:
        return SECTION_NAME_KEYS[name]
    if name in TOP_LEVEL_KEYS:
        return name
    if dicts and name in SECTION_OF:
        return SECTION_OF[name]
    if name == "arch" and strings and not all(_is_model(v) for v in values):
        return "model.arch"  # timm / torchvision architectures: model.name is timm or torchvision
    return PARAM_ALIASES.get(name, name)


def _is_model(name: str) -> bool:
    from trainpipe.registry import MODELS

    return MODELS.find(name) is not None


def full_key_hint(name: str, leaves: Sequence[str]) -> str:
    """'; did you mean optim.lr (learning_rate)?' for a flat name that is no config key."""
    by_tail: dict[str, str] = {}
    for k in leaves:
        by_tail.setdefault(k.rsplit(".", 1)[-1], k)
    choices = {**PARAM_ALIASES, **by_tail}
    close = difflib.get_close_matches(name, list(choices), n=2, cutoff=0.7)
    if not close:
        return ""
    return f"; did you mean {' or '.join(dict.fromkeys(choices[c] for c in close))}?"


# ------------------------------------------------------------------- labels
def derive_label(v: Any) -> str:
    """A short readable name for a value: `hflip+random_crop`, `adamw(lr=0.001)`, `none`."""
    if v is None or v == [] or v == {}:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float, str)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "+".join(derive_label(i) for i in v)
    if isinstance(v, dict):
        name = next((v[k] for k in ("name", "dataset") if isinstance(v.get(k), str)), None)
        rest = ",".join(f"{k}={derive_label(x)}" for k, x in v.items() if not (name is not None and v.get(k) == name))
        if name is None:
            return rest
        return f"{name}({rest})" if rest else name
    return str(v)


def _shorten(label: str, value: Any) -> str:
    if len(label) <= LABEL_WIDTH:
        return label
    digest = hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{label[:LABEL_WIDTH - 8]}~{digest}"


def make_labels(values: Sequence[Any]) -> tuple[str, ...]:
    """One distinct label per value, derived from the value (stable across runs)."""
    labels = [_shorten(derive_label(v), v) for v in values]
    seen: dict[str, int] = {}
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
    # Values that read the same (e.g. 1 and "1") keep their position to tell them apart.
    return tuple(lab if seen[lab] == 1 else f"{lab}#{i + 1}" for i, lab in enumerate(labels))


def needs_labels(values: Sequence[Any]) -> bool:
    """Optuna stores only plain values as categorical choices; lists and dicts get labels."""
    return not all(is_plain(v) for v in values)
