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
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainpipe.errors import ConfigError

LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"
# What a checkpoint must hold to continue a run (best.pt holds weights only).
RESUME_KEYS = ("model", "optimizer", "schedule", "scaler", "state", "rng", "config")


def save_atomic(obj: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = _write_temp(obj, path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_keeping_previous(obj: Any, path: str | Path) -> None:
    """`save_atomic`, keeping the file it replaces as previous.pt beside it.

    The new state is complete on disk before either rename, so a crash leaves last.pt
    old or new (or, between the two renames, only previous.pt: resume falls back to it).
    """
    path = Path(path)
    tmp = _write_temp(obj, path)
    if path.is_file():
        os.replace(path, path.with_name(PREVIOUS))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_temp(obj: Any, path: Path) -> str:
    """`obj` serialized, flushed and fsync'ed into a temporary file beside `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with_suppressed_unlink(tmp)
        raise
    return tmp


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def with_suppressed_unlink(p: str | Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def load(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by trainpipe; ConfigError naming the file if unreadable.

    `weights_only=True`: a checkpoint holds tensors and plain data, never code, so a
    file from elsewhere cannot run anything when it is loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist.")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, wrong magic number...
        raise ConfigError(
            f"checkpoint {str(path)!r} is corrupt or truncated and cannot be read "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}). "
            f"Delete it or point to another checkpoint."
        ) from None
    if not isinstance(obj, dict):
        raise ConfigError(f"checkpoint {str(path)!r} does not hold a trainpipe checkpoint (a dict).")
    return obj


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


def capture_rng() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses; keep it as a tensor.
        "numpy": _numpy_state_out(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_python_rng(state["python"]))
    np.random.set_state(_numpy_state_in(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def _numpy_state_out(s: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = s
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_state_in(d: dict[str, Any]) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])


def _as_python_rng(s: Any) -> tuple:
    # weights_only loading turns the state tuple's inner tuple into a list.
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
