"""A sweep's time budget: how much wall-clock time it may spend, and whether a trial still fits.

`budget: 2h` in the sweep file (or `trainpipe sweep ... --budget 90m`) bounds the wall-clock
time the sweep's invocations spend together. Before a worker starts a trial it estimates the
trial's duration, and starts it only if it would finish inside the budget; trials already
running finish. The estimate is the mean duration (start to end, as the study records it) of
the trials that completed; before any has, the dry run's timing of the first configuration.

The time used is kept in the sweep directory (budget.json): the time used by the earlier
invocations, and the start of the current one, so that `--status` can say how much is left
and a resumed sweep with a larger budget goes on where the last one stopped.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainpipe import files
from trainpipe.errors import ConfigError

BUDGET_FILE = "budget.json"
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(value: Any, what: str) -> float:
    """`2h`, `90m`, `30s`, `1h30m` -> seconds; anything else is a ConfigError naming `what`."""
    text = str(value).strip().replace(" ", "") if isinstance(value, (str, int, float)) else ""
    m = _DURATION.match(text) if text and not isinstance(value, bool) else None
    if m is None or not any(m.groups()):
        raise ConfigError(f"{what} is {value!r}; expected a duration with a unit, s, m or h (e.g. 30s, 90m, 2h, "
                          f"1h30m).")
    seconds = sum(float(g) * _UNIT_S[u] for g, u in zip(m.groups(), "hms") if g)
    if seconds <= 0:
        raise ConfigError(f"{what} is {value!r}; a budget must be longer than zero (e.g. 30s, 90m, 2h).")
    return seconds


def fmt(seconds: float) -> str:
    """`45s`, `12m`, `1h58m`: a duration as budgets are written."""
    if 0 < seconds < 9.95:
        return f"{seconds:.1f}s".replace(".0s", "s")
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m}m{r:02d}s" if r and m < 10 else f"{round(s / 60)}m"
    h, m = divmod(round(s / 60), 60)
    return f"{h}h{m:02d}m" if m else f"{h}h"


@dataclass
class Budget:
    """What a worker needs to decide whether a trial fits (it is sent to worker processes)."""

    total_s: float
    used_before_s: float  # by earlier invocations of the sweep
    started: float  # time.time() when this invocation started
    fallback_trial_s: float | None = None  # the dry run's estimate of one trial, until a trial has completed

    def used_s(self, now: float | None = None) -> float:
        return self.used_before_s + ((time.time() if now is None else now) - self.started)

    def left_s(self) -> float:
        return max(0.0, self.total_s - self.used_s())

    def fits(self, trial_s: float | None) -> bool:
        """Whether a trial of the estimated duration, started now, ends inside the budget."""
        return self.used_s() + (trial_s or 0.0) <= self.total_s

    def expected(self, trial_s: float | None, workers: int = 1) -> int | None:
        """How many more trials fit in what is left, `workers` at a time; None without an estimate."""
        if not trial_s:
            return None
        return int(self.left_s() // trial_s) * max(1, workers)

    def progress(self, trial_s: float | None, workers: int = 1) -> str:
        """`budget 1m12s of 5m used, 3m48s left, ~6 more trials fit`: the progress line's words."""
        n = self.expected(trial_s, workers)
        fit = "" if n is None else f", ~{n} more trial{'s' if n != 1 else ''} fit (~{fmt(trial_s or 0)} each)"
        return f"budget {fmt(self.used_s())} of {fmt(self.total_s)} used, {fmt(self.left_s())} left{fit}"


def span_s(trial: Any) -> float | None:
    """How long an Optuna trial (a FrozenTrial) ran, start to end; None while it runs."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def trial_estimate(spans: list[float | None], fallback: float | None = None) -> float | None:
    """The mean of the completed trials' durations in seconds; else `fallback` (the dry run's timing)."""
    known = [s for s in spans if s is not None]
    return sum(known) / len(known) if known else fallback


# ------------------------------------------------------------------ the record in the sweep directory
def read(sweep_dir: str | Path) -> dict[str, Any]:
    p = Path(sweep_dir) / BUDGET_FILE
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def start(sweep_dir: str | Path, total_s: float) -> Budget:
    """Begin an invocation under a budget: what earlier ones used is carried over."""
    rec = read(sweep_dir)
    used = float(rec.get("used_s") or 0.0)
    if rec.get("started"):  # the last invocation was killed before it could add its time
        used += max(0.0, float(rec.get("last_seen") or rec["started"]) - float(rec["started"]))
    b = Budget(total_s=total_s, used_before_s=used, started=time.time())
    files.write_json(Path(sweep_dir) / BUDGET_FILE, {"budget_s": total_s, "used_s": used, "started": b.started,
                                                     "last_seen": b.started, "stopped": None})
    return b


def drop(sweep_dir: str | Path) -> None:
    """A sweep resumed without a budget: it is no longer stopped by one, and none is shown."""
    rec = read(sweep_dir)
    if rec:
        rec.update({"budget_s": None, "stopped": None, "started": None})
        files.write_json(Path(sweep_dir) / BUDGET_FILE, rec)


def mark_stopped(sweep_dir: str | Path, planned: int | None) -> None:
    """A worker found that no further trial fits: the sweep stops for its budget."""
    rec = read(sweep_dir)
    rec.update({"stopped": "budget", "last_seen": time.time(), "planned": planned})
    files.write_json(Path(sweep_dir) / BUDGET_FILE, rec)


def touch(sweep_dir: str | Path) -> None:
    """Note that the invocation is still alive (after each trial), for a kill's sake."""
    rec = read(sweep_dir)
    if rec.get("started"):
        rec["last_seen"] = time.time()
        files.write_json(Path(sweep_dir) / BUDGET_FILE, rec)


def finish(sweep_dir: str | Path, b: Budget) -> dict[str, Any]:
    """End an invocation: its time is added to what the sweep used."""
    rec = read(sweep_dir)
    rec.update({"budget_s": b.total_s, "used_s": b.used_s(), "started": None, "last_seen": None})
    files.write_json(Path(sweep_dir) / BUDGET_FILE, rec)
    return rec


def used_now(rec: dict[str, Any]) -> float:
    used = float(rec.get("used_s") or 0.0)
    if rec.get("started"):
        used += max(0.0, time.time() - float(rec["started"]))
    return used


def line(sweep_dir: str | Path, finished: int, planned: int | None, trial_s: float | None) -> str | None:
    """What results.md, the report's header and --status say about the budget; None without one."""
    rec = read(sweep_dir)
    if not rec.get("budget_s"):
        return None
    total, used = float(rec["budget_s"]), used_now(rec)
    planned = planned if planned is not None else rec.get("planned")
    of = f" of {planned}" if planned is not None else ""
    if rec.get("stopped") == "budget":
        return f"stopped: budget ({fmt(used)} of {fmt(total)} used, {finished}{of} trials)"
    left = max(0.0, total - used)
    fit = f", ~{int(left // trial_s)} more trials expected to fit (~{fmt(trial_s)} each)" if trial_s else ""
    running = "" if rec.get("started") else " (not running)"
    return f"budget: {fmt(used)} of {fmt(total)} used{running}, {fmt(left)} left{fit}"
