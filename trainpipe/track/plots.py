"""curves.png: loss, accuracy and lr per epoch, redrawn after every epoch."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainpipe import files
from trainpipe.loop.callbacks import Callback
from trainpipe.run import rundir
from trainpipe.registry import TRACKERS

if TYPE_CHECKING:
    from trainpipe.config import RunConfig
    from trainpipe.loop.trainer import Trainer




def curve_points(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(epoch, value) of `key` over a run's history, leaving out the epochs that did not log it
    or logged a non-finite value (a diverged epoch would flatten the rest of the curve)."""
    return [(h["epoch"], float(h[key])) for h in history
            if isinstance(h.get(key), (int, float)) and math.isfinite(float(h[key]))]


def draw_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """train/val loss, train/val accuracy and the lr per epoch, side by side, as a PNG."""
    fig = curves_figure(history, title)
    path = Path(path)
    files.atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    return path


def curves_figure(history: list[dict[str, Any]], title: str = "", figure_class: Any = None) -> Any:
    """The figure of `draw_curves` (a matplotlib Figure, or an instance of `figure_class`)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # A bare Figure renders with Agg and never touches pyplot's global state or a GUI backend.
    fig = (figure_class or Figure)(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (("loss", ("train/loss", "val/loss"), "log"), ("accuracy", ("train/acc", "val/acc"), "linear"),
              ("learning rate", ("lr",), "linear"))
    for ax, (name, keys, scale) in zip(axes, panels):
        for key in keys:
            pts = curve_points(history, key)
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
    return fig


class PlotsTracker(Callback):
    """Draws curves.png from the run's history when training ends."""

    def __init__(self, run_dir: str | Path, title: str) -> None:
        self.path = Path(run_dir) / rundir.CURVES
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
