"""What a run prints: a start line, a progress bar per epoch, epoch lines, a final table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainpipe.callbacks import Callback

if TYPE_CHECKING:
    from trainpipe.config import RunConfig
    from trainpipe.engine import Trainer
    from trainpipe.runner import RunResult


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


class ConsoleReport(Callback):
    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.quiet = quiet
        self.console = Console(highlight=False)

    def start(self, cfg: "RunConfig", run_dir: Path, summary: dict[str, Any]) -> None:
        if self.quiet:
            return
        params = summary.get("params")
        macs = summary.get("macs_per_image")
        self.console.print(
            f"[bold]{cfg.name}[/]: {cfg.data.dataset} ({summary.get('train_size')} train / "
            f"{summary.get('val_size')} val / {summary.get('test_size')} test, {summary.get('loader')} loader), "
            f"{cfg.model.name} ({params:,} params, {macs / 1e6:.2f} MMACs/image), {cfg.optim.name}, "
            f"{cfg.sched.name}, on {summary.get('device')} -> {run_dir}"
            if params is not None and macs is not None
            else f"[bold]{cfg.name}[/] -> {run_dir}"
        )

    def progress(self, cfg: "RunConfig", data: Any) -> Any:
        from trainpipe.tracking import ProgressBar, console_is_interactive

        mode = cfg.tracking.progress
        if self.quiet or mode == "none" or (mode == "auto" and not console_is_interactive()):
            return None
        return ProgressBar(cfg.train.epochs, lambda: data.train.batch_size)

    def attach(self, trainer: "Trainer") -> None:
        trainer.callbacks.insert(0, self)

    def on_epoch_end(self, trainer: "Trainer") -> None:
        if self.quiet:
            return
        m = trainer.state.metrics
        keys = [k for k in ("train/loss", "train/acc", "val/loss", "val/acc", "lr") if k in m]
        parts = "  ".join(f"{k} {m[k]:.4g}" for k in keys)
        self.console.print(
            f"epoch {int(m['epoch'])}/{trainer.cfg.train.epochs}  {parts}  "
            f"{m['epoch_time_s']:.1f}s  {m['images_per_s']:,.0f} img/s"
        )

    def finish(self, result: "RunResult") -> None:
        if self.quiet:
            return
        from rich.table import Table

        s = result.summary
        monitor = result.config.train.monitor if result.config else "val/acc"
        table = Table(title=f"{result.config.name if result.config else ''}: {s.get('status')} "
                            f"({s.get('stop_reason')})")
        for col in ("best epoch", f"best {monitor}", "test acc", "test loss", "time"):
            table.add_column(col, justify="right")
        table.add_row(_fmt(s.get("best_epoch")), _fmt(s.get(f"best/{monitor}")), _fmt(s.get("test/acc")),
                      _fmt(s.get("test/loss")), f"{s.get('wall_time_s', 0):.1f}s")
        self.console.print(table)
        self.console.print(f"run directory: {result.run_dir}")


def console_report(quiet: bool) -> ConsoleReport:
    return ConsoleReport(quiet)
