"""Reading run directories and comparing their configs.

A run directory holds config.yaml (the resolved config), metrics.jsonl (one line per
epoch) and summary.json; a report reads only those files, so it works on runs copied
from another machine, and on runs that crashed halfway.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainpipe.errors import ConfigError
from trainpipe.run import rundir

MISSING = "—"  # shown where a run has no value for a key


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""

    @property
    def monitor(self) -> str:
        return str(self.config.get("train", {}).get("monitor", "val/acc"))

    @property
    def monitor_mode(self) -> str:
        return str(self.config.get("train", {}).get("monitor_mode", "max"))

    @property
    def best(self) -> float | None:
        return as_float(self.summary.get(f"best/{self.monitor}"))


def is_run_dir(path: Path) -> bool:
    return (path / rundir.SUMMARY).is_file()


def load_run(path: str | Path) -> Run:
    """Read a run directory; ConfigError when it is not one."""
    p = Path(path)
    if not is_run_dir(p):
        raise ConfigError(
            f"report: {p} is not a run directory (it has no summary.json). Pass the directory that "
            f"`trainpipe train` wrote (runs/<name>-<time>/), or a sweep directory (with trials/)."
        )
    try:
        summary = rundir.read_summary(p, strict=True)
    except ConfigError as e:
        raise ConfigError(f"report: {e}") from None
    # A run whose process is gone reads as interrupted, not as running forever.
    summary["status"] = rundir.status(p, summary)
    history = [{k: as_float(v) if isinstance(v, str) else v for k, v in row.items()} for row in rundir.read_metrics(p)]
    return Run(p, rundir.read_config(p), summary, history, label=p.name)


def unique_labels(runs: list[Run]) -> None:
    """Label each run by its directory name, adding parent folders until the labels differ."""
    depth = 1
    while True:
        labels = ["/".join(r.path.resolve().parts[-depth:]) for r in runs]
        if len(set(labels)) == len(labels) or depth > 6:
            break
        depth += 1
    for r, lab in zip(runs, labels):
        r.label = lab


def as_float(v: Any) -> float | None:
    """Numbers (and the 'nan'/'inf' strings metrics.jsonl writes) as float; anything else None."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------- config diffs
def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; lists stay values."""
    if not isinstance(d, dict) or (prefix and not d):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def defaults_for(config: dict[str, Any]) -> dict[str, Any]:
    """The default config for the same components (dataset, model, optimizer, scheduler).

    Component options default per component (momentum belongs to sgd, betas to
    adam), so a run is compared with what those components give when nothing is set.
    Options without a default (a timm model's `arch`) are taken from the run itself.
    """
    from trainpipe import config as config_mod

    base: dict[str, Any] = {}
    for section in config_mod.COMPONENT_SECTIONS:
        cls = config_mod.RunConfig.model_fields[section].annotation
        name_field = cls.name_field
        given = config.get(section) or {}
        if name_field not in given:
            continue
        sec = {name_field: given[name_field]}
        entry = cls.registry.find(str(given[name_field]))
        if entry is not None:
            for opt, param in entry.options().items():
                if param.default is param.empty and opt in given:
                    sec[opt] = given[opt]
        base[section] = sec
    try:
        return config_mod.validate(base).to_dict()
    except ConfigError:
        return config_mod.RunConfig().to_dict()


def differs_from_defaults(config: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, value, default) for each key whose value is not the default."""
    from trainpipe.config import COMPONENT_SECTIONS, RunConfig

    if not config:
        return []
    run, default = flatten(config), flatten(defaults_for(config))
    plain = RunConfig()
    for section in COMPONENT_SECTIONS:  # the component itself is compared with the global default
        sec = getattr(plain, section)
        default[f"{section}.{sec.name_field}"] = sec.component()
    out = []
    for key, value in run.items():
        d = default.get(key, MISSING)
        if not same(value, d):
            out.append((key, value, d))
    return out


def differing_keys(configs: list[dict[str, Any]], *, ignore: tuple[str, ...] = ("name",)) -> list[str]:
    """Dotted keys whose value is not the same in every config (in first-seen order)."""
    flats = [flatten(c) for c in configs]
    keys: list[str] = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    return [k for k in keys if k not in ignore
            and any(not same(f.get(k, MISSING), flats[0].get(k, MISSING)) for f in flats[1:])]


def same(a: Any, b: Any) -> bool:
    fa, fb = as_float(a), as_float(b)
    if fa is not None and fb is not None and not isinstance(a, str) and not isinstance(b, str):
        return fa == fb or (math.isnan(fa) and math.isnan(fb))
    return a == b


# ------------------------------------------------------------------ formatting
def fmt_value(v: Any) -> str:
    if v is MISSING or v is None:
        return MISSING if v is MISSING else "null"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(", ", ": "))
    return str(v)


def fmt_metric(key: str, v: Any) -> str:
    """Accuracies as percentages, losses with 4 decimals, times in s/min/h."""
    f = as_float(v)
    if f is None:
        return MISSING if v is None else str(v)
    if math.isnan(f) or math.isinf(f):
        return str(f)
    name = key.rsplit("/", 1)[-1]
    if name in ("acc", "top5") or name.endswith("_acc"):
        return f"{100 * f:.2f}%"
    if key.endswith("_s") or key.endswith("time"):
        return fmt_seconds(f)
    if name == "lr":
        return f"{f:.3g}"
    if f == int(f) and abs(f) < 1e12:
        return f"{int(f):,}"
    return f"{f:.4f}"


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def mean_spread(key: str, values: list[Any]) -> str:
    """The mean ± sample standard deviation of the numbers in `values`, written the way
    `fmt_metric` writes `key` (accuracies `97.12 ± 0.31%`); one number as `fmt_metric` does."""
    from trainpipe.sweep.ranking import mean_spread as spread

    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) == 1:
        return fmt_metric(key, nums[0])
    if key.endswith(("acc", "top5")):
        return spread(nums, lambda v: f"{100 * v:.2f}", unit="%", n=False, empty=MISSING)
    return spread(nums, fmt_seconds if key.endswith("_s") else (lambda v: f"{v:.4f}"), n=False, empty=MISSING)
