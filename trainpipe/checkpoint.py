"""Checkpoint files: atomic writes, corruption detection, RNG capture.

A checkpoint is written to a temporary file in the same directory, flushed and
fsync'ed, then renamed over the old one, so a crash at any moment leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainpipe.errors import ConfigError


def save_atomic(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with_suppressed_unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
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


def capture_rng() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses; keep it as a tensor.
        "numpy": _numpy_state_out(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_python_rng(state["python"]))
    np.random.set_state(_numpy_state_in(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
