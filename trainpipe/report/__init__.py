"""`trainpipe report`: report.md and a self-contained report.html for runs and sweeps.

    report([run_dir])              one run: summary, config changes, curves, per-class test results
    report([run_a, run_b, ...])    runs side by side: what differs, what each reached, curves overlaid
    report([sweep_dir])            a sweep: results table, curves, metric vs parameters, importance

`trainpipe.report(DIR, ...)` (this package, called) is `report`; a single directory
may be given without a list. What it returns is the path of report.md, which a
notebook shows as the report itself (report.html inline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trainpipe import callable_package
from trainpipe.errors import ConfigError
from trainpipe.report.load import is_run_dir, load_run, unique_labels
from trainpipe.report.sweep import is_sweep_dir

__all__ = ["ReportPath", "report"]

DEFAULT_COMPARE_OUTPUT = Path("report")


class ReportPath(type(Path())):  # type: ignore[misc]  # the concrete Path class of this system
    """The path of report.md; in a notebook, the report itself: report.html shown inline, its
    styles scoped to the report so that the notebook keeps its own."""

    def _repr_html_(self) -> str:
        from trainpipe.report.html import body_of

        return body_of(self.with_name("report.html").read_text(encoding="utf-8"))


def report(
    paths: Sequence[str | Path] | str | Path,
    output: str | Path | None = None,
    *,
    evaluate: bool = True,
    storage: str | None = None,
) -> Path:
    """Write report.md and report.html for run directories or one sweep directory.

    output:   the folder to write to; by default the run or sweep directory itself,
              or ./report for several runs.
    evaluate: re-evaluate a single run's best checkpoint on the test split for the
              per-class accuracy and confusion matrix (needs the run's data).
    storage:  the sweep's Optuna storage URL when it is not the sweep's optuna.db.
    Returns the path of report.md (report.html is next to it).
    """
    dirs = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not dirs:
        raise ConfigError("report: give at least one run directory or a sweep directory.")
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"report: {d} is not a directory. Pass run directories (runs/<name>-<time>/) or a "
                              f"sweep directory (sweeps/<name>/).")
    sweeps = [d for d in dirs if is_sweep_dir(d)]
    if sweeps:
        if len(dirs) > 1:
            raise ConfigError(f"report: {sweeps[0]} is a sweep directory; report one sweep at a time "
                              f"(`trainpipe report {sweeps[0]}`), or pass only run directories.")
        from trainpipe.report.sweep import sweep_report

        return ReportPath(sweep_report(dirs[0], Path(output) if output is not None else dirs[0], storage=storage))
    bad = [d for d in dirs if not is_run_dir(d)]
    if bad:
        raise ConfigError(f"report: {bad[0]} is neither a run directory (no summary.json) nor a sweep directory "
                          f"(no trials/ or results.csv). Pass the directory `trainpipe train` or "
                          f"`trainpipe sweep` wrote.")
    runs = [load_run(d) for d in dirs]
    unique_labels(runs)
    from trainpipe.report.run import compare_report, run_report

    if len(runs) == 1:
        return ReportPath(run_report(runs[0], Path(output) if output is not None else dirs[0], evaluate=evaluate))
    return ReportPath(compare_report(runs, Path(output) if output is not None else DEFAULT_COMPARE_OUTPUT))


callable_package(__name__, report)
