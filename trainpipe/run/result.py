"""What `trainpipe.train()` and `trainpipe.resume()` return: the run's results as an object
that reads well in a notebook (a short repr, the history as a table, the curves inline)."""

from __future__ import annotations

import functools
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainpipe.config import RunConfig


@dataclass(repr=False)
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config: RunConfig | None = None
    model: Any = None  # the evaluated weights left in memory (the best ones with early_stopping.restore_best)

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")

    @property
    def history(self) -> Any:
        """One row per epoch (`metrics.jsonl`): a pandas DataFrame indexed by epoch when pandas
        is installed, else a `Table` (a list of dicts that prints as a table)."""
        return as_table(self.metrics, index="epoch")

    def plot(self) -> Any:
        """Loss, accuracy and lr per epoch (curves.png's figure): a matplotlib Figure, shown
        inline when it is a notebook cell's last value."""
        from trainpipe.track.plots import curves_figure

        name = self.config.name if self.config is not None else self.run_dir.name
        return curves_figure(self.metrics, f"{name} ({self.status})", figure_class=inline_figure_class())

    def __repr__(self) -> str:
        s = self.summary
        monitor = self.config.train.monitor if self.config is not None else next(
            (k[5:] for k in s if k.startswith("best/")), "val/acc")
        parts = [f"status={self.status!r}"]
        best = s.get(f"best/{monitor}")
        if isinstance(best, (int, float)):
            parts.append(f"best {monitor}={best:.4f} (epoch {s.get('best_epoch')})")
        if isinstance(s.get("test/acc"), (int, float)):
            parts.append(f"test/acc={s['test/acc']:.4f}")
        parts.append(f"run_dir={str(self.run_dir)!r}")
        return f"RunResult({', '.join(parts)})"


class Table(list):
    """Rows (dicts) shown as a table: the light stand-in for a DataFrame without pandas."""

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(k for row in self for k in row))

    def __repr__(self) -> str:
        cols = self.columns
        cells = [cols] + [[_cell(row.get(c)) for c in cols] for row in self]
        widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
        return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells)

    def _repr_html_(self) -> str:
        cols = self.columns
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in cols) + "</tr>"
                       for row in self)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def as_table(rows: Sequence[dict[str, Any]], index: str | None = None) -> Any:
    """`rows` as a pandas DataFrame (indexed by `index` when every row has it) when pandas is
    installed, else as a `Table`. pandas stays optional: most users have it, trainpipe does
    not need it."""
    try:
        import pandas as pd
    except ImportError:
        return Table(dict(r) for r in rows)
    df = pd.DataFrame([dict(r) for r in rows])
    if index is not None and index in df.columns and df[index].notna().all():
        df = df.set_index(index)
    return df


@functools.cache
def inline_figure_class() -> type:
    """A matplotlib Figure that IPython shows as a PNG whatever the backend (no pyplot needed)."""
    from matplotlib.figure import Figure

    class InlineFigure(Figure):
        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png", dpi=90)
            return buf.getvalue()

    return InlineFigure
