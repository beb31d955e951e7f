"""What a run prints: a start line, a progress bar per epoch, epoch lines, a final table.

The progress bar appears only on an interactive terminal or in a notebook, never when
the output is a file or the CI environment variable is set; epoch lines and the final
table are printed unless the run is quiet.

In a notebook (a Jupyter kernel: JupyterLab, Colab, Kaggle, VS Code) every line is
plain text on the cell's stdout, so the start line, each epoch's line and the final
table stay in the cell (and in the saved notebook); the live bar of the current epoch
is one display that is updated in place and emptied when the epoch ends.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainpipe.loop.callbacks import Callback

if TYPE_CHECKING:
    from trainpipe.config import RunConfig
    from trainpipe.loop.trainer import Trainer
    from trainpipe.run.train import RunResult


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def _memory_format(summary: dict[str, Any]) -> str:
    if "channels_last" not in summary:
        return ""
    return f", channels_last {str(summary['channels_last']).lower()} ({summary.get('channels_last_reason')})"


class ConsoleReport(Callback):
    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.quiet = quiet
        self.notebook = in_notebook()
        # Without a terminal (a log file, CI, a pipe) rich would wrap at 80 columns and cut each
        # epoch's line in two: there, every line is printed whole, one per epoch. In a notebook,
        # rich would send each print as an HTML display of its own: plain text on the cell's
        # stdout reads the same and is what a saved notebook keeps.
        self.console = Console(highlight=False, soft_wrap=self.notebook or not console_is_interactive(),
                               force_jupyter=False if self.notebook else None)

    def start(self, cfg: "RunConfig", run_dir: Path, summary: dict[str, Any]) -> None:
        if self.quiet:
            return
        params = summary.get("params")
        macs = summary.get("macs_per_image")
        self.console.print(
            f"[bold]{cfg.name}[/]: {cfg.data.dataset} ({summary.get('train_size')} train / "
            f"{summary.get('val_size')} val / {summary.get('test_size')} test, {summary.get('loader')} loader), "
            f"{cfg.model.name} ({params:,} params, {macs / 1e6:.2f} MMACs/image), {cfg.optim.name}, "
            f"{cfg.sched.name}, on {summary.get('device')}{_memory_format(summary)} -> {run_dir}"
            if params is not None and macs is not None
            else f"[bold]{cfg.name}[/] -> {run_dir}"
        )

    def progress(self, cfg: "RunConfig", data: Any) -> Any:
        mode = cfg.tracking.progress
        if self.quiet or mode == "none" or (mode == "auto" and not console_is_interactive()):
            return None
        if self.notebook:
            return NotebookProgress(cfg.train.epochs)
        return ProgressBar(cfg.train.epochs, lambda: data.train.batch_size)

    def on_epoch_end(self, trainer: "Trainer") -> None:
        if self.quiet:
            return
        m = trainer.state.metrics
        keys = [k for k in ("train/loss", "train/acc", "val/loss", "val/acc", "val/top5", "lr") if k in m]
        parts = "  ".join(f"{k} {m[k]:.4g}" for k in keys)
        if m.get("skipped_steps"):
            parts += f"  skipped steps {m['skipped_steps']}"
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


def console_is_interactive() -> bool:
    if os.environ.get("CI"):
        return False
    return in_notebook() or sys.stdout.isatty()


def in_notebook() -> bool:
    """Running in a Jupyter kernel (JupyterLab, Colab, Kaggle, VS Code), whose output goes to
    a notebook's cell rather than a terminal. IPython in a terminal is a terminal."""
    if "IPython" not in sys.modules:  # never imported: not in IPython (and importing it costs time)
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and (type(shell).__name__ == "ZMQInteractiveShell" or "google.colab" in sys.modules)


class ProgressBar:
    """A rich progress bar per epoch: batches, loss, accuracy, images/s, ETA.

    `update` reads the device-side sums, a host sync; the loop calls it every
    `train.log_every` steps only. The bar is drawn from `update`, at most `REFRESH_S`
    apart, rather than by rich's refresh thread: that thread takes the GIL from the
    training loop ten times a second (a fifth of a small MLP's epoch on two cores).
    """

    REFRESH_S = 0.1

    def __init__(self, epochs: int, batch_size_of: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.epochs = epochs
        self._bs = batch_size_of
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=True,
            auto_refresh=False,
        )
        self._task: Any = None
        self._t0 = 0.0
        self._drawn = 0.0

    def start_epoch(self, epoch: int, n_batches: int) -> None:
        self._t0 = self._drawn = time.perf_counter()
        self._progress.start()
        self._task = self._progress.add_task("train", total=n_batches, epoch=epoch + 1, epochs=self.epochs, stats="")
        self._progress.refresh()

    def update(self, done: int, loss_sum: Any, correct: Any, seen: int) -> None:
        now = time.perf_counter()
        rate = seen / max(now - self._t0, 1e-9)
        stats = f"loss {float(loss_sum) / seen:.4f}  acc {int(correct) / seen:.4f}  {rate:,.0f} img/s"
        draw = now - self._drawn >= self.REFRESH_S
        self._drawn = now if draw else self._drawn
        self._progress.update(self._task, completed=done, stats=stats, refresh=draw)

    def end_epoch(self) -> None:
        self._progress.remove_task(self._task)
        self._progress.stop()

    def close(self) -> None:
        """Stop the live display whatever happened (an interrupt mid-epoch): rich's live display
        replaces sys.stdout and sys.stderr while it runs, and gives them back only here."""
        self._progress.stop()


class NotebookProgress:
    """The current epoch's bar in a notebook: one display, updated in place, emptied at the
    epoch's end (the epoch's line printed below it stays).

    An IPython display handle rather than a widget (rich's live display, tqdm.notebook):
    every frontend updates a display handle in place, with or without ipywidgets, and
    nothing closes or clears the cell's other outputs, so nothing printed before is lost.
    """

    REFRESH_S = 0.2  # each update is a message to the frontend

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self._handle: Any = None
        self._t0 = 0.0
        self._drawn = 0.0
        self._total = 0

    def start_epoch(self, epoch: int, n_batches: int) -> None:
        from IPython.display import display

        self._t0 = self._drawn = time.perf_counter()
        self._epoch, self._total = epoch + 1, n_batches
        self._handle = display(self._bundle(0, ""), raw=True, display_id=True)

    def update(self, done: int, loss_sum: Any, correct: Any, seen: int) -> None:
        now = time.perf_counter()
        if now - self._drawn < self.REFRESH_S and done < self._total:
            return
        self._drawn = now
        elapsed = max(now - self._t0, 1e-9)
        eta = elapsed / done * (self._total - done) if done else 0.0
        stats = (f"loss {float(loss_sum) / seen:.4f}  acc {int(correct) / seen:.4f}  "
                 f"{seen / elapsed:,.0f} img/s  {eta:.0f}s left")
        self._handle.update(self._bundle(done, stats), raw=True)

    def end_epoch(self) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.update({"text/plain": ""}, raw=True)
            self._handle = None

    def _bundle(self, done: int, stats: str) -> dict[str, str]:
        import html

        head = f"epoch {self._epoch}/{self.epochs}  {done}/{self._total}"
        return {"text/plain": f"{head}  {stats}",
                "text/html": f'<div style="font-family:monospace"><progress value="{done}" max="{self._total}" '
                             f'style="width:300px;vertical-align:middle"></progress> {html.escape(head)}  '
                             f'{html.escape(stats)}</div>'}
