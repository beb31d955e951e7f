"""Frame classification with context windows (speech frames and the like).

The data are utterances: a (T_i, D) feature matrix each (e.g. 40 mel or MFCC
coefficients per 10 ms frame) with one label per frame. A sample is one frame
together with its `context` neighbours on each side, flattened to (2k+1)*D values:
the setup deep MLPs are trained on for phoneme-state classification.

Windows are never materialised (that would multiply the data by 2k+1): the frames of
all utterances are stored once, end to end, with k zero frames between utterances,
and `FrameSplit.gather` builds the windows of a batch with one indexing operation.
The zero gaps make a window at an utterance edge see zeros, never a neighbouring
utterance's frames.

File layouts under `data.path` (an .npz file or a folder of .npy files):

* flat (recommended, no pickled objects): `train_x` (F, D) float frames of all
  utterances end to end, `train_y` (F,) int labels, `train_lengths` (U,) frames per
  utterance (summing to F); the same for `val_*` and `test_*` (optional).
* per utterance (the common course-homework files): `train.npy` holding an object
  array of U (T_i, D) arrays and `train_labels.npy` holding U (T_i,) arrays, likewise
  `dev.npy`/`dev_labels.npy` (validation) and `test.npy`/`test_labels.npy`; or the keys
  `train_x`, `train_y`, ... holding such object arrays. Object arrays are pickles, so
  they load only with `data.allow_pickle: true`; use it for files you trust.

A test split without labels (a competition's test file) is ignored.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from trainpipe.config.types import NonNegativeInt
from trainpipe.data.base import SourceData, Split
from trainpipe.data.sources.folders import check_numpy_file, labels_of, read_class_names
from trainpipe.data.prepare import Decoded, cached_source, classes_from_labels
from trainpipe.errors import DataError
from trainpipe.registry import DATASETS

if TYPE_CHECKING:
    from trainpipe.config import DataConfig

# Per-utterance file names of the course-homework layout -> our keys.
_ALIASES = {"train": "train_x", "train_labels": "train_y", "dev": "val_x", "dev_labels": "val_y",
            "val": "val_x", "val_labels": "val_y", "test": "test_x", "test_labels": "test_y"}


@dataclass
class FrameSplit(Split):
    """Frames end to end with `context` zero frames between utterances; a sample is a window.

    `x` is the padded (rows, D) frame matrix shared by every subset; `centers` gives
    each sample's row in it and `utterance` its utterance id (its group).
    """

    centers: torch.Tensor
    utterance: torch.Tensor
    context: int

    @classmethod
    def from_frames(cls, frames: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, context: int) -> "FrameSplit":
        n_utt = len(lengths)
        utt = torch.repeat_interleave(torch.arange(n_utt), lengths)
        centers = torch.arange(len(frames)) + (utt + 1) * context
        padded = frames.new_zeros((len(frames) + (n_utt + 1) * context, frames.shape[1]))
        padded[centers] = frames
        return cls(padded, labels, centers, utt, context)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(-self.context, self.context + 1, device=self.x.device)
        rows = self.centers[idx].unsqueeze(1) + offsets
        return torch.index_select(self.x, 0, rows.reshape(-1)).reshape(len(rows), -1)

    def subset(self, idx: torch.Tensor) -> "FrameSplit":
        return FrameSplit(self.x, self.y[idx], self.centers[idx], self.utterance[idx], self.context)

    def to(self, device: torch.device | str) -> "FrameSplit":
        return FrameSplit(self.x.to(device), self.y.to(device), self.centers.to(device),
                          self.utterance.to(device), self.context)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return ((2 * self.context + 1) * self.x.shape[1],)

    @property
    def is_image(self) -> bool:
        return False

    @property
    def groups(self) -> torch.Tensor:
        return self.utterance

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x, self.y, self.centers, self.utterance))


def _read(p: Path, allow_pickle: bool) -> dict[str, np.ndarray]:
    for f in sorted(p.glob("*.npy")) if p.is_dir() else [p]:
        check_numpy_file(f, "data.path")
    try:
        if p.is_dir():
            found = {f.stem: np.load(f, allow_pickle=allow_pickle) for f in sorted(p.glob("*.npy"))}
        else:
            with np.load(p, allow_pickle=allow_pickle) as npz:
                found = {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(
                f"data.path: {p} holds per-utterance object arrays, which numpy stores as pickles; set "
                "data.allow_pickle=true if you trust the file, or convert it to the flat layout "
                "(train_x (F, D), train_y (F,), train_lengths (U,))."
            ) from None
        raise DataError(f"data.path: {p} is not a valid .npy/.npz file ({e}).") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"data.path: {p} is truncated or not an .npz/.npy file ({type(e).__name__}: {e}).") from None
    return {_ALIASES.get(k, k): v for k, v in found.items()}


def _split_frames(found: dict[str, np.ndarray], s: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = found[f"{s}_x"], found[f"{s}_y"]
    if x.dtype == object:
        utts = [np.asarray(u) for u in x]
        labs = [np.asarray(u) for u in y]
        if len(utts) != len(labs):
            raise DataError(f"{where}: {s} has {len(utts)} utterances but {len(labs)} label arrays.")
        for i, (u, l) in enumerate(zip(utts, labs)):
            if u.ndim != 2 or len(l) != len(u):
                raise DataError(f"{where}: {s} utterance {i} has features of shape {u.shape} but "
                                f"{len(l)} labels; expected (T, D) features and T labels.")
        lengths = np.array([len(u) for u in utts], dtype=np.int64)
        if not utts:
            raise DataError(f"{where}: {s} holds no utterances.")
        return np.concatenate(utts).astype(np.float32), np.concatenate(labs), lengths
    if f"{s}_lengths" not in found:
        raise DataError(f"{where}: {s}_x is one (frames, D) matrix but {s}_lengths (frames per utterance) is "
                        "missing; add it, or store per-utterance object arrays instead.")
    lengths = np.asarray(found[f"{s}_lengths"]).astype(np.int64).reshape(-1)
    if x.ndim != 2 or len(y) != len(x) or lengths.sum() != len(x) or (lengths < 0).any():
        raise DataError(f"{where}: {s}_x {x.shape}, {s}_y ({len(y)},) and {s}_lengths summing to "
                        f"{lengths.sum()} do not agree; expected (F, D), (F,) and lengths summing to F.")
    return x.astype(np.float32), y, lengths


def _standardise(frames: np.ndarray, lengths: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Global stats when given, else each utterance by its own mean/std (CMVN)."""
    if stats is not None:
        return (frames - stats[0]) / stats[1]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    keep = lengths > 0
    sums = np.add.reduceat(frames.astype(np.float64), starts[keep], axis=0)
    sq = np.add.reduceat(frames.astype(np.float64) ** 2, starts[keep], axis=0)
    mean = sums / lengths[keep, None]
    std = np.sqrt(np.maximum(sq / lengths[keep, None] - mean**2, 0.0)).clip(min=1e-6)
    rep = np.repeat(np.arange(int(keep.sum())), lengths[keep])
    return ((frames - mean[rep]) / std[rep]).astype(np.float32)


@DATASETS.register("frames")
def frames(
    cfg: "DataConfig",
    /,
    *,
    path: str | None = None,
    context: NonNegativeInt = 5,
    normalize: Literal["global", "utterance", "none"] = "global",
    allow_pickle: bool = False,
) -> SourceData:
    """Per-frame labels with +-context frames of features around each (speech frames)."""
    p = Path(path or cfg.root).expanduser()
    where = "data.path" if path else "data.root"
    if not p.exists():
        raise DataError(f"{where}: {p.resolve()} does not exist; point data.path at the frames .npz file or folder "
                        "(train_x, train_y, train_lengths, ...; see `trainpipe list dataset`).")

    def decode() -> Decoded:
        found = _read(p, allow_pickle)
        if "train_x" not in found or "train_y" not in found:
            raise DataError(f"{where}: {p} has no train_x/train_y (nor train.npy/train_labels.npy); found "
                            f"{', '.join(sorted(found)) or 'nothing'}.")
        parts = {s: _split_frames(found, s, f"{where} {p}") for s in ("train", "val", "test")
                 if f"{s}_x" in found and f"{s}_y" in found}
        stats = None
        if normalize == "global":
            f = parts["train"][0].astype(np.float64)
            stats = (f.mean(0), f.std(0).clip(min=1e-6))
        splits, tensors = {}, {}
        for s, (x, y, lengths) in parts.items():
            if normalize != "none":
                x = _standardise(x, lengths, stats).astype(np.float32)
            splits[s] = (torch.from_numpy(np.ascontiguousarray(x)), labels_of(y, f"{where} {p} ({s} labels)"))
            tensors[f"{s}_lengths"] = torch.from_numpy(lengths)
        given = ([str(c) for c in found["classes"].tolist()] if "classes" in found
                 else (read_class_names(p if p.is_dir() else p.parent) or None))
        return Decoded(splits, classes_from_labels(splits, given, f"{where} {p}"), None, tensors=tensors)

    inputs = [p] + ([] if p.is_dir() else [p.parent / "classes.txt"])
    src = cached_source(cfg, "frames", {"normalize": normalize, "allow_pickle": allow_pickle}, inputs, decode)
    lengths = src.extra.pop("tensors")

    def windows(s: Split | None, name: str) -> FrameSplit | None:
        return None if s is None else FrameSplit.from_frames(s.x, s.y, lengths[f"{name}_lengths"], context)

    return SourceData(train=windows(src.train, "train"), val=windows(src.val, "val"), test=windows(src.test, "test"),
                      classes=src.classes, normalized=True, extra=src.extra)
