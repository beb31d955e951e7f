"""A sweep parameter: its W&B distribution, parsed and checked, the values it stands for,
and how Optuna samples it.

`Param` is one swept config key and where its values come from; `DISTRIBUTIONS` holds one
`Distribution` entry per W&B distribution (same names and meanings): the shape of its
block, its own range check, the values that stand for its range, and its sampler, so a
new distribution is one entry here. `parse_params` reads a sweep file's `parameters:`
block (nested blocks included), every problem collected in a `Problems`. `space.py` turns
a whole trial into overrides; the rest of the sweep file is in `spec.py`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from trainpipe.errors import ConfigError, did_you_mean
from trainpipe.sweep.names import make_labels, needs_labels, param_key

PARAM_KEYS = ("value", "values", "distribution", "min", "max", "q", "mu", "sigma", "parameters")


@dataclass(frozen=True)
class Param:
    """One swept config key and the distribution its values come from."""

    key: str  # dotted config key, e.g. optim.lr
    distribution: str
    values: tuple[Any, ...] = ()  # constant: (value,); categorical: the choices
    low: float | None = None
    high: float | None = None
    q: float | None = None
    mu: float = 0.0
    sigma: float = 1.0
    name: str = ""  # as the sweep file writes it (learning_rate); "" = the key
    labels: tuple[str, ...] = ()  # categorical lists/dicts: one label per value, Optuna's choices

    @property
    def varied(self) -> bool:
        return self.distribution != "constant"

    @property
    def display(self) -> str:
        """The name results, reports and the Optuna study use: the sweep file's own."""
        return self.name or self.key

    def label_of(self, value: Any) -> Any:
        """The label of one of this parameter's values, or the value itself when it has none."""
        if self.labels:
            for v, lab in zip(self.values, self.labels):
                if v == value:
                    return lab
        return value

    def quantize(self, x: float) -> float | int:
        """W&B's q_* distributions: round(x / q) * q; integral when q is an integer."""
        if self.q is None:
            return x
        v = round(x / self.q) * self.q
        return int(round(v)) if float(self.q).is_integer() else v

    @property
    def entry(self) -> Distribution:
        return DISTRIBUTIONS[self.distribution]

    def grid_values(self) -> list[Any] | None:
        """Every value a grid visits, or None when the distribution is continuous."""
        return self.entry.grid(self) if self.entry.grid is not None else None

    def candidates(self) -> list[Any]:
        """Values that stand for the whole range when checking the config accepts them."""
        grid = self.grid_values()
        return grid if grid is not None else self.entry.candidates(self)

    def sample(self, trial: Any) -> Any:
        """This parameter's value in `trial` (an Optuna Trial or FixedTrial)."""
        return self.entry.sample(trial, self)

    def choices(self) -> list[Any]:
        """What Optuna stores for a categorical: the values, or their labels for lists/dicts."""
        return list(self.labels) if self.labels else list(self.values)

    def from_stored(self, stored: Any) -> Any:
        """The value behind a stored categorical choice (its label, for lists and dicts)."""
        return self.values[self.labels.index(stored)] if self.labels else stored

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"distribution": self.distribution}
        if self.values:
            d["values"] = list(self.values)
        if self.labels:
            d["labels"] = list(self.labels)
        if self.name and self.name != self.key:
            d["name"] = self.name
        for k in ("low", "high", "q"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.entry.shape == "normal":
            d.update(mu=self.mu, sigma=self.sigma)
        return d


# ----------------------------------------------------------------- distributions
@dataclass(frozen=True)
class Distribution:
    """One W&B distribution, everything about it in one entry.

    `shape` says which keys its block takes: constant (value), categorical (values),
    range (min, max; q for q_*), normal (mu, sigma; q for q_*). `check` is its own range
    check beyond the shape's (the problem, or None); `grid` lists every value of a
    discrete one; `candidates` the values that stand for a continuous range; `sample` is
    how Optuna draws it, returning the value the config receives.
    """

    shape: str
    sample: Callable[[Any, Param], Any]  # (Optuna Trial or FixedTrial, param) -> value
    check: Callable[[Param], str | None] = lambda p: None
    grid: Callable[[Param], list[Any]] | None = None
    candidates: Callable[[Param], list[Any]] = lambda p: [p.quantize(p.low), p.quantize(p.high)]


# Optuna has no normal or quantised-log distributions and stores only plain values (None,
# bool, int, float, str) as choices, so some parameters are sampled in another form and
# transformed by their sampler: the config always receives the W&B value. Normal ones are
# sampled as a quantile u in (EPS, 1 - EPS) mapped through the inverse CDF: exact for random
# search, and monotone, so TPE models it as well.
EPS = 1e-6


def _normal(log: bool) -> Distribution:
    def value(p: Param, x: float) -> Any:
        return p.quantize(math.exp(x) if log else x)

    def sample(trial: Any, p: Param) -> Any:
        return value(p, NormalDist(p.mu, p.sigma).inv_cdf(trial.suggest_float(p.display, EPS, 1 - EPS)))

    return Distribution("normal", sample, candidates=lambda p: [value(p, p.mu + k * p.sigma) for k in (-3, 0, 3)])


def _uniform(trial: Any, p: Param) -> Any:
    return p.quantize(trial.suggest_float(p.display, p.low, p.high))


def _log_uniform_values(trial: Any, p: Param) -> Any:
    return p.quantize(trial.suggest_float(p.display, p.low, p.high, log=True))


def _positive_min(p: Param) -> str | None:
    if p.low <= 0:
        return (f"{p.distribution} needs min > 0 (values are sampled on a log scale); got min {p.low}. For "
                f"exponents of e use distribution log_uniform.")
    return None


def _q_grid(p: Param) -> list[Any]:
    start, stop = math.ceil(p.low / p.q - 1e-9), math.floor(p.high / p.q + 1e-9)
    return [p.quantize(k * p.q) for k in range(start, stop + 1)]


def _e_power(trial: Any, p: Param) -> Any:  # min and max are exponents of e
    return p.quantize(trial.suggest_float(p.display, math.exp(p.low), math.exp(p.high), log=True))


_E_POWERS = Distribution("range", _e_power, candidates=lambda p: [p.quantize(math.exp(p.low)),
                                                                  p.quantize(math.exp(p.high))])

# W&B's distributions (https://docs.wandb.ai/guides/sweeps/sweep-config-keys), same names and meanings.
DISTRIBUTIONS: dict[str, Distribution] = {
    "constant": Distribution("constant", lambda trial, p: p.values[0], grid=lambda p: list(p.values)),
    "categorical": Distribution("categorical", lambda trial, p: p.from_stored(
        trial.suggest_categorical(p.display, p.choices())), grid=lambda p: list(p.values)),
    "int_uniform": Distribution(
        "range", lambda trial, p: trial.suggest_int(p.display, int(p.low), int(p.high)),
        check=lambda p: None if float(p.low).is_integer() and float(p.high).is_integer() else
        f"int_uniform needs whole-number min and max; got {p.low} and {p.high}.",
        grid=lambda p: list(range(int(p.low), int(p.high) + 1))),
    "uniform": Distribution("range", _uniform),
    "q_uniform": Distribution("range", _uniform, grid=_q_grid),
    "log_uniform": _E_POWERS,
    "q_log_uniform": _E_POWERS,
    "log_uniform_values": Distribution("range", _log_uniform_values, check=_positive_min),
    "q_log_uniform_values": Distribution("range", _log_uniform_values, check=_positive_min),
    "inv_log_uniform": Distribution(  # log(1/x) is uniform in [min, max]
        "range", lambda trial, p: trial.suggest_float(p.display, math.exp(-p.high), math.exp(-p.low), log=True),
        candidates=lambda p: [math.exp(-p.high), math.exp(-p.low)]),
    "inv_log_uniform_values": Distribution("range", _log_uniform_values, check=_positive_min),
    "normal": _normal(log=False),
    "q_normal": _normal(log=False),
    "log_normal": _normal(log=True),
    "q_log_normal": _normal(log=True),
}


class Problems:
    """Every problem of a sweep file, reported together in one message."""

    def __init__(self, where: str) -> None:
        self.where, self.items = where, []  # type: ignore[var-annotated]

    def add(self, msg: str) -> None:
        prefix = f"{self.where}: "
        self.items.append(msg[len(prefix):] if msg.startswith(prefix) else msg)

    def attempt(self, fn: Any, *args: Any, default: Any = None) -> Any:
        try:
            return fn(*args)
        except ConfigError as e:
            self.add(str(e))
            return default

    def raise_if_any(self) -> None:
        if len(self.items) == 1:
            raise ConfigError(f"{self.where}: {self.items[0]}")
        if self.items:
            raise ConfigError(f"{self.where}: {len(self.items)} problems: "
                              + " ".join(f"({i + 1}) {m}" for i, m in enumerate(self.items)))


def parse_params(block: Mapping[str, Any], *, prefix: str, where: str, problems: Problems) -> list[Param]:
    out: list[Param] = []
    for name, body in block.items():
        key = f"{prefix}{name}"
        if not isinstance(body, Mapping):
            problems.add(
                f"parameters.{key} must be a mapping such as {{values: [...]}}, {{value: x}} or "
                f"{{min: a, max: b}}; got {body!r}. For a list of choices write values: {body!r}.")
            continue
        if "parameters" in body:
            extra = [k for k in body if k != "parameters"]
            if extra or not isinstance(body["parameters"], Mapping):
                problems.add(f"parameters.{key}: a nested block holds only parameters: {{...}}.")
                continue
            out.extend(parse_params(body["parameters"], prefix=key + ".", where=where, problems=problems))
            continue
        prm = problems.attempt(_parse_param, key, dict(body), where)
        if prm is not None:
            out.append(prm)
    return out


def file_params(raw: Mapping[str, Any]) -> list[Param]:
    """The parameters of a sweep file's contents, read without its base config (reports use
    them to name and label a copied sweep's trials); parameters that do not parse are left out."""
    block = raw.get("parameters") if isinstance(raw, Mapping) else None
    if not isinstance(block, Mapping):
        return []
    return parse_params(block, prefix="", where="sweep", problems=Problems("sweep"))


def _number(key: str, field_name: str, v: Any, where: str) -> float:
    # PyYAML reads 1e-3 (no dot) as a string; W&B files are full of those.
    if isinstance(v, bool):
        v = None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: parameters.{key}.{field_name} must be a number; got {v!r}.") from None
    if not math.isfinite(x):
        raise ConfigError(f"{where}: parameters.{key}.{field_name} must be finite; got {v!r}.")
    return int(x) if isinstance(v, int) else x


def _parse_param(key: str, body: dict[str, Any], where: str) -> Param:
    for k in body:
        if k not in PARAM_KEYS:
            hint = " (W&B's categorical probabilities are not supported)" if k == "probabilities" else ""
            raise ConfigError(f"{where}: parameters.{key}: unknown key {k!r}{hint}"
                              f"{did_you_mean(k, PARAM_KEYS) or '.'} Valid keys: {', '.join(PARAM_KEYS[:-1])}.")
    dist = body.get("distribution")
    if dist is None:  # W&B's inference rules
        if "values" in body:
            dist = "categorical"
        elif "value" in body:
            dist = "constant"
        elif "min" in body and "max" in body:
            both_int = all(isinstance(body[k], int) and not isinstance(body[k], bool) for k in ("min", "max"))
            dist = "int_uniform" if both_int else "uniform"
        else:
            raise ConfigError(f"{where}: parameters.{key} needs values: [...], value: x, or min and max "
                              f"(with an optional distribution).")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: parameters.{key}.distribution {dist!r} is unknown"
                          f"{did_you_mean(str(dist), DISTRIBUTIONS) or '.'} Valid: {', '.join(DISTRIBUTIONS)}.")
    shape = DISTRIBUTIONS[dist].shape
    if shape == "constant":
        if "value" not in body:
            raise ConfigError(f"{where}: parameters.{key}: distribution constant needs value: x.")
        return Param(param_key(key, [body["value"]]), dist, (body["value"],), name=key)
    if shape == "categorical":
        values = body.get("values")
        labels: tuple[str, ...] = ()
        if isinstance(values, Mapping) and values:  # {label: value}: the user names each value
            labels, values = tuple(str(k) for k in values), list(values.values())
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: parameters.{key}.values must be a non-empty list (or a mapping "
                              f"{{label: value}}); got {values!r}.")
        seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(seen)) != len(seen):
            raise ConfigError(f"{where}: parameters.{key}.values lists the same value twice: {values!r}.")
        if not labels and needs_labels(values):
            labels = make_labels(values)
        return Param(param_key(key, values), dist, tuple(values), name=key, labels=labels)
    q = _number(key, "q", body.get("q", 1), where) if dist.startswith("q_") else None
    if q is not None and q <= 0:
        raise ConfigError(f"{where}: parameters.{key}.q must be positive; got {q!r}.")
    if shape == "normal":
        mu = _number(key, "mu", body.get("mu", 0.0), where)
        sigma = _number(key, "sigma", body.get("sigma", 1.0), where)
        if sigma <= 0:
            raise ConfigError(f"{where}: parameters.{key}.sigma must be positive; got {sigma!r}.")
        return _checked(Param(param_key(key), dist, q=q, mu=mu, sigma=sigma, name=key), where)
    for k in ("min", "max"):
        if k not in body:
            raise ConfigError(f"{where}: parameters.{key}: distribution {dist} needs min and max.")
    lo, hi = _number(key, "min", body["min"], where), _number(key, "max", body["max"], where)
    if lo > hi:
        raise ConfigError(f"{where}: parameters.{key}: min ({lo}) is greater than max ({hi}); swap them.")
    return _checked(Param(param_key(key), dist, low=lo, high=hi, q=q, name=key), where)


def _checked(p: Param, where: str) -> Param:
    problem = p.entry.check(p)
    if problem is not None:
        raise ConfigError(f"{where}: parameters.{p.name}: {problem}")
    return p
