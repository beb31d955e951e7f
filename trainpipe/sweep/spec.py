"""The sweep file: W&B's sweep schema (plus our `base` and `fixed`), parsed and checked.

`load_spec(path)` reads and checks the file's own structure (method, metric,
parameters: their distributions and ranges are `params.py`'s); `check_against_config(spec)` then resolves the config of
every candidate value through `trainpipe.config.load`, so that a parameter key that
is not a config key, or a value the config rejects, stops the sweep with exit 2
before any trial starts. Nothing here imports Optuna.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainpipe.errors import ConfigError, did_you_mean
from trainpipe.registry import SWEEP_METHODS
from trainpipe.sweep.names import METRIC_ALIASES, metric_key, param_key
from trainpipe.sweep.params import Param, Problems, parse_params

if TYPE_CHECKING:
    from trainpipe.sweep.methods import Search

# Keys of a W&B sweep file that only make sense for `wandb agent`; accepted so that
# existing files work unchanged.
IGNORED_KEYS = ("program", "command", "project", "entity", "description", "controller")
TOP_KEYS = ("method", "metric", "parameters", "run_cap", "early_terminate", "name", "base", "fixed", "test",
            "slurm", "budget", "seed", "confirm", *IGNORED_KEYS)  # slurm: read by `trainpipe sweep --slurm` (trainpipe.launch.slurm)
# `test: best` by default: the configuration is chosen on val and the test split is
# evaluated once, for the winner only (reporting every trial's test accuracy invites
# choosing on it); it also spares a test pass per trial.
TEST_MODES = ("best", "all", "none")
DEFAULT_TEST = "best"
DEFAULT_SAMPLER_SEED = 0
EPOCH_METRICS = ("val/acc", "val/loss", "val/top5", "train/acc", "train/loss")


@dataclass(frozen=True)
class Hyperband:
    """W&B's `early_terminate: {type: hyperband}`, in epochs (one report per epoch)."""

    min_iter: int = 1
    max_iter: int | None = None  # None: the base config's train.epochs
    eta: int = 3


@dataclass(frozen=True)
class Confirm:
    """The sweep file's `confirm:` block (what it does: `sweep.confirm`)."""

    top: int  # how many of the best configurations (by screening mean) are confirmed
    seeds: int  # how many runs each of them has in all, screening included


CONFIRM_KEYS = ("top", "seeds")


def parse_confirm(raw: Any, where: str) -> Confirm | None:
    if raw is None:
        return None
    example = "confirm: {top: 3, seeds: 5}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: confirm must be a mapping such as {example} (rerun the 3 best configurations "
                          f"until each has 5 seeds); got {raw!r}.")
    for k in raw:
        if k not in CONFIRM_KEYS:
            raise ConfigError(f"{where}: confirm.{k} is unknown{did_you_mean(str(k), CONFIRM_KEYS) or '.'} Valid keys: top "
                              f"(how many of the best configurations to confirm), seeds (how many runs each then "
                              f"has in all), e.g. {example}.")
    out = {}
    for k, low in (("top", 1), ("seeds", 2)):
        v = raw.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            what = "how many of the best configurations to confirm" if k == "top" else \
                "how many runs each confirmed configuration has in all, screening included"
            raise ConfigError(f"{where}: confirm.{k} is {v!r}; it must be a whole number >= {low} ({what}), e.g. "
                              f"{example}.")
        out[k] = v
    return Confirm(**out)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    method: str
    metric: str
    goal: str  # maximize | minimize
    params: tuple[Param, ...]
    base: str | None  # a config path (absolute) or a packaged config name; None = quickstart
    fixed: dict[str, Any] = field(default_factory=dict)
    run_cap: int | None = None
    hyperband: Hyperband | None = None
    source: str | None = None  # the sweep file it came from
    raw: dict[str, Any] = field(default_factory=dict)
    metric_name: str = ""  # as the sweep file writes it (val_accuracy); "" = metric
    test: str = DEFAULT_TEST  # all | best | none: which trials are evaluated on the test split
    overrides: dict[str, Any] = field(default_factory=dict)  # command-line key=value, applied to every trial
    ignored: tuple[str, ...] = ()  # keys only `wandb agent` reads (program, command, ...)
    # `budget: 2h`: the wall-clock seconds the sweep may spend (sweep.budget); None = no limit.
    # Not part of the fingerprint: resuming with a larger budget goes on.
    budget_s: float | None = None
    # `seed: 7` at the top: the random and bayes samplers' seed, so that the same file proposes the
    # same trials (each trial's seed for training is a parameter or the base config's `seed`).
    sampler_seed: int = DEFAULT_SAMPLER_SEED
    # `confirm: {top: 3, seeds: 5}`: rerun the best configurations with more seeds (`sweep.confirm`).
    # Not part of the fingerprint: adding it to a finished sweep goes on with the confirmation.
    confirm: Confirm | None = None

    @property
    def varied(self) -> list[Param]:
        return [p for p in self.params if p.varied]

    @property
    def metric_label(self) -> str:
        return self.metric_name or self.metric

    @property
    def seed_param(self) -> Param | None:
        """The varied parameter that sets the seed: trials differing only in it are one configuration."""
        return next((p for p in self.varied if p.key == "seed"), None)

    @property
    def config_params(self) -> list[Param]:
        """The varied parameters that make a configuration (all but the seed)."""
        return [p for p in self.varied if p.key != "seed"]

    @property
    def grouped(self) -> bool:
        """Whether results group trials into configurations (several seeds per configuration)."""
        return self.seed_param is not None or self.confirm is not None

    @property
    def seed_name(self) -> str:
        """The results' name for a trial's seed: the seed parameter's, else `seed`."""
        return self.seed_param.display if self.seed_param is not None else "seed"

    @property
    def direction(self) -> str:
        return self.goal

    def constant_overrides(self) -> dict[str, Any]:
        """What every trial sets besides its sampled values: monitor, `fixed`, constants.

        Each trial monitors the sweep metric, so that its best checkpoint, early stopping
        and summary refer to the number the sweep optimises. `fixed` comes after and may
        override that on purpose.
        """
        out: dict[str, Any] = {"train.monitor": self.metric,
                               "train.monitor_mode": "max" if self.goal == "maximize" else "min"}
        out.update(self.fixed)
        out.update({p.key: p.values[0] for p in self.params if not p.varied})
        out.update(self.overrides)
        return out

    def search(self) -> Search:
        """What the sweep's method makes of it: the sampler and, for grid, every point it visits."""
        return SWEEP_METHODS.build(self.method, self)

    def finite_space(self) -> list[dict[str, Any]] | None:
        """For random or bayes over categorical parameters only: every configuration, as
        {the sweep file's name: Optuna's stored value}, in file order; else None (grid lists
        its own points; a continuous range has no end). Such a sweep trains each once."""
        if self.search().points is not None or not self.varied \
                or any(p.distribution != "categorical" for p in self.varied):
            return None
        import itertools
        import math

        if math.prod(len(p.choices()) for p in self.varied) > 100_000:
            return None
        names = [p.display for p in self.varied]
        return [dict(zip(names, combo)) for combo in itertools.product(*(p.choices() for p in self.varied))]

    def space_size(self) -> int | None:
        """How many distinct configurations the method can visit; None when unbounded."""
        points = self.search().points
        if points is not None:
            return len(points)
        finite = self.finite_space()
        return None if finite is None else len(finite)

    def planned_trials(self) -> int | None:
        """How many trials make the sweep complete; None: until stopped."""
        size = self.space_size()
        caps = [c for c in (self.run_cap, size) if c is not None]
        return min(caps) if caps else None

    def fingerprint(self) -> str:
        """Identifies the search: a resumed or joined sweep must have the same one."""
        ident = {"method": self.method, "metric": self.metric, "goal": self.goal,
                 "params": {p.key: p.to_dict() for p in self.params}, "fixed": self.fixed,
                 "hyperband": None if self.hyperband is None else vars(self.hyperband),
                 "base": _base_identity(self.base)}
        if self.overrides:  # a smoke test with train.epochs=1 is not the real sweep
            ident["overrides"] = self.overrides
        blob = json.dumps(ident, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _base_identity(base: str | None) -> Any:
    # The base file's content, not its path: the same sweep may be started from
    # another checkout or machine.
    from trainpipe.config import read_yaml, resolve_config_path

    if base is None:
        return "quickstart"
    p = resolve_config_path(base)
    return read_yaml(p, what="base config") if p.is_file() else base


# ----------------------------------------------------------------------- parsing
def load_spec(path: str | Path, *, base: str | None = None, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read a sweep file. `base` replaces the file's own `base` (used when resuming);
    `overrides` ({dotted key: value}) are applied to every trial after `fixed`."""
    from trainpipe.config import read_yaml

    p = Path(path)
    data = read_yaml(p, what="sweep file")
    return parse_spec(data, source=p, base=base, overrides=overrides)


def parse_spec(data: Mapping[str, Any], *, source: str | Path | None = None, base: str | None = None,
               overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Check the structure of a sweep file's contents and build a `SweepSpec`.

    All problems are raised together as one ConfigError. (`check.load_checked_spec` adds
    the problems the config finds in the same message.)
    """
    spec, problems, _ = parse_with_problems(data, source=source, base=base, overrides=overrides)
    problems.raise_if_any()
    return spec


def parse_with_problems(data: Mapping[str, Any], *, source: str | Path | None = None, base: str | None = None,
                        overrides: Mapping[str, Any] | None = None) -> tuple[SweepSpec, Problems, bool]:
    """The spec (the parts that parsed), every problem found, and whether the base config was found."""
    where = f"sweep file {str(source)!r}" if source else "sweep"
    data = dict(data)
    problems = Problems(where)
    for k in data:
        if k not in TOP_KEYS:
            problems.add(f"unknown top-level key {k!r}{did_you_mean(k, TOP_KEYS) or '.'} "
                         f"Valid keys: {', '.join(TOP_KEYS)}.")
    method = data.get("method")
    if method is None:
        problems.add(f"method is missing. Set method to one of: {', '.join(SWEEP_METHODS.names())}.")
    elif problems.attempt(lambda: SWEEP_METHODS.get(str(method), key="method")) is None:
        method = None
    base_ok = True
    if base is not None:
        resolved_base = base
    else:
        resolved_base = problems.attempt(_resolve_base, data.get("base"), source, where, default=False)
        base_ok = resolved_base is not False
        resolved_base = resolved_base or None
    raw_metric = data.get("metric")
    metric_name = str(raw_metric["name"]) if isinstance(raw_metric, Mapping) and "name" in raw_metric else ""
    metric, goal = (problems.attempt(_parse_metric, data.get("metric"), where, resolved_base)
                    if base_ok or data.get("metric") is not None else None) or ("val/acc", "maximize")
    raw_params = data.get("parameters")
    params: list[Param] = []
    if not isinstance(raw_params, Mapping) or not raw_params:
        problems.add("parameters must be a non-empty mapping of config keys to "
                     "{values: [...]}, {value: x} or {min, max, distribution}.")
    else:
        params = parse_params(raw_params, prefix="", where=where, problems=problems)
    by_key: dict[str, str] = {}
    for prm in params:
        if prm.key in by_key:
            problems.add(f"parameters {by_key[prm.key]} and {prm.display} both set {prm.key}; keep one of them.")
        by_key.setdefault(prm.key, prm.display)
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        problems.add(f"fixed must be a mapping of dotted config keys to values, e.g. "
                     f"{{train.epochs: 10}}; got {type(fixed).__name__}.")
        fixed = {}
    fixed = {param_key(k, [v]): v for k, v in _flatten(fixed)}
    extra = {param_key(str(k), [v]): v for k, v in (overrides or {}).items()}
    for k in extra:
        if any(p.key == k and p.varied for p in params):
            problems.add(f"override {k}=...: {k} is a parameter the sweep varies ({by_key[k]}); leave it out "
                         f"of the command line, or change its values in the sweep file.")
    run_cap = data.get("run_cap")
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1):
        problems.add(f"run_cap must be a positive whole number; got {run_cap!r}.")
        run_cap = None
    hyperband = problems.attempt(_parse_early_terminate, data.get("early_terminate"), where)
    test = data.get("test", DEFAULT_TEST)
    if test not in TEST_MODES:
        problems.add(f"test is {test!r}{did_you_mean(str(test), TEST_MODES) or '.'} Set test to all (every trial "
                     f"ends with a test pass), best (only the best configuration, once the sweep has ended) or "
                     f"none.")
        test = DEFAULT_TEST
    budget_s = None
    if data.get("budget") is not None:
        from trainpipe.sweep.budget import parse_duration

        budget_s = problems.attempt(parse_duration, data["budget"], "budget")
    sampler_seed = data.get("seed", DEFAULT_SAMPLER_SEED)
    if isinstance(sampler_seed, bool) or not isinstance(sampler_seed, int) or sampler_seed < 0:
        problems.add(f"seed is {sampler_seed!r}; the top-level seed is the random and bayes samplers' seed, a whole "
                     f"number >= 0 (default {DEFAULT_SAMPLER_SEED}). To vary the training seed, make it a parameter: "
                     f"parameters: {{seed: {{values: [0, 1, 2]}}}}.")
        sampler_seed = DEFAULT_SAMPLER_SEED
    confirm = problems.attempt(parse_confirm, data.get("confirm"), where)
    name = data.get("name") or (Path(source).stem if source else "sweep")
    spec = SweepSpec(name=str(name), method=str(method or "random"), metric=metric, goal=goal,
                     params=tuple(params), base=resolved_base, fixed=fixed, run_cap=run_cap, hyperband=hyperband,
                     source=str(source) if source else None, raw=dict(data),
                     metric_name=metric_name, test=test,
                     overrides=extra, ignored=tuple(k for k in data if k in IGNORED_KEYS), budget_s=budget_s,
                     sampler_seed=sampler_seed, confirm=confirm)
    if method is not None:
        problems.attempt(spec.search)  # a method may refuse the parameters (grid over a continuous range)
    return spec, problems, base_ok


def _parse_metric(metric: Any, where: str, base: str | None) -> tuple[str, str]:
    if metric is None:  # W&B allows that for grid and random; use what the runs monitor
        from trainpipe import config as config_mod

        try:
            t = config_mod.load(base).train
        except ConfigError as e:
            raise ConfigError(f"{where}: the base config {base or 'quickstart'} does not validate: {e}") from None
        return t.monitor, "maximize" if t.monitor_mode == "max" else "minimize"
    if not isinstance(metric, Mapping) or "name" not in metric:
        raise ConfigError(f"{where}: metric must be a mapping with name and goal, e.g. "
                          f"{{name: val/acc, goal: maximize}}; got {metric!r}.")
    unknown = [k for k in metric if k not in ("name", "goal", "target")]
    if unknown:
        raise ConfigError(f"{where}: metric.{unknown[0]} is not a metric key; valid keys: name, goal.")
    given = str(metric["name"])
    name = metric_key(given)
    shown = given if name == given else f"{given} (trainpipe's {name})"
    if name.startswith("test/"):
        raise ConfigError(f"{where}: metric.name is {shown}: a sweep selects on a validation metric, "
                          f"never on the test set (that would leak it into the choice). Use e.g. "
                          f"{name.replace('test/', 'val/', 1)}; the test split is evaluated as the sweep's "
                          f"test: key says.")
    if name not in EPOCH_METRICS and not name.startswith(("val/", "train/")):
        known = [*EPOCH_METRICS, *(a for a, k in METRIC_ALIASES.items() if not k.startswith("test/"))]
        close = difflib.get_close_matches(given, known, n=1, cutoff=0.75) or \
            difflib.get_close_matches(given.replace("_", "/"), known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}{'' if metric_key(close[0]) == close[0] else f' ({metric_key(close[0])})'}?" \
            if close else "."
        raise ConfigError(f"{where}: metric.name {given!r} is not a metric trainpipe logs per epoch{hint} "
                          f"Valid names: {', '.join(EPOCH_METRICS)}, or W&B-style names such as val_accuracy, "
                          f"val_loss, train_loss, train_accuracy.")
    goal = metric.get("goal")
    if goal is None:
        # W&B minimises by default, which silently picks the worst run for an accuracy.
        if not name.endswith("loss"):
            raise ConfigError(f"{where}: metric.goal is missing for {name}; W&B's default would be "
                              f"minimize. Add goal: maximize (or goal: minimize).")
        goal = "minimize"
    if goal not in ("maximize", "minimize"):
        raise ConfigError(f"{where}: metric.goal must be maximize or minimize; got {goal!r}"
                          f"{did_you_mean(str(goal), ['maximize', 'minimize']) or '.'}")
    return name, goal


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """`fixed` may be nested ({train: {epochs: 5}}) or dotted ({train.epochs: 5})."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and all(isinstance(x, str) for x in v):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _parse_early_terminate(et: Any, where: str) -> Hyperband | None:
    if et is None:
        return None
    if not isinstance(et, Mapping) or et.get("type") != "hyperband":
        got = et.get("type") if isinstance(et, Mapping) else et
        raise ConfigError(f"{where}: early_terminate.type must be hyperband (the only one W&B defines); "
                          f"got {got!r}.")
    allowed = ("type", "min_iter", "max_iter", "eta", "s", "strict")
    for k in et:
        if k not in allowed:
            raise ConfigError(f"{where}: early_terminate.{k} is unknown{did_you_mean(k, allowed) or '.'} "
                              f"Valid keys: {', '.join(allowed)}.")
    ints = {}
    for k in ("min_iter", "max_iter", "eta", "s"):
        v = et.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (2 if k == "eta" else 1)):
            low = 2 if k == "eta" else 1
            raise ConfigError(f"{where}: early_terminate.{k} must be a whole number >= {low}; got {v!r}.")
        ints[k] = v
    eta = ints["eta"] or 3
    min_iter, max_iter = ints["min_iter"], ints["max_iter"]
    if min_iter is None and max_iter is not None and ints["s"] is not None:
        # W&B's (max_iter, s) form: s brackets below max_iter.
        min_iter = max(1, max_iter // eta ** ints["s"])
    min_iter = min_iter or 1
    if max_iter is not None and max_iter < min_iter:
        raise ConfigError(f"{where}: early_terminate: min_iter ({min_iter}) is greater than max_iter ({max_iter}).")
    return Hyperband(min_iter=min_iter, max_iter=max_iter, eta=eta)


def _resolve_base(base: Any, source: str | Path | None, where: str) -> str | None:
    """`base:` is relative to the sweep file; a bare name may be a packaged config."""
    from trainpipe.config import PACKAGED_CONFIGS, resolve_config_path

    if base is None:
        return None
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{where}: base must be the path of a config file; got {base!r}.")
    tried = []
    if source is not None and not Path(base).is_absolute():
        cand = (Path(source).resolve().parent / base)
        tried.append(str(cand))
        if cand.is_file():
            return str(cand)
    cand = resolve_config_path(base)
    if cand.is_file():
        return str(cand.resolve())
    tried.append(str(Path(base).resolve()))
    names = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"{where}: base config {base!r} not found (looked at {', '.join(tried)} and the "
                      f"packaged configs: {', '.join(names)}). The path is relative to the sweep file.")
