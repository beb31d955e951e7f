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
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainpipe.errors import ConfigError
from trainpipe.report import plots
from trainpipe.report.html import Doc
from trainpipe.run import failures
from trainpipe.report.load import (
    Run,
    as_float,
    differing_keys,
    flatten,
    fmt_metric,
    fmt_value,
    is_run_dir,
    load_run,
    mean_spread,
    same,
)
from trainpipe.sweep.names import derive_label, metric_key
from trainpipe.sweep.params import Param, file_params
from trainpipe.sweep.ranking import Configuration, best_configuration, ci_text, configurations, finite, rank_trials, \
    verdict
from trainpipe.sweep.spec import TEST_MODES

# Keys that differ between trials without being searched: where each trial ran.
NOT_PARAMS = ("name", "seed", "train.monitor", "train.monitor_mode", "train.device")


def is_sweep_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "trials").is_dir() or (path / "results.csv").is_file()) and not is_run_dir(path)


@dataclass
class Trial:
    name: str  # NNNN
    state: str
    params: dict[str, Any]  # the sweep file's names -> values (labels for lists and dicts)
    value: float | None  # best value of the sweep metric
    run: Run | None = None
    csv: dict[str, str] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return int(self.name)

    @property
    def shown(self) -> dict[str, Any]:
        return self.params

    @property
    def histories(self) -> list[list[dict[str, Any]]]:
        return [self.run.history] if self.run is not None and self.run.history else []

    def get(self, key: str) -> Any:
        if self.run is not None and key in self.run.summary:
            return self.run.summary[key]
        return None

    @property
    def test_acc(self) -> float | None:
        return as_float(self.get("test/acc") if self.run is not None else _cell(self.csv.get("test/acc")))


@dataclass
class Sweep:
    path: Path
    metric: str  # trainpipe's key (val/acc)
    goal: str
    params: list[str]  # the sweep file's names of the varied parameters
    trials: list[Trial]
    method: str = ""
    name: str = ""
    metric_label: str = ""  # the sweep file's name for the metric (val_accuracy)
    seed: str | None = None  # the parameter that sets the seed, when the sweep varies it
    test: str = ""  # the sweep file's test: key ("" when it has none)

    @property
    def config_params(self) -> list[str]:
        return [p for p in self.params if p != self.seed]

    def groups(self) -> list[Configuration]:
        """Configurations, best mean first (one per trial when no seed is varied): `sweep.ranking`'s,
        as results.md ranks them."""
        return configurations(self.trials, self.config_params, self.goal, per_trial=not self.seed)


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


MISSING_VALUE = object()


def _lookup(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING_VALUE
        node = node[part]
    return node


def _matches(given: Any, resolved: Any) -> bool:
    """A swept value as the resolved config holds it (a dict value gets the component's defaults added)."""
    if isinstance(given, dict) and isinstance(resolved, dict):
        return all(k in resolved and _matches(v, resolved[k]) for k, v in given.items())
    return same(given, resolved) if not isinstance(given, (list, dict)) else given == resolved


def _resolved_form(key: str, value: Any, config: dict[str, Any]) -> Any:
    """A list or dict sweep value as config.load completes it in this trial's config (an
    augment list, a chain's members, with every option), so that the trial's resolved
    config.yaml is matched to the label of its value."""
    if not isinstance(value, (list, dict)):
        return value
    from trainpipe.config import load

    try:
        return _lookup(load(base=config, overrides={key: value}).to_dict(), key)
    except ConfigError:  # a value the config refuses never ran
        return value


def value_from_config(p: Param, config: dict[str, Any]) -> Any:
    """What a trial ran with, read from its resolved config, shown as the results show it."""
    value = _lookup(config, p.key)
    if value is MISSING_VALUE:
        return None
    for v, lab in zip(p.values, p.labels):
        if _matches(v, value) or _matches(_resolved_form(p.key, v, config), value):
            return lab
    return derive_label(value) if isinstance(value, (list, dict)) else value


def load_sweep(path: Path) -> Sweep:
    """Trials from trials/NNNN/ and results.csv, with the sweep metric, goal and varied parameters."""
    cols, csv_rows = read_csv(path / "results.csv")
    spec: dict[str, Any] = {}
    if (path / "sweep.yaml").is_file():
        from trainpipe.config import read_yaml

        spec = read_yaml(path / "sweep.yaml", what="sweep file")
    declared = {p.display: p for p in file_params(spec)}
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
    label = (metric_col[5:] if metric_col else None) or _spec_metric(spec) or _common(runs, "train", "monitor") \
        or "val/acc"
    metric = metric_key(label)
    goal = _spec_goal(spec) or ("minimize" if _common(runs, "train", "monitor_mode") == "min" else "maximize")
    if metric_col and "state" in cols:
        params = [c for c in cols[cols.index("state") + 1: cols.index(metric_col)] if c not in ("config", "stage")]
    elif declared:
        params = [n for n, p in declared.items() if p.varied]
    else:
        params = [k for k in differing_keys([r.config for r in runs.values()]) if k not in NOT_PARAMS]

    trials = []
    for name in sorted(set(runs) | set(by_name)):
        run, row = runs.get(name), by_name.get(name)
        values = {}
        for p in params:
            if row is not None:  # what results.csv shows: the sweep's own names and labels
                values[p] = _cell(row.get(p))
            elif run is not None and p in declared:  # e.g. an interrupted trial, re-queued under another number
                values[p] = value_from_config(declared[p], run.config)
            else:
                values[p] = flatten(run.config).get(p) if run is not None else None
        value = as_float((row or {}).get(metric_col)) if metric_col else None
        if value is None and run is not None:
            value = as_float(run.summary.get(f"best/{metric}"))
        state = (row or {}).get("state") or (str(run.summary.get("status")) if run is not None else "unknown")
        trials.append(Trial(name, state, values, value, run, row or {}))
    for t in trials:
        if t.run is not None:
            t.run.label = f"trial {t.name}"
    trials = rank_trials(trials, goal)
    name = str(spec.get("name") or path.resolve().name)
    if (path / "study.json").is_file():  # the study name the sweep ran under
        with contextlib.suppress(ValueError, AttributeError):
            meta = json.loads((path / "study.json").read_text())
            name = str(meta.get("name") or meta.get("study_name") or name)  # (an extended sweep's study is NAME.extended-K)
    seed = next((n for n, p in declared.items() if p.key == "seed" and p.varied and n in params), None)
    if seed is None and "seed" in params:
        seed = "seed"
    test = spec.get("test") if spec.get("test") in TEST_MODES else ""
    return Sweep(path, metric, goal, params, trials, str(spec.get("method", "")), name, label, seed, str(test))


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
# Fewer completed configurations than this and parameter importance is not computed:
# splitting the variance of two or three points among parameters says nothing.
MIN_CONFIGS_FOR_IMPORTANCE = 4
# Below this many, importance is shown with a warning that it is a rough hint.
FEW_CONFIGS = 10


def sweep_report(path: Path, output: Path, *, storage: str | None = None) -> Path:
    sw = load_sweep(path)
    metric, label = sw.metric, sw.metric_label
    doc = Doc(f"Sweep report: {sw.name}")
    states: dict[str, int] = {}
    for t in sw.trials:
        states[t.state] = states.get(t.state, 0) + 1
    scored = [t for t in sw.trials if finite(t.value)]
    groups = sw.groups()
    doc.para(f"{sw.method + ' search, ' if sw.method else ''}metric `{label}` ({sw.goal}); "
             f"{len(sw.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".")
    if (b := budget_line(path, sw)) is not None:
        doc.para(f"**{b[0].upper() + b[1:]}**")
    doc.para(f"Sweep directory: `{path}`; varied: " + (", ".join(f"`{p}`" for p in sw.params) or "nothing") + ".")
    best_group = best_configuration(groups)
    if sw.seed and best_group is not None:
        doc.para(f"Best configuration by mean over seeds: **{best_group.label}**, {label} "
                 f"{_mean_n(metric, best_group.values)}"
                 + (f", test accuracy {_mean_n('test/acc', _tests(best_group))}" if _tests(best_group) else "")
                 + "; " + (", ".join(f"`{k}`={fmt_value(v)}" for k, v in best_group.shown.items()) or "-")
                 + (". Its complete config: `best.yaml`." if (path / "best.yaml").is_file() else "."))
    if scored:
        best = scored[0]
        doc.para(f"Best{' single trial' if sw.seed else ''}: **trial {best.name}**, {label} {fmt_metric(metric, best.value)}"
                 + (f", test accuracy {fmt_metric('test/acc', best.test_acc)}" if best.test_acc is not None else "")
                 + "; " + ", ".join(f"`{k}`={fmt_value(v)}" for k, v in best.params.items())
                 + (". Its complete config: `best.yaml`." if (path / "best.yaml").is_file() and not sw.seed else "."))
    if (v := verdict(groups, label, sw.goal)) is not None:
        doc.para(f"**Verdict:** {v.sentence}")
    doc.para(test_protocol(sw))

    if sw.seed:
        doc.heading("Configurations (mean ± std over seeds)")
        doc.table(["config"] + [f"`{p}`" for p in sw.config_params]
                  + [f"{label} mean ± std", "n", "95% CI of the mean", "test/acc", "trials"],
                  [[g.label] + [fmt_value(g.shown.get(p)) for p in sw.config_params]
                   + [mean_spread(metric, g.values), str(len(g.values)), _ci(metric, g),
                      mean_spread("test/acc", _tests(g)), g.trials]
                   for g in groups])
        doc.note(f"Ranked by the mean of each configuration's completed trials (one per `{sw.seed}`); ± is the "
                 f"sample standard deviation, n the number of seeds completed, the interval the 95% confidence "
                 f"interval of the mean (Student t; n >= 2). The verdict compares the best with the runner-up "
                 f"by Welch's t-test.")

    doc.heading("Results")
    config_of = {t.name: g.label for g in groups for t in g.rows} if sw.seed else {}
    staged = any(t.csv.get("stage") for t in sw.trials)  # `confirm:`: screening or confirmation trial
    cols = (["trial", "state"] + (["stage"] if staged else []) + [f"`{p}`" for p in sw.params]
            + (["config"] if sw.seed else [])
            + [f"best {label}", "test/acc", "train/acc", "epochs", "s/epoch", "reason"])
    rows = []
    for t in sw.trials:
        reason = t.csv.get("reason") or (t.run.summary.get("error") or t.run.summary.get("stop_reason") if t.run else "")
        rows.append([t.name, t.state] + ([t.csv.get("stage") or "-"] if staged else [])
                    + [fmt_value(t.params.get(p)) for p in sw.params]
                    + ([config_of.get(t.name, "-")] if sw.seed else []) + [
            fmt_metric(metric, t.value),
            fmt_metric("test/acc", t.test_acc),
            fmt_metric("train/acc", t.get("final/train/acc") if t.run else _cell(t.csv.get("train/acc"))),
            fmt_value(t.get("epochs_run") if t.run else _cell(t.csv.get("epochs"))),
            fmt_metric("epoch_time_s", t.get("epoch_time_s") if t.run else _cell(t.csv.get("s/epoch"))),
            str(reason or "")])
    doc.table(cols, rows)
    doc.note("Sorted by the sweep metric, best first; test accuracy is that of each trial's best checkpoint.")
    machine_failures_section(doc, sw)

    with_history = {t.run.label: t.run.history for t in sw.trials if t.run is not None and t.run.history}
    if with_history:
        doc.heading("Curves of all trials")
        finals = {t.run.label: t.value for t in sw.trials if t.run is not None}
        best_label = scored[0].run.label if scored and scored[0].run is not None else None
        keys = ["val/acc"] + ([metric] if metric != "val/acc" else [])
        for key in keys:
            if any(key in h for hist in with_history.values() for h in hist):
                doc.image(f"sweep_{key.replace('/', '_')}.png",
                          plots.overlay(with_history, key, highlight=best_label, values=finals),
                          f"`{key}` per epoch of every trial, coloured by its best {label}; the best trial in red.")
        per_config = {f"{g.label} " + _short(g.shown): h for g in groups if (h := _histories(g))}
        if per_config:
            doc.heading("Loss, accuracy and learning rate per configuration")
            doc.image("configuration_curves.png", plots.config_curves(per_config, highlight=next(iter(per_config))),
                      "Train and val loss and accuracy and the learning rate per epoch, one colour per configuration"
                      + (" (the mean over its seeds; the band spans ± one standard deviation)" if sw.seed else "")
                      + "; the best configuration drawn thick.")

    rows_for_plots = [{**t.params, metric: t.value} for t in scored]
    plotted = [p for p in sw.params if len({str(r.get(p)) for r in rows_for_plots}) > 1]
    config_rows = [{**g.shown, metric: g.mean} for g in groups if g.mean is not None]
    config_plotted = [p for p in sw.config_params if len({str(r.get(p)) for r in config_rows}) > 1]
    if plotted and len(rows_for_plots) >= 2:
        doc.heading("Metric against each parameter")
        doc.image("metric_vs_params.png", plots.metric_vs_params(rows_for_plots, plotted, metric),
                  f"Best {label} of each trial against each varied parameter (categorical: red bar = mean).")
    if config_plotted and len(config_rows) >= 2:
        doc.heading("Parallel coordinates")
        doc.image("parallel_coordinates.png",
                  plots.parallel_coordinates(config_rows, config_plotted, metric, goal=sw.goal),
                  f"One line per {'configuration through its parameter values and its mean ' if sw.seed else 'trial through its parameter values and '}"
                  f"{label}; colour = {label}.")

    doc.heading("Parameter importance")
    importance_section(doc, path, storage)
    doc.note("For a LaTeX document: `table.tex` (the configurations, booktabs; `\\input{table.tex}`) and each "
             "figure as SVG and PDF (`\\includegraphics{metric_vs_params.pdf}`) are next to this report.")
    md = doc.write(output)
    from trainpipe.report.export import write_exports

    write_exports(doc, output, [g for g in groups if g.rank is not None], metric, label, sw.name or path.name)
    return md


def machine_failures_section(doc: Doc, sw: Sweep) -> None:
    """The trials that failed for a reason of the machine (out of memory, disk full, a lost GPU), apart."""
    listed = any(t.csv for t in sw.trials)  # results.csv leaves out trials that were retried since

    def cause_of(t: Trial) -> str:
        c = t.csv.get("cause") if listed else t.get("cause")
        return c if t.state == "failed" and c in failures.CAUSES else ""

    failed = [t for t in sw.trials if cause_of(t)]
    if not failed:
        return
    doc.heading("Trials that failed for a reason of the machine")
    doc.table(["trial", "cause"] + [f"`{p}`" for p in sw.params] + ["batch size", "peak memory", "error"],
              [[t.name, failures.WHAT[cause_of(t)]] + [fmt_value(t.params.get(p)) for p in sw.params]
               + [fmt_value(t.get("batch_size")), failures.fmt_mb(t.get("peak_memory_mb")),
                  str(t.csv.get("reason") or (t.run.summary.get("error") if t.run else "") or "")[:120]]
               for t in failed])
    doc.note(f"{failures.RERUN_NOTE} What to do first: {failures.advice(cause_of(t) for t in failed)}.")


def budget_line(path: Path, sw: Sweep) -> str | None:
    """`stopped: budget (4m of 5m used, 14 of 32 trials)`, from the sweep directory's budget record."""
    from trainpipe.sweep import budget

    finished = sum(t.state in ("completed", "pruned", "failed") for t in sw.trials)
    return budget.line(path, finished, None, None)


def _ci(key: str, g: Configuration) -> str:
    """The 95% interval of a configuration's mean, written as `fmt_metric` writes `key`."""
    if key.endswith(("acc", "top5")):
        return ci_text(g, lambda v: f"{100 * v:.2f}", unit="%")
    return ci_text(g, lambda v: f"{v:.4f}")


def _tests(g: Configuration) -> list[float]:
    return [t.test_acc for t in g.rows if t.test_acc is not None]


def _histories(g: Configuration) -> list[list[dict[str, Any]]]:
    return [h for t in g.rows for h in t.histories]


def _mean_n(key: str, values: list[float]) -> str:
    return f"{mean_spread(key, values)} (n={len(values)})"


def _short(params: dict[str, Any], width: int = 48) -> str:
    text = " ".join(f"{k.rsplit('.', 1)[-1]}={fmt_value(v)}" for k, v in params.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def test_protocol(sw: Sweep) -> str:
    """Which trials were evaluated on the test split, read from the trials themselves."""
    done = [t for t in sw.trials if t.test_acc is not None]
    after = [t for t in done if t.run is not None and t.run.summary.get("test_evaluated")]
    completed = [t for t in sw.trials if t.state == "completed"]
    if not done:
        return ("**Test split**: not evaluated" + (" (`test: none`)." if sw.test == "none" else
                                                   " yet (`test: best` evaluates the best configuration once the "
                                                   "sweep has ended)." if sw.test in ("", "best") else "."))
    if after or (sw.test == "best" and len(done) < len(completed)):
        names = ", ".join(t.name for t in sorted(done, key=lambda t: t.name))
        return (f"**Test split**: evaluated once, after the sweep, for the best configuration only (`test: best`: "
                f"chosen on {sw.metric_label}, tested once): trial{'s' if len(done) > 1 else ''} {names}.")
    return (f"**Test split**: evaluated at the end of every trial (`test: all`), {len(done)} trials; the choice "
            f"is still made on {sw.metric_label}.")


def importance_section(doc: Doc, path: Path, storage: str | None) -> None:
    try:
        values, notes = param_importance(path, storage)
    except Exception as e:  # no study, an unreachable database, too few trials: the report goes on
        doc.note(f"Not computed: {' '.join(str(e).split()) or type(e).__name__}")
        return
    doc.table(["parameter", "importance"], [[f"`{k}`", f"{v:.3f}"] for k, v in values.items()])
    doc.image("importance.png", plots.importance(values),
              "Optuna's fANOVA importance: the share of the metric's variance each parameter explains.")
    for n in notes:
        doc.note(n)


def param_importance(path: Path, storage: str | None = None) -> tuple[dict[str, float], list[str]]:
    """Optuna's parameter importance over the completed configurations (means over seeds),
    for the parameters that varied among them; plus notes on what was left out or is uncertain."""
    import optuna

    from trainpipe.sweep.run import open_sweep

    if not (path / "study.json").is_file():
        raise FileNotFoundError(f"no Optuna study recorded in {path} (study.json, written by `trainpipe sweep`, "
                                f"is missing).")
    spec, study = open_sweep(path, storage)
    names = [p.display for p in spec.config_params]
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if all(n in t.params for n in names)]
    groups: dict[tuple, list[Any]] = {}
    for t in complete:
        groups.setdefault(tuple(repr(t.params[n]) for n in names), []).append(t)
    if len(groups) < MIN_CONFIGS_FOR_IMPORTANCE:
        raise ValueError(f"importance needs at least {MIN_CONFIGS_FOR_IMPORTANCE} completed configurations; the "
                         f"sweep has {len(groups)}, too few for a share of the variance to mean anything.")
    varied = [n for n in names if len({repr(t.params[n]) for t in complete}) > 1]
    same_everywhere = [n for n in names if n not in varied]
    if not varied:
        raise ValueError("no parameter took more than one value among the completed trials.")
    proxy = optuna.create_study(direction=study.direction)
    for trials in groups.values():
        first = trials[0]
        proxy.add_trial(optuna.trial.create_trial(
            params={n: first.params[n] for n in varied}, distributions={n: first.distributions[n] for n in varied},
            value=statistics.fmean(t.value for t in trials)))
    values = dict(optuna.importance.get_param_importances(proxy, params=varied))
    notes = [f"Over {len(groups)} completed configurations"
             + (f" (each the mean over its `{spec.seed_param.display}` values)" if spec.seed_param else "")
             + ", for the parameters that varied among them."]
    if same_everywhere:
        notes.append("Left out, the same in every completed trial: " + ", ".join(f"`{n}`" for n in same_everywhere)
                     + ".")
    if len(varied) == 1:
        notes.append(f"Only `{varied[0]}` varied: it explains all the variance by construction.")
    if len(groups) < FEW_CONFIGS:
        notes.append(f"From {len(groups)} configurations only: read these numbers as a rough hint.")
    return values, notes
