"""The results of a sweep written out: one row per trial as CSV and Markdown, the best
config (best.yaml), and what `--status` prints.

Everything is read from the study (not from the trial directories), so any machine
that can reach the storage writes the same table. The ranking of trials and
configurations and their statistics are `sweep.ranking`'s, which the report shares.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from trainpipe import files
from trainpipe.run import failures
from trainpipe.sweep import budget
from trainpipe.sweep import confirm as cf
from trainpipe.sweep import study as st
from trainpipe.sweep.ranking import Configuration, best_configuration, best_trial, ci_text, configurations, \
    mean_spread, rank_trials, verdict
from trainpipe.sweep.spec import SweepSpec

STATE_NAMES = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
               TrialState.WAITING: "waiting", TrialState.FAIL: "failed"}


@dataclass
class TrialRow:
    number: int
    state: str  # completed | pruned | failed | running | waiting
    params: dict[str, Any]
    value: float | None  # best value of the sweep metric over the trial's epochs
    train_acc: float | None = None  # final epoch's
    test_acc: float | None = None  # of the best checkpoint
    epochs: int | None = None
    epoch_time_s: float | None = None
    wall_time_s: float | None = None
    reason: str = ""
    host: str = ""
    run_dir: str = ""
    curve: dict[int, float] = field(default_factory=dict)  # epoch -> metric, as reported
    shown: dict[str, Any] = field(default_factory=dict)  # the sweep file's names -> values, labels for lists/dicts
    cause: str = ""  # a failure of the machine: oom | disk_full | device_lost (`trainpipe.run.failures`)
    facts: dict[str, Any] = field(default_factory=dict)  # its batch_size, peak_memory_mb, requested_mb
    span_s: float | None = None  # start to end as the study records it (what a budget's estimate uses)
    stage: str = ""  # with `confirm:`, screen or confirm (`sweep.confirm`)

    @property
    def name(self) -> str:
        return f"{self.number:04d}"


def trial_params(trial: FrozenTrial, spec: SweepSpec) -> dict[str, Any]:
    """The config values of a trial, replayed from Optuna's stored values (also mid-sampling)."""
    fixed = optuna.trial.FixedTrial(dict(trial.params), number=trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {p.key: p.sample(fixed) for p in spec.varied if p.display in trial.params}


def shown_params(params: dict[str, Any], spec: SweepSpec) -> dict[str, Any]:
    """{the sweep file's name: value}, with labels for list and dict values (and, with `confirm:` in a
    sweep that varies no seed, the trial's `seed`)."""
    out = {p.display: p.label_of(params[p.key]) for p in spec.varied if p.key in params}
    if spec.confirm is not None and spec.seed_param is None and "seed" in params:
        out["seed"] = params["seed"]
    return out


def shown_names(spec: SweepSpec) -> list[str]:
    """The parameter columns of the results: the varied parameters, and `seed` when `confirm:` adds
    seeds to a sweep that varies none."""
    return [p.display for p in spec.varied] + (["seed"] if spec.confirm is not None and spec.seed_param is None
                                               else [])


def row_of(trial: FrozenTrial, spec: SweepSpec) -> TrialRow:
    res = trial.user_attrs.get("result") or {}
    state = STATE_NAMES.get(trial.state, trial.state.name.lower())
    curve = {int(k): float(v) for k, v in trial.intermediate_values.items()}
    value = res.get("best")
    if value is None and curve and trial.state in (TrialState.RUNNING, TrialState.PRUNED):
        value = max(curve.values()) if spec.goal == "maximize" else min(curve.values())
    reason = res.get("reason") or ""
    if trial.state == TrialState.FAIL and res.get("status") in (None, "running"):
        reason = "its worker died and it was retried too often" if "failed_trial" in trial.system_attrs \
            else "its worker died"
    if trial.state == TrialState.RUNNING:
        reason = f"epoch {max(curve)}" if curve else "starting"
    if trial.state == TrialState.WAITING and "failed_trial" in trial.system_attrs:
        why = "was interrupted" if res.get("status") == "interrupted" else "lost its worker"
        if res.get("cause") in failures.CAUSES:
            why = f"failed: {failures.WHAT[res['cause']]}"
        reason, value = f"queued again: trial {trial.system_attrs['failed_trial']:04d} {why}", None
    worker = trial.user_attrs.get("worker") or {}
    params = trial_params(trial, spec)
    stage = ""
    if spec.confirm is not None:  # the seed it trained with, shown as a parameter, and its stage
        params[spec.seed_param.key if spec.seed_param is not None else "seed"] = cf.seed_of(trial, spec)
        stage = cf.CONFIRM if cf.is_confirmation(trial) else cf.SCREEN
    cause = res.get("cause") if trial.state == TrialState.FAIL and res.get("cause") in failures.CAUSES else ""
    return TrialRow(trial.number, state, params, value, res.get("train_acc"), res.get("test_acc"),
                    res.get("epochs") if trial.state != TrialState.RUNNING else len(curve),
                    res.get("epoch_time_s"), res.get("wall_time_s"), str(reason), worker.get("host", ""),
                    trial.user_attrs.get("run_dir", ""), curve, shown_params(params, spec), cause,
                    {k: res[k] for k in ("batch_size", "peak_memory_mb", "requested_mb") if res.get(k) is not None}
                    if cause else {}, budget.span_s(trial), stage)


def trial_rows(study: optuna.Study, spec: SweepSpec) -> list[TrialRow]:
    """Every trial that counts (not re-queued or discarded ones), best first; failed ones last."""
    from trainpipe.sweep.final_test import recorded

    led = st.ledger(study.get_trials(deepcopy=False))
    rows = [row_of(t, spec) for t in led.visible]
    tested = recorded(study)  # test: best evaluates the winner after the sweep
    for r in rows:
        if r.number in tested:
            r.test_acc = tested[r.number].get("test/acc")
    return rank_trials(rows, spec.goal)


def config_groups(rows: list[TrialRow], spec: SweepSpec) -> list[Configuration]:
    """The sweep's configurations (trials that differ only in the seed), best mean first."""
    return configurations(rows, [p.display for p in spec.config_params], spec.goal)


def best_group(rows: list[TrialRow], spec: SweepSpec) -> Configuration | None:
    """The best configuration by mean, for a sweep that varies the seed (else None)."""
    return best_configuration(config_groups(rows, spec)) if spec.grouped else None


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


# ------------------------------------------------------------------- writing
def columns(spec: SweepSpec) -> list[str]:
    m = spec.metric_label
    seeded = ["config"] if spec.grouped else []
    stats = [f"mean {m}", f"std {m}", "n", *ci_columns(spec)] if spec.grouped else []
    stage = ["stage"] if spec.confirm is not None else []
    return (["trial", *seeded, "state", *stage] + shown_names(spec) + [f"best {m}", *stats]
            + ["train/acc", "test/acc", "epochs", "s/epoch", "time_s", "reason", "host", "run_dir", "cause"])


def ci_columns(spec: SweepSpec) -> list[str]:
    """The 95% interval of a configuration's mean (Student t over its seeds; empty with n < 2)."""
    return [f"ci95 low {spec.metric_label}", f"ci95 high {spec.metric_label}"]


def as_record(r: TrialRow, spec: SweepSpec, group: Configuration | None = None) -> list[Any]:
    seeded = [group.label if group else "-"] if spec.grouped else []
    ci = group.ci if group else None
    stats = [group.mean, group.std, group.n, *(ci or (None, None))] if spec.grouped and group else \
        ([None, None, 0, None, None] if spec.grouped else [])
    stage = [r.stage] if spec.confirm is not None else []
    return ([r.name, *seeded, r.state, *stage] + [r.shown.get(n) for n in shown_names(spec)] + [r.value, *stats]
            + [r.train_acc, r.test_acc, r.epochs, r.epoch_time_s, r.wall_time_s, r.reason, r.host, r.run_dir,
               r.cause])


def records(rows: list[TrialRow], spec: SweepSpec) -> list[list[Any]]:
    """One record per trial; with a seed parameter, grouped by configuration, best mean first."""
    if not spec.grouped:
        return [as_record(r, spec) for r in rows]
    return [as_record(r, spec, g) for g in config_groups(rows, spec) for r in g.rows]


def to_csv(rows: list[TrialRow], spec: SweepSpec) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns(spec))
    for rec in records(rows, spec):
        w.writerow([json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v) for v in rec])
    return buf.getvalue()


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def table_lines(rows: list[TrialRow], spec: SweepSpec) -> list[str]:
    # host and run_dir are in the CSV, and a configuration's mean in its own table: this one stays readable.
    m = spec.metric_label
    all_cols = columns(spec)
    hidden = ("host", "run_dir", "cause", f"mean {m}", f"std {m}", "n", *ci_columns(spec))
    keep = [i for i, c in enumerate(all_cols) if c not in hidden]
    cols = [all_cols[i] for i in keep]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---" if c in ("state", "stage", "reason") else "---:" for c in cols) + "|"]
    for rec in records(rows, spec):
        lines.append(_md_row([fmt(rec[i]) for i in keep]))
    return lines


def config_table_lines(rows: list[TrialRow], spec: SweepSpec) -> list[str]:
    """One line per configuration: its parameters, mean ± std (n) and the 95% interval of the mean of
    the metric, mean ± std (n) of test/acc."""
    cols = ["config"] + [p.display for p in spec.config_params] + [f"{spec.metric_label} mean ± std (n)", "95% CI",
                                                                    "test/acc mean ± std (n)", "trials"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if c == "trials" else "---:" for c in cols) + "|"]
    for g in config_groups(rows, spec):
        lines.append(_md_row([g.label] + [fmt(g.shown.get(p.display)) for p in spec.config_params]
                             + [mean_spread(g.values), ci_text(g), mean_spread(g.test_values()), g.trials]))
    return lines


def budget_line(rows: list[TrialRow], spec: SweepSpec, sweep_dir: str | Path | None) -> str | None:
    """`stopped: budget (4m of 5m used, 14 of 32 trials)`, or the budget used and left; None without one."""
    if sweep_dir is None:
        return None
    c = counts(rows)
    est = budget.trial_estimate([r.span_s for r in rows if r.state == "completed"])
    return budget.line(sweep_dir, c["completed"] + c["pruned"] + c["failed"], planned_all(spec), est)


def to_markdown(rows: list[TrialRow], spec: SweepSpec, sweep_dir: str | Path | None = None) -> str:
    from trainpipe.sweep.final_test import WHEN

    lines = [f"# Sweep {spec.name}", "", summary_line(rows, spec), ""]
    if (b := budget_line(rows, spec, sweep_dir)) is not None:
        lines += [b, ""]
    if (v := verdict_line(rows, spec)) is not None:
        lines += [v, ""]
    lines += [f"Test split: {WHEN[spec.test]}.", ""]
    if spec.grouped:
        lines += [f"## Configurations, best mean {spec.metric_label} first", "", *config_table_lines(rows, spec), "",
                  f"## Trials (each {spec.seed_name})", ""]
    lines += table_lines(rows, spec)
    lines += machine_failure_lines(rows, spec)
    if sweep_dir is not None:
        from trainpipe.sweep.extend import history_lines

        lines += history_lines(sweep_dir)
    best = best_trial(rows)
    g = best_group(rows, spec)
    if g is not None:
        lines += ["", f"Best configuration: {g.label} ({spec.metric_label} {mean_spread(g.values)}, trials {g.trials}); "
                      f"its complete config is best.yaml: `trainpipe train best.yaml`."]
    elif best is not None:
        lines += ["", f"Best: trial {best.name} ({spec.metric_label} {fmt(best.value)}); its complete config is "
                      f"best.yaml: `trainpipe train best.yaml`."]
    return "\n".join(lines) + "\n"


def machine_failures(rows: list[TrialRow]) -> list[TrialRow]:
    """The trials that failed for a reason of the machine (out of memory, disk full, a lost GPU)."""
    return [r for r in rows if r.cause]


def machine_failure_table(rows: list[TrialRow], spec: SweepSpec) -> tuple[list[str], list[list[str]], str]:
    """(columns, rows, note) of the trials the machine failed: what the results and the report show."""
    failed = machine_failures(rows)
    cols = ["trial", "cause", *[p.display for p in spec.varied], "batch size", "peak memory", "error"]
    table = [[r.name, failures.WHAT[r.cause], *[fmt(r.shown.get(p.display)) for p in spec.varied],
              fmt(r.facts.get("batch_size")), failures.fmt_mb(r.facts.get("peak_memory_mb")),
              r.reason.split(": ", 1)[-1][:120]] for r in failed]
    note = f"{failures.RERUN_NOTE} What to do first: {failures.advice(r.cause for r in failed)}."
    return cols, table, note


def machine_failure_lines(rows: list[TrialRow], spec: SweepSpec) -> list[str]:
    if not machine_failures(rows):
        return []
    cols, table, note = machine_failure_table(rows, spec)
    return ["", "## Trials that failed for a reason of the machine", "", "| " + " | ".join(cols) + " |",
            "|" + "|".join("---" for _ in cols) + "|", *[_md_row(r) for r in table], "", note]


def verdict_line(rows: list[TrialRow], spec: SweepSpec) -> str | None:
    """`Verdict: ...`: the best configuration against the runner-up (`sweep.verdict`), or None
    before any trial completed."""
    groups = config_groups(rows, spec) if spec.grouped else \
        configurations(rows, [p.display for p in spec.varied], spec.goal, per_trial=True)
    v = verdict(groups, spec.metric_label, spec.goal)
    return f"Verdict: {v.sentence}" if v is not None else None


def counts(rows: list[TrialRow]) -> dict[str, int]:
    out = {k: 0 for k in ("completed", "pruned", "failed", "running", "waiting")}
    for r in rows:
        out[r.state] = out.get(r.state, 0) + 1
    return out


def planned_all(spec: SweepSpec) -> int | None:
    """How many trials make the sweep complete, confirmation trials included; None: until stopped."""
    planned = spec.planned_trials()
    return None if planned is None else planned + cf.planned_extra(spec, planned)


def summary_line(rows: list[TrialRow], spec: SweepSpec) -> str:
    planned = planned_all(spec)
    c = counts(rows)
    done = c["completed"] + c["pruned"] + c["failed"]
    of = f" of {planned}" if planned is not None else ""
    parts = ", ".join(f"{n} {k}" for k, n in c.items() if n)
    return (f"{spec.method} search, {spec.metric_label} ({spec.goal}): {done}{of} trials finished"
            f"{' (' + parts + ')' if parts else ''}; updated {dt.datetime.now():%Y-%m-%d %H:%M:%S}.")


def best_config(row: TrialRow, spec: SweepSpec) -> dict[str, Any]:
    """The complete resolved config of a trial, as `trainpipe train` would read it."""
    from trainpipe import config as config_mod

    return config_mod.load(spec.base, {**spec.constant_overrides(), **row.params}).to_dict()


FINISHED = ("completed", "pruned")


def finished_in_csv(path: Path) -> int:
    """How many completed or pruned trials an existing results.csv lists (0 when none is there)."""
    try:
        with path.open(newline="") as f:
            return sum(row.get("state") in FINISHED for row in csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return 0


def write_results(sweep_dir: str | Path, study: optuna.Study, spec: SweepSpec) -> list[TrialRow]:
    """Rewrite results.csv, results.md and best.yaml from the study."""
    d = Path(sweep_dir)
    rows = trial_rows(study, spec)
    had = finished_in_csv(d / "results.csv")
    now = sum(r.state in FINISHED for r in rows)
    if now < had:  # the study lost trials (a damaged or replaced database): keep the better table
        print(f"results.csv and results.md kept as they are: they list {had} finished trials, the study "
              f"only {now}.", file=sys.stderr)
        return rows
    files.write_text(d / "results.csv", to_csv(rows, spec))
    files.write_text(d / "results.md", to_markdown(rows, spec, d))
    best, header = best_trial(rows), ""
    g = best_group(rows, spec)
    if g is not None:
        # The best configuration by mean; the config is its first trial's, seed included.
        best = min((r for r in g.rows if r.state == "completed"), key=lambda r: r.number)
        header = (f"# Best configuration of sweep {spec.name} by mean {spec.metric_label} over seeds: "
                  f"{mean_spread(g.values)} ({spec.goal}), trials {g.trials}.\n# This is trial {best.name}'s "
                  f"config ({spec.seed_name} {best.shown.get(spec.seed_name)}); "
                  f"run it with: trainpipe train {d / 'best.yaml'}\n")
    elif best is not None:
        header = (f"# Best trial {best.name} of sweep {spec.name}: {spec.metric_label} {fmt(best.value)} "
                  f"({spec.goal}).\n# Complete resolved config; run it with: trainpipe train {d / 'best.yaml'}\n")
    if best is not None:
        try:
            cfg = best_config(best, spec)
        except Exception as e:  # the base config changed or vanished since: keep the table anyway
            print(f"best.yaml not written: {e}")
        else:
            files.write_text(d / "best.yaml", header + yaml.safe_dump(cfg, sort_keys=False))
    return rows


def status_text(rows: list[TrialRow], spec: SweepSpec, sweep_dir: str | Path) -> str:
    """What `trainpipe sweep DIR --status` prints."""
    lines = [f"sweep {spec.name} ({sweep_dir})", summary_line(rows, spec)]
    if (b := budget_line(rows, spec, sweep_dir)) is not None:
        lines.append(b)
    if (v := verdict_line(rows, spec)) is not None:
        lines.append(v)
    best = best_trial(rows)
    g = best_group(rows, spec)
    if g is not None:
        params = " ".join(f"{k}={fmt(v)}" for k, v in g.shown.items())
        lines.append(f"best configuration so far: {g.label}, {spec.metric_label} {mean_spread(g.values)}, test/acc "
                     f"{mean_spread(g.test_values())}  {params}")
    elif best is not None:
        params = " ".join(f"{k}={fmt(v)}" for k, v in best.shown.items())
        lines.append(f"best so far: trial {best.name}, {spec.metric_label} {fmt(best.value)}, test/acc "
                     f"{fmt(best.test_acc)}  {params}")
    else:
        lines.append("best so far: none (no trial has completed yet)")
    running = [r for r in rows if r.state == "running"]
    for r in running:
        lines.append(f"running: trial {r.name} on {r.host or '?'}, {r.reason}, {spec.metric_label} so far {fmt(r.value)}")
    if spec.grouped:
        lines += ["", *config_table_lines(rows, spec)]
    lines += ["", *table_lines(rows, spec), *machine_failure_lines(rows, spec)]
    return "\n".join(lines) + "\n"
