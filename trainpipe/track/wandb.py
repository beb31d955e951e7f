"""Weights & Biases (imported only when chosen); the run id is kept so resume continues the same W&B run."""

from __future__ import annotations

import os
import random
import secrets
import string
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from trainpipe import files
from trainpipe.loop.callbacks import Callback
from trainpipe.loop.stop import Status, stop_status
from trainpipe.run import rundir
from trainpipe.registry import TRACKERS
from trainpipe.track import require_library

if TYPE_CHECKING:
    from trainpipe.config import RunConfig
    from trainpipe.loop.trainer import Trainer


class WandbTracker(Callback):
    """A W&B run: the config, every epoch's metrics (step metric `epoch`), the final test metrics.

    The run id is kept in RUN_DIR/wandb_id.txt, so `trainpipe resume` continues the same
    W&B run (resume="allow"). W&B's files go under WANDB_DIR when it is set, else the run directory.
    """

    def __init__(self, run_dir: str | Path, cfg: "RunConfig", *, project: str, entity: str | None, mode: str,
                 tags: Sequence[str]) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.init_args = {"project": project, "entity": entity, "mode": mode, "tags": list(tags) or None}
        self.run: Any = None

    def run_id(self) -> str:
        f = self.run_dir / rundir.WANDB_ID
        if f.is_file() and f.read_text().strip():
            return f.read_text().strip()
        # W&B's own id format (8 of [a-z0-9]); its generator moved between releases, and
        # `secrets` leaves the training's random streams untouched.
        rid = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        files.write_text(f, rid + "\n")
        return rid

    def on_fit_start(self, trainer: "Trainer") -> None:
        import wandb

        # wandb draws ids and ports from the global RNGs; keep them out of the training's randomness.
        import numpy as np
        import torch

        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            self.run = wandb.init(
                **self.init_args, name=self.run_dir.name, id=self.run_id(), resume="allow", config=self.cfg.to_dict(),
                dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir), reinit="finish_previous",
            )
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def on_epoch_end(self, trainer: "Trainer") -> None:
        self.run.log({k: v for k, v in trainer.state.metrics.items() if isinstance(v, (int, float))})

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.run is None:
            return
        state = trainer.state
        self.run.summary.update({k: v for k, v in state.final.items() if isinstance(v, (int, float, str))})
        self.run.summary["stop_reason"] = None if state.stop_reason is None else str(state.stop_reason)
        failed = stop_status(state.stop_reason) in (Status.FAILED, Status.INTERRUPTED)
        self.run.finish(exit_code=1 if failed else 0)
        self.run = None


@TRACKERS.register("wandb")
def wandb_tracker(run_dir: str | Path, cfg: "RunConfig", /, *, project: str = "trainpipe", entity: str | None = None,
                  mode: Literal["online", "offline", "disabled"] = "online", tags: tuple[str, ...] = ()) -> Callback:
    """Weights & Biases: config and metrics; the run id kept for resume (options: tracking.wandb)."""
    if mode == "disabled":
        return Callback()  # W&B turned off in its own section: nothing to import or log
    require_library("wandb", "wandb")
    return WandbTracker(run_dir, cfg, project=project, entity=entity, mode=mode, tags=tags)
