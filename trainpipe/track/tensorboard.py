"""TensorBoard event files under tb/ (torch.utils.tensorboard, imported only when chosen)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainpipe.loop.callbacks import Callback
from trainpipe.run import rundir
from trainpipe.registry import TRACKERS
from trainpipe.track import require_library

if TYPE_CHECKING:
    from trainpipe.config import RunConfig
    from trainpipe.loop.trainer import Trainer


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
        self.log_dir = Path(run_dir) / rundir.TENSORBOARD
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
    require_library("tensorboard", "tensorboard")
    return TensorBoardTracker(run_dir, cfg)
