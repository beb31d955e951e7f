"""Hand-in exports of a sweep report: `table.tex` (booktabs) and the figures as SVG and PDF.

They are written next to report.md, named so that a LaTeX document in that folder can
`\\input{table.tex}` and `\\includegraphics{metric_vs_params.pdf}` them directly. The table
is the report's table of configurations: configuration, mean ± std, n and the 95% interval
of the mean, the best in bold. (LaTeX text is escaped by hand: no well-kept library does
just that, and the set of special characters is fixed.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainpipe.report import plots
from trainpipe.report.html import Doc

TABLE = "table.tex"
_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex(text: Any) -> str:
    """`text` with LaTeX's special characters escaped."""
    return "".join(_SPECIAL.get(c, c) for c in str(text))


def _number(metric: str) -> tuple[Callable[[float], str], str]:
    """How the table writes the metric's values, and the unit in its header (accuracies in percent)."""
    if metric.endswith(("acc", "top5")):
        return (lambda v: f"{100 * v:.2f}"), r" (\%)"
    return (lambda v: f"{v:.4f}"), ""


def latex_table(groups: Sequence[Any], metric: str, label: str, name: str) -> str:
    """A booktabs tabular of the ranked configurations (`sweep.ranking.Configuration`s)."""
    num, unit = _number(metric)
    lines = [f"% Sweep {tex(name)}: configurations ranked by mean {tex(label)}; needs \\usepackage{{booktabs}}.",
             r"\begin{tabular}{lrrl}", r"\toprule",
             f"Configuration & {tex(label)}{unit} mean $\\pm$ std & $n$ & 95\\% CI \\\\", r"\midrule"]
    for g in groups:
        if g.rank is None:
            continue
        e = g.estimate
        spread = f"{num(e.mean)} $\\pm$ {num(e.std)}" if e.std is not None else num(e.mean)
        ci = f"{num(e.low)} to {num(e.high)}" if e.low is not None else "--"
        cells = [tex(g.describe()), spread, str(e.n), ci]
        if g.rank == 1:
            cells = [f"\\textbf{{{c}}}" for c in cells]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_exports(doc: Doc, output: Path, groups: Sequence[Any], metric: str, label: str, name: str) -> list[str]:
    """table.tex and every figure of `doc` as SVG and PDF in `output`; the names written."""
    (output / TABLE).write_text(latex_table(groups, metric, label, name))
    written = [TABLE]
    for img in doc.images():
        written += plots.save_vector(img.png, output / Path(img.name).stem)
    return written
