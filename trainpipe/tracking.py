"""Where metrics go: metrics.jsonl (always), curves.png, TensorBoard and W&B.

Trackers are callbacks registered in `TRACKERS` and built by the runner as
`TRACKERS.build(name, run_dir, cfg)`; optional back ends (TensorBoard, W&B) are
imported only when a config enables them. All of them use the same metric keys
(`train/loss`, `val/acc`, `lr`, ...) with the epoch as the step, and close in
`on_fit_end`, which runs in a `finally`.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import string
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainpipe.callbacks import Callback
from trainpipe.errors import ConfigError
from trainpipe.registry import TRACKERS

if TYPE_CHECKING:
    from trainpipe.config import RunConfig
    from trainpipe.engine import Trainer


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable instead of invalid
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line cut short by a crash is skipped."""
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class JsonlTracker(Callback):
    """Appends one JSON object per epoch to metrics.jsonl.

    The file always describes the run as it stands: on resume, and after a rollback
    re-runs epochs, the lines of epochs that were undone are dropped.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._last_epoch = 0

    def _keep_up_to(self, epoch: int) -> None:
        keep = [r for r in read_metrics(self.path) if r.get("epoch", 0) <= epoch]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.path.exists():
            self._keep_up_to(trainer.state.epoch)
        self._last_epoch = trainer.state.epoch

    def on_epoch_end(self, trainer: "Trainer") -> None:
        row = {k: _json_safe(v) for k, v in trainer.state.metrics.items()}
        epoch = int(row.get("epoch", 0))
        if epoch <= self._last_epoch:  # a rollback re-runs epochs
            self._keep_up_to(epoch - 1)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._last_epoch = epoch


@TRACKERS.register("jsonl")
def jsonl(run_dir: str | Path, /) -> Callback:
    """metrics.jsonl in the run directory, one line per epoch (always on)."""
    return JsonlTracker(run_dir)


# ------------------------------------------------------------------------ plots
def draw_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """train/val loss, train/val accuracy and the lr per epoch, side by side, as a PNG."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # A bare Figure renders with Agg and never touches pyplot's global state or a GUI backend.
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    epochs = [h["epoch"] for h in history]
    panels = (("loss", ("train/loss", "val/loss"), "log"), ("accuracy", ("train/acc", "val/acc"), "linear"),
              ("learning rate", ("lr",), "linear"))
    for ax, (name, keys, scale) in zip(axes, panels):
        for key in keys:
            pts = [(e, float(h[key])) for e, h in zip(epochs, history)
                   if isinstance(h.get(key), (int, float)) and math.isfinite(float(h[key]))]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, markersize=3, label=key)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ys = [v for line in ax.get_lines() for v in line.get_ydata()]
        if scale == "log" and ys and min(ys) > 0 and max(ys) / min(ys) > 20:  # a log axis only pays off over decades
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(keys) > 1 and ax.get_lines():
            ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


class PlotsTracker(Callback):
    """Draws curves.png from the run's history when training ends."""

    def __init__(self, run_dir: str | Path, title: str) -> None:
        self.path = Path(run_dir) / "curves.png"
        self.title = title

    def on_fit_end(self, trainer: "Trainer") -> None:
        if not trainer.state.history:
            return
        try:
            draw_curves(trainer.state.history, self.path, self.title)
        except Exception as e:  # noqa: BLE001 - a plot must never hide the run's own outcome
            print(f"warning: could not draw {self.path}: {type(e).__name__}: {e}", file=sys.stderr)


@TRACKERS.register("plots")
def plots(run_dir: str | Path, cfg: "RunConfig", /) -> Callback:
    """curves.png in the run directory: loss, accuracy and lr per epoch (tracking.plots)."""
    return PlotsTracker(run_dir, cfg.name)


# ------------------------------------------------------------------ TensorBoard
def flat_hparams(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted.key: scalar}; lists and None become strings (TensorBoard's hparams
    take only bool, int, float and str)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


class TensorBoardTracker(Callback):
    """Scalars (same keys as metrics.jsonl, step = epoch) and the config as hparams, in RUN_DIR/tb."""

    def __init__(self, run_dir: str | Path, cfg: "RunConfig") -> None:
        self.log_dir = Path(run_dir) / "tb"
        self.cfg = cfg
        self.writer: Any = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        epoch = trainer.state.epoch
        # purge_step: on resume, TensorBoard hides what the crashed process logged after the checkpoint.
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=epoch + 1 if epoch > 0 else None)
        if epoch == 0:
            metrics = {self.cfg.train.monitor: 0.0, "test/acc": 0.0, "test/loss": 0.0}
            for summary in hparams(flat_hparams(self.cfg.to_dict()), metrics):
                self.writer.file_writer.add_summary(summary)

    def on_epoch_end(self, trainer: "Trainer") -> None:
        m = trainer.state.metrics
        step = int(m["epoch"])
        for k, v in m.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, float(v), global_step=step)
        self.writer.flush()

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.writer is None:
            return
        for k, v in trainer.state.final.items():
            if k.startswith("test/") and isinstance(v, (int, float)):
                self.writer.add_scalar(k, float(v), global_step=trainer.state.epoch)
        self.writer.close()
        self.writer = None


@TRACKERS.register("tensorboard")
def tensorboard(run_dir: str | Path, cfg: "RunConfig", /) -> Callback:
    """TensorBoard event files in RUN_DIR/tb: scalars per epoch plus the config as hparams."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("tracking.tensorboard: true needs the tensorboard package; "
                          "install it with `pip install tensorboard` or set tracking.tensorboard=false.") from None
    return TensorBoardTracker(run_dir, cfg)


# ------------------------------------------------------------------------- W&B
WANDB_ID_FILE = "wandb_id.txt"


class WandbTracker(Callback):
    """A W&B run: the config, every epoch's metrics (step metric `epoch`), the final test metrics.

    The run id is kept in RUN_DIR/wandb_id.txt, so `trainpipe resume` continues the same
    W&B run (resume="allow"). W&B's files go under WANDB_DIR when it is set, else the run directory.
    """

    def __init__(self, run_dir: str | Path, cfg: "RunConfig") -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.run: Any = None

    def run_id(self) -> str:
        f = self.run_dir / WANDB_ID_FILE
        if f.is_file() and f.read_text().strip():
            return f.read_text().strip()
        # W&B's own id format (8 of [a-z0-9]); its generator moved between releases, and
        # `secrets` leaves the training's random streams untouched.
        rid = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        f.write_text(rid + "\n")
        return rid

    def on_fit_start(self, trainer: "Trainer") -> None:
        import wandb

        w = self.cfg.tracking.wandb
        assert w is not None
        # wandb draws ids and ports from the global RNGs; keep them out of the training's randomness.
        import numpy as np
        import torch

        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            self.run = wandb.init(
                project=w.project, entity=w.entity, mode=w.mode, tags=list(w.tags) or None,
                name=self.run_dir.name, id=self.run_id(), resume="allow", config=self.cfg.to_dict(),
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
        st = trainer.state
        self.run.summary.update({k: v for k, v in st.final.items() if isinstance(v, (int, float, str))})
        self.run.summary["stop_reason"] = st.stop_reason
        failed = st.stop_reason in (None, "non_finite_loss")
        self.run.finish(exit_code=1 if failed else 0)
        self.run = None


@TRACKERS.register("wandb")
def wandb_tracker(run_dir: str | Path, cfg: "RunConfig", /) -> Callback:
    """Weights & Biases: config and metrics; the run id kept for resume (tracking.wandb)."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError("tracking.wandb is set but the wandb package is not installed; "
                          "install it with `pip install wandb` or remove tracking.wandb.") from None
    return WandbTracker(run_dir, cfg)
