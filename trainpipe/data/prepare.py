"""What every cached source shares: decode once, conform, compute stats, cache.

A source supplies the list of files it reads (for the cache fingerprint) and a
`decode()` function returning a `Decoded`; `cached_source` runs `decode` only on a
cache miss, applies `data.image_size` / `data.channels`, checks the labels, fills
in mean/std and returns a `SourceData`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainpipe.data import cache
from trainpipe.data.base import SourceData, Split
from trainpipe.data.images import check_labels, conform
from trainpipe.errors import DataError

if TYPE_CHECKING:
    from trainpipe.config import DataConfig

SPLITS = ("train", "val", "test")
# Part of every cache key: bump when a source's decoding changes what it stores.
# 2: entries are checked for non-finite inputs before they are cached; 3: numeric labels are
# checked against the classes they imply (`classes_from_labels`)
SOURCES_VERSION = 3


@dataclass
class Decoded:
    """A source's splits as decoded from its files (before resizing and channel changes)."""

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # "train" (required), "val", "test"
    classes: list[str]
    # Published per-channel mean/std for the dataset's own channels, or None: computed.
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"skipped": 3}
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # extra arrays to cache


def feature_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (images, in [0, 1] units) or per-feature mean and std, in float64 chunks."""
    image = x.dtype == torch.uint8 and x.dim() == 4
    n_feat = x.shape[1]
    total = torch.zeros(n_feat, dtype=torch.float64)
    total_sq = torch.zeros(n_feat, dtype=torch.float64)
    count = 0
    per_row = max(1, x[0].numel() if len(x) else 1)
    step = max(1, (1 << 22) // per_row)  # about 4M values per chunk
    for i in range(0, len(x), step):
        c = x[i : i + step].double()
        if image:
            c = c.div_(255.0).transpose(0, 1).reshape(n_feat, -1)
        else:
            c = c.reshape(len(c), n_feat).T
        total += c.sum(dim=1)
        total_sq += (c * c).sum(dim=1)
        count += c.shape[1]
    if count == 0:
        return (0.0,) * n_feat, (1.0,) * n_feat
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt().clamp_min(1e-6)  # a constant pixel or feature would divide by zero
    return tuple(mean.tolist()), tuple(std.tolist())


def _adapt_stats(
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Published stats for the channels actually served (grey repeated to RGB keeps them)."""
    if stats is None:
        return None
    mean, std = stats
    if len(mean) == channels:
        return mean, std
    if len(mean) == 1:
        return mean * channels, std * channels
    return None  # RGB turned grey: the published values no longer apply; compute them


def check_finite(x: torch.Tensor, where: str, array: str) -> None:
    """Refuse NaN or inf inputs: one is enough to turn the loss into NaN a few steps in. Run
    when a source is decoded, before caching, so a cached entry has passed it once."""
    if not x.is_floating_point():
        return
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise DataError(
            f"{where}: array {array} holds {bad:,} non-finite values (NaN or inf) out of {x.numel():,}; "
            f"training on them makes the loss NaN. Drop or repair those samples (e.g. keep "
            f"x[np.isfinite(x).all(axis=1)] with its labels, or np.nan_to_num) and save the file again."
        )


# Classes without a training sample that 0..K-1 may hold beyond as many as have one: a few
# hundred unused outputs cost nothing, and small samples of many-class sets leave such gaps.
SPARE_CLASSES = 100


def classes_from_labels(splits: dict[str, tuple[Any, torch.Tensor]], given: list[str] | None,
                        where: str) -> list[str]:
    """The class names of a source whose labels are numbers (arrays, frames), checked before
    anything is sized by them.

    With `given` names (a `classes` array, classes.txt), every label must index them. Without,
    the classes are 0..K-1 with K the largest train label + 1, and at most as many of them as
    occur in the train split, plus SPARE_CLASSES, may have no training sample: a stray label
    (train labels 0..7 and 200; 10**12) would build a head of K outputs for classes that have
    none, while a small sample of a 100-class set (26 of its classes) still passes. Val and
    test labels must then be classes the train split has.
    """
    if given is not None:
        for split, (_, y) in splits.items():
            check_labels(y, len(given), f"{where} ({split} labels)")
        return given
    train = torch.unique(splits["train"][1]) if "train" in splits else torch.empty(0, dtype=torch.int64)
    fix = ("Labels are class indices 0..K-1; relabel them (classes, y = np.unique(y, return_inverse=True)), "
           "or list the classes (a `classes` array in the file, or classes.txt beside it) so that K is known.")
    k = int(train[-1]) + 1 if len(train) else 0
    if len(train) and int(train[0]) < 0:
        check_labels(train, k, f"{where} (train labels)")
    if k - len(train) > len(train) + SPARE_CLASSES:
        stray = [int(v) for v in train if int(v) >= 2 * len(train) + SPARE_CLASSES]
        raise DataError(
            f"{where} (train labels): {len(train)} distinct labels range up to {k - 1}, so the model would get "
            f"{k:,} outputs, {k - len(train):,} of them for classes with no training sample; labels {_few(stray)} "
            f"are far outside 0..{len(train) - 1}. {fix}"
        )
    known = set(train.tolist())
    for split, (_, y) in splits.items():
        unseen = [int(v) for v in torch.unique(y) if int(v) not in known]
        if split != "train" and unseen:
            raise DataError(
                f"{where} ({split} labels): labels {_few(unseen)} never occur in the train split "
                f"(its labels: {_few(sorted(known))}); a model cannot learn a class it never sees. {fix}"
            )
    return [str(i) for i in range(k)]


def _few(values: list[int], n: int = 8) -> str:
    return ", ".join(map(str, values[:n])) + (f", ... ({len(values)} in all)" if len(values) > n else "")


def check_classes(train_y: torch.Tensor, classes: list[str], where: str) -> None:
    """A classifier needs at least two classes in its training split; with one, every
    prediction is right and the run learns nothing."""
    present = torch.unique(train_y).tolist() if len(train_y) else []
    if len(present) < 2:
        only = f"only class {classes[present[0]]!r}" if present and present[0] < len(classes) else "no labels"
        raise DataError(
            f"{where}: the train split holds {only}; a classifier needs at least 2 classes. Check the "
            f"path (an image folder needs one sub-folder per class) or the labels array."
        )


def cached_source(
    cfg: "DataConfig",
    name: str,
    options: dict[str, Any],
    inputs: Sequence[Path],
    decode: Callable[[], Decoded],
) -> SourceData:
    """Load the decoded dataset from the cache, or decode, conform and cache it."""
    key = {
        "source": name,
        "version": SOURCES_VERSION,
        "options": options,
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "skip_corrupt": cfg.skip_corrupt,
        "files": cache.fingerprint(inputs),
    }

    def build() -> tuple[cache.Tensors, cache.Meta]:
        d = decode()
        if "train" not in d.splits:
            raise DataError(f"data.dataset={name}: the source produced no train split.")
        tensors: dict[str, torch.Tensor] = dict(d.tensors)
        num_classes = len(d.classes)
        for split, (x, y) in d.splits.items():
            if x.dtype == torch.uint8 and x.dim() == 4:
                x = conform(x, channels=cfg.channels, size=cfg.image_size)
            y = y.to(torch.int64)
            if len(x) != len(y):
                raise DataError(f"data.dataset={name}: the {split} split has {len(x)} inputs but {len(y)} labels.")
            check_labels(y, num_classes, f"data.dataset={name} ({split} labels)")
            check_finite(x, f"data.dataset={name}: {inputs[0] if inputs else name}", f"{split}_x")
            tensors[f"{split}_x"], tensors[f"{split}_y"] = x.contiguous(), y.contiguous()
        train_x = tensors["train_x"]
        is_image = train_x.dtype == torch.uint8 and train_x.dim() == 4
        stats = _adapt_stats(d.stats, train_x.shape[1]) if is_image else None
        mean, std = stats if stats is not None else feature_stats(train_x)
        meta = {"classes": list(d.classes), "mean": list(mean), "std": list(std), **d.meta}
        return tensors, meta

    tensors, meta, status = cache.load_or_build(cache.cache_root(cfg.cache_dir), name, key, build)
    splits = {s: Split(tensors[f"{s}_x"], tensors[f"{s}_y"]) for s in SPLITS if f"{s}_x" in tensors}
    check_classes(splits["train"].y, list(meta["classes"]), f"data.dataset={name}"
                  + (f" ({inputs[0]})" if inputs else ""))
    extra = {k: v for k, v in meta.items() if k not in ("classes", "mean", "std")}
    extra["cache"] = status
    extra["tensors"] = {k: v for k, v in tensors.items() if not k.endswith(("_x", "_y"))}
    return SourceData(
        train=splits["train"],
        test=splits.get("test"),
        val=splits.get("val"),
        classes=list(meta["classes"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        extra=extra,
    )
