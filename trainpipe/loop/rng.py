"""Every global random state a run draws from, captured into and restored from a checkpoint."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


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


def restore_rng(state: dict[str, Any]) -> list[str]:
    """Restore what `capture_rng` saved; returns what could not be restored, in words (empty
    when everything was). States are CPU byte tensors, as torch's setters require.

    A checkpoint from a machine with more GPUs than this process sees (saved on a 4-GPU
    node, resumed on one GPU) restores the GPUs present, and names the others.
    """
    random.setstate(_as_python_rng(state["python"]))
    np.random.set_state(_numpy_state_in(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    missing = []
    if "cuda" in state and torch.cuda.is_available():
        saved, present = list(state["cuda"]), torch.cuda.device_count()
        for index, gpu_state in enumerate(saved[:present]):
            torch.cuda.set_rng_state(gpu_state.cpu(), index)
        if len(saved) > present:
            gone = f"GPU {present}" if len(saved) == present + 1 else f"GPUs {present}-{len(saved) - 1}"
            missing.append(f"the checkpoint holds the CUDA random states of {len(saved)} GPUs and this process "
                           f"sees {present}: those of {gone} were not restored, so random draws on them start "
                           f"afresh")
    if "mps" in state and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"].cpu())
    return missing


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


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one DDP rank's random stream: `seed` on rank 0, an independent one derived
    from (seed, rank) on the others (not seed + rank, which another run's seed would repeat)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def global_rng_kept() -> Iterator[None]:
    """Give Python's, NumPy's and torch's global generators (CPU, CUDA, MPS) back as they were
    when the block ends, however it ends: a run seeds them, and the user's next draw in a
    notebook or a script (or the next trial of a sweep) must not depend on that."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)
