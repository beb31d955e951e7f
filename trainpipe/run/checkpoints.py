"""Checkpoint files: atomic writes, a previous copy, corruption detection, RNG capture.

A checkpoint is written to a temporary file in the same directory, flushed and
fsync'ed, then renamed over the old one, so a crash at any moment leaves either
the old file or the new one, never half of one. `save_keeping_previous` also
keeps the replaced file as `previous.pt`, so that a file damaged later (a full
disk, a bad copy) still leaves one good state to resume from: `find_resumable`
tries last.pt, then previous.pt, then the epoch snapshots, newest first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._pytree import tree_map_only

from trainpipe import files
from trainpipe.errors import ConfigError
from trainpipe.loop.callbacks import Callback
from trainpipe.loop.rng import capture_rng

if TYPE_CHECKING:
    from trainpipe.loop.trainer import Trainer

LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"
# How every file torch.save writes begins: a zip archive, or (before torch 1.6) a pickle.
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
# What a checkpoint must hold to continue a run (best.pt holds weights only).
RESUME_KEYS = ("model", "optimizer", "schedule", "scaler", "state", "rng", "config")
RNG_KEYS = ("rng", "rng_ranks")


def save_atomic(obj: Any, path: str | Path) -> None:
    files.atomic_write(path, lambda f: torch.save(obj, f))


def save_keeping_previous(obj: Any, path: str | Path) -> None:
    """`save_atomic`, keeping the file it replaces as previous.pt beside it.

    The new state is complete on disk before either rename, so a crash leaves last.pt
    old or new (or, between the two renames, only previous.pt: resume falls back to it).
    """
    path = Path(path)
    files.atomic_write(path, lambda f: torch.save(obj, f), previous=path.with_name(PREVIOUS))


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by trainpipe; ConfigError naming the file if unreadable.

    `weights_only=True`: a checkpoint holds tensors and plain data, never code, so a
    file from elsewhere cannot run anything when it is loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist.")
    # The advice never includes deleting the file: it may be the user's, not one trainpipe wrote.
    other = ("pass a run directory or one of its checkpoints (RUN/checkpoints/best.pt, last.pt); `trainpipe "
             "resume` falls back to previous.pt and epoch snapshots by itself")
    with open(path, "rb") as f:
        head = f.read(4)
    what = None
    if not head.startswith(TORCH_MAGIC):
        what = "is empty" if not head else "is not a file that torch.save writes (neither a zip archive nor a pickle)"
    elif head.startswith(b"PK") and _zip_without_pickle(path):
        what = "is a zip archive without the data.pkl that torch.save writes (an .npz, say)"
    if what is not None:
        raise ConfigError(f"{str(path)!r} is not a checkpoint: it {what}. To evaluate or resume, {other}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, objects that weights_only refuses...
        raise ConfigError(
            f"checkpoint {str(path)!r} is corrupt or truncated and cannot be read "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}). Point to another "
            f"checkpoint: {other}."
        ) from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{str(path)!r} is not a trainpipe checkpoint: torch.save wrote it, but it holds a "
                          f"{type(obj).__name__}, not a checkpoint's dict. To evaluate or resume, {other}.")
    if torch.device(map_location) != torch.device("cpu"):
        # Everything but the RNG states (`rng`, and every DDP rank's `rng_ranks`) goes to
        # `map_location`: torch's RNG setters take CPU byte tensors only, also for a GPU's generator.
        obj = {k: v if k in RNG_KEYS else tree_map_only(torch.Tensor, lambda t: t.to(map_location), v)
               for k, v in obj.items()}
    return obj


def _zip_without_pickle(path: Path) -> bool:
    """A readable zip archive with no `*/data.pkl` entry: some other zip, not a torch checkpoint.
    (An archive cut short is unreadable here and is reported as truncated instead.)"""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return not any(n.endswith("data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_resumable(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """`load`, plus a check that the file holds a full training state (not weights only)."""
    obj = load(path, map_location=map_location)
    missing = [k for k in RESUME_KEYS if k not in obj]
    if missing:
        raise ConfigError(
            f"checkpoint {str(path)!r} holds no full training state (missing {', '.join(missing)}); "
            f"only checkpoints/last.pt, previous.pt and epoch-NNNN.pt can be resumed from."
        )
    return obj


def resume_candidates(directory: str | Path) -> list[Path]:
    """last.pt, previous.pt, then epoch snapshots newest first: the order resume tries them in."""
    d = Path(directory)
    snaps = sorted(d.glob("epoch-*.pt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0), reverse=True)
    return [p for p in (d / LAST, d / PREVIOUS, *snaps) if p.is_file()]


def find_resumable(
    directory: str | Path, *, warn: Callable[[str], None] | None = None, map_location: Any = "cpu"
) -> tuple[dict[str, Any], Path] | None:
    """The newest readable full checkpoint in `directory` and its path; None when there is none.

    Each unreadable file is reported through `warn` (naming it) before the next one is
    tried. When files exist but none can be read, ConfigError lists every problem.
    """
    problems = []
    for path in resume_candidates(directory):
        try:
            return load_resumable(path, map_location=map_location), path
        except ConfigError as e:
            problems.append(str(e))
            if warn is not None:
                warn(f"{e} Trying the previous checkpoint.")
    if problems:
        raise ConfigError(f"no usable checkpoint in {str(directory)!r}: " + " ".join(problems))
    return None


class Checkpoint(Callback):
    """checkpoints/last.pt (the full state, for resume; the one before it kept as previous.pt;
    also written where a stop request ends the loop, mid-epoch), best.pt (the evaluated weights of the best epoch by `train.monitor`), and with `keep`
    the K newest epoch-NNNN.pt snapshots. An epoch that left non-finite values is never saved.
    """

    def __init__(self, directory: str | Path, *, every: int = 1, keep: int = 0, save_best: bool = True,
                 config: dict[str, Any] | None = None) -> None:
        self.dir = Path(directory)
        self.every, self.keep, self.save_best = every, keep, save_best
        self.config = config or {}

    def full_state(self, trainer: "Trainer") -> dict[str, Any]:
        d = trainer.state_dict()
        d["rng"] = capture_rng()
        if trainer.rank_rngs is not None:  # under DDP: every rank's, in rank order
            d["rng_ranks"] = trainer.rank_rngs
        d["config"] = self.config
        return d

    def on_fit_start(self, trainer: "Trainer") -> None:
        for partial in self.dir.glob(".*.tmp"):  # left by a process killed while writing
            partial.unlink(missing_ok=True)
        if trainer.resumed:
            return
        # A fresh run: files left by an earlier run in this directory must not be
        # mistaken for fallbacks. The epoch-0 state makes a run killed during its first
        # epoch resumable, and gives a rollback somewhere to go.
        for stale in [self.dir / PREVIOUS, *self.dir.glob("epoch-*.pt")]:
            stale.unlink(missing_ok=True)
        save_atomic(self.full_state(trainer), self.dir / LAST)

    def on_epoch_end(self, trainer: "Trainer") -> None:
        state = trainer.state
        if state.nonfinite:
            return  # a non-finite state must never replace the last good checkpoint
        if self.save_best and state.best_epoch == state.epoch:
            save_atomic(
                {"model": trainer.eval_model.state_dict(), "epoch": state.epoch, "metrics": state.metrics,
                 "config": self.config},
                self.dir / BEST,
            )
        last_epoch = state.should_stop or state.epoch >= trainer.cfg.train.epochs
        if state.epoch % self.every == 0 or last_epoch:
            last = self.dir / LAST
            save_keeping_previous(self.full_state(trainer), last)
            if self.keep > 0:
                self._snapshot(last, self.dir / f"epoch-{state.epoch:04d}.pt")

    def on_fit_end(self, trainer: "Trainer") -> None:
        # A stop request (a signal) ends the loop at a step boundary, often mid-epoch: the state
        # there is saved as last.pt, so that resume continues from that very step.
        if trainer.stopped_by_request and not trainer.state.nonfinite:
            save_keeping_previous(self.full_state(trainer), self.dir / LAST)

    def _snapshot(self, last: Path, snap: Path) -> None:
        # Checkpoint files are only ever replaced by rename, never rewritten in place, so
        # a hard link is a safe copy that costs no second serialization.
        snap.unlink(missing_ok=True)
        try:
            os.link(last, snap)
        except OSError:  # a file system without hard links
            save_atomic(load(last), snap)
        snaps = sorted(self.dir.glob("epoch-*.pt"))
        for old in snaps[: -self.keep]:
            old.unlink(missing_ok=True)
