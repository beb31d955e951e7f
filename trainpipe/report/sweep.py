"""The report of a sweep directory: results table, overlaid curves, metric against each
parameter, parallel coordinates, and parameter importance.

The trial run directories (trials/NNNN/) and results.csv are the source: they are
plain files, so a sweep copied from a cluster can be reported anywhere. The Optuna
study is opened only for parameter importance, which needs its trial records; when
the storage cannot be reached the report says so and goes on.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainpipe.errors import ConfigError
from trainpipe.report import plots
from trainpipe.report.html import Doc
from trainpipe.report.load import (
    Run,
    as_float,
    differing_keys,
    flatten,
    fmt_metric,
    fmt_value,
    is_run_dir,
    load_run,
)

# Keys that differ between trials without being searched: where each trial ran.
NOT_PARAMS = ("name", "seed", "train.monitor", "train.monitor_mode", "train.device")


def is_sweep_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "trials").is_dir() or (path / "results.csv").is_file()) and not is_run_dir(path)


@dataclass
class Trial:
    name: str  # NNNN
    state: str
    params: dict[str, Any]
    value: float | None  # best value of the sweep metric
    run: Run | None = None
    csv: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        if self.run is not None and key in self.run.summary:
            return self.run.summary[key]
        return None


@dataclass
class Sweep:
    path: Path
    metric: str
    goal: str
    params: list[str]
    trials: list[Trial]
    method: str = ""
    name: str = ""


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _cell(v: str | None) -> Any:
    """A results.csv cell as a value (numbers, lists and booleans were written as YAML/JSON text)."""
    if v is None or v == "":
        return None
    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


def load_sweep(path: Path) -> Sweep:
    """Trials from trials/NNNN/ and results.csv, with the sweep metric, goal and varied keys."""
    cols, csv_rows = read_csv(path / "results.csv")
    spec: dict[str, Any] = {}
    if (path / "sweep.yaml").is_file():
        spec = yaml.safe_load((path / "sweep.yaml").read_text()) or {}
    runs: dict[str, Run] = {}
    trial_root = path / "trials"
    if trial_root.is_dir():
        for d in sorted(trial_root.iterdir()):
            if is_run_dir(d):
                runs[d.name] = load_run(d)
    by_name = {_trial_name(r): r for r in csv_rows if _trial_name(r) is not None}
    for name, row in by_name.items():  # trials kept elsewhere (another machine's path)
        rd = Path(row.get("run_dir") or "")
        if name not in runs and row.get("run_dir") and is_run_dir(rd):
            runs[name] = load_run(rd)
    if not runs and not by_name:
        raise ConfigError(f"report: {path} looks like a sweep directory but holds no trials yet "
                          f"(no trials/NNNN/ run directories and no rows in results.csv).")

    metric_col = next((c for c in cols if c.startswith("best ")), None)
    metric = (metric_col[5:] if metric_col else None) or _spec_metric(spec) or _common(runs, "train", "monitor") or "val/acc"
    goal = _spec_goal(spec) or ("minimize" if _common(runs, "train", "monitor_mode") == "min" else "maximize")
    if metric_col and "state" in cols:
        params = cols[cols.index("state") + 1: cols.index(metric_col)]
    else:
        params = [k for k in differing_keys([r.config for r in runs.values()]) if k not in NOT_PARAMS]

    trials = []
    for name in sorted(set(runs) | set(by_name)):
        run, row = runs.get(name), by_name.get(name, {})
        flat = flatten(run.config) if run is not None else {}
        values = {p: flat[p] if p in flat else _cell(row.get(p)) for p in params}
        value = as_float(row.get(metric_col)) if metric_col else None
        if value is None and run is not None:
            value = as_float(run.summary.get(f"best/{metric}"))
        state = row.get("state") or (str(run.summary.get("status")) if run is not None else "unknown")
        trials.append(Trial(name, state, values, value, run, row))
    for t in trials:
        if t.run is not None:
            t.run.label = f"trial {t.name}"
    sign = -1.0 if goal == "maximize" else 1.0
    trials.sort(key=lambda t: (t.value is None or not math.isfinite(t.value),
                               sign * t.value if t.value is not None and math.isfinite(t.value) else 0.0, t.name))
    name = str(spec.get("name") or path.resolve().name)
    if (path / "study.json").is_file():  # the study name the sweep ran under
        with contextlib.suppress(ValueError, AttributeError):
            name = str(json.loads((path / "study.json").read_text()).get("study_name") or name)
    return Sweep(path, metric, goal, params, trials, str(spec.get("method", "")), name)


def _trial_name(row: dict[str, str]) -> str | None:
    for key in ("trial", "number"):
        v = row.get(key)
        if v not in (None, "") and str(v).strip().isdigit():
            return f"{int(v):04d}"
    return None


def _spec_metric(spec: dict[str, Any]) -> str | None:
    m = spec.get("metric")
    return str(m["name"]) if isinstance(m, dict) and "name" in m else None


def _spec_goal(spec: dict[str, Any]) -> str | None:
    m = spec.get("metric")
    goal = m.get("goal") if isinstance(m, dict) else None
    return str(goal) if goal in ("maximize", "minimize") else None


def _common(runs: dict[str, Run], section: str, key: str) -> Any:
    vals = {str(r.config.get(section, {}).get(key)) for r in runs.values() if r.config.get(section)}
    return vals.pop() if len(vals) == 1 else None


# ---------------------------------------------------------------------- report
def sweep_report(path: Path, output: Path, *, storage: str | None = None) -> Path:
    sw = load_sweep(path)
    doc = Doc(f"Sweep report: {sw.name}")
    states: dict[str, int] = {}
    for t in sw.trials:
        states[t.state] = states.get(t.state, 0) + 1
    scored = [t for t in sw.trials if t.value is not None and math.isfinite(t.value)]
    doc.para(f"{sw.method + ' search, ' if sw.method else ''}metric `{sw.metric}` ({sw.goal}); "
             f"{len(sw.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".")
    doc.para(f"Sweep directory: `{path}`; varied: " + (", ".join(f"`{p}`" for p in sw.params) or "nothing") + ".")
    if scored:
        best = scored[0]
        doc.para(f"Best: **trial {best.name}**, {sw.metric} {fmt_metric(sw.metric, best.value)}"
                 + (f", test accuracy {fmt_metric('test/acc', best.get('test/acc'))}" if best.get("test/acc") is not None else "")
                 + "; " + ", ".join(f"`{k}`={fmt_value(v)}" for k, v in best.params.items())
                 + (". Its complete config: `best.yaml`." if (path / "best.yaml").is_file() else "."))

    doc.heading("Results")
    cols = ["trial", "state"] + [f"`{p}`" for p in sw.params] + [f"best {sw.metric}", "test/acc", "train/acc",
                                                                   "epochs", "s/epoch", "reason"]
    rows = []
    for t in sw.trials:
        reason = t.csv.get("reason") or (t.run.summary.get("error") or t.run.summary.get("stop_reason") if t.run else "")
        rows.append([t.name, t.state] + [fmt_value(t.params.get(p)) for p in sw.params] + [
            fmt_metric(sw.metric, t.value),
            fmt_metric("test/acc", t.get("test/acc") if t.run else _cell(t.csv.get("test/acc"))),
            fmt_metric("train/acc", t.get("final/train/acc") if t.run else _cell(t.csv.get("train/acc"))),
            fmt_value(t.get("epochs_run") if t.run else _cell(t.csv.get("epochs"))),
            fmt_metric("epoch_time_s", t.get("epoch_time_s") if t.run else _cell(t.csv.get("s/epoch"))),
            str(reason or "")])
    doc.table(cols, rows)
    doc.note("Sorted by the sweep metric, best first; test accuracy is that of each trial's best checkpoint.")

    with_history = {t.run.label: t.run.history for t in sw.trials if t.run is not None and t.run.history}
    if with_history:
        doc.heading("Curves of all trials")
        finals = {t.run.label: t.value for t in sw.trials if t.run is not None}
        best_label = scored[0].run.label if scored and scored[0].run is not None else None
        keys = ["val/acc"] + ([sw.metric] if sw.metric != "val/acc" else [])
        for key in keys:
            if any(key in h for hist in with_history.values() for h in hist):
                doc.image(f"sweep_{key.replace('/', '_')}.png",
                          plots.overlay(with_history, key, highlight=best_label, values=finals),
                          f"`{key}` per epoch of every trial, coloured by its best {sw.metric}; the best trial in red.")

    rows_for_plots = [{**t.params, sw.metric: t.value} for t in scored]
    plotted = [p for p in sw.params if len({str(r.get(p)) for r in rows_for_plots}) > 1]
    if plotted and len(rows_for_plots) >= 2:
        doc.heading("Metric against each parameter")
        doc.image("metric_vs_params.png", plots.metric_vs_params(rows_for_plots, plotted, sw.metric),
                  f"Best {sw.metric} of each trial against each varied parameter (categorical: red bar = mean).")
        doc.heading("Parallel coordinates")
        doc.image("parallel_coordinates.png",
                  plots.parallel_coordinates(rows_for_plots, plotted, sw.metric, goal=sw.goal),
                  f"One line per trial through its parameter values and {sw.metric}; colour = {sw.metric}.")

    doc.heading("Parameter importance")
    importance_section(doc, path, storage)
    return doc.write(output)


def importance_section(doc: Doc, path: Path, storage: str | None) -> None:
    try:
        values = param_importance(path, storage)
    except Exception as e:  # no study, an unreachable database, too few trials: the report goes on
        doc.note(f"Not computed: {' '.join(str(e).split()) or type(e).__name__}")
        return
    doc.table(["parameter", "importance"], [[f"`{k}`", f"{v:.3f}"] for k, v in values.items()])
    doc.image("importance.png", plots.importance(values),
              "Optuna's fANOVA importance: the share of the metric's variance each parameter explains.")


def param_importance(path: Path, storage: str | None = None) -> dict[str, float]:
    """Optuna's parameter importance for the sweep's study (completed trials only)."""
    import optuna

    from trainpipe.sweep.run import open_sweep

    if not (path / "study.json").is_file():
        raise FileNotFoundError(f"no Optuna study recorded in {path} (study.json, written by `trainpipe sweep`, "
                                f"is missing).")
    _, study = open_sweep(path, storage)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        raise ValueError(f"importance needs at least 2 completed trials; the study has {len(complete)}.")
    return dict(optuna.importance.get_param_importances(study))

