"""Checking a sweep against the config before any trial starts.

Every candidate value of every parameter is resolved through `trainpipe.config.load`
(the same code a run uses), so an unknown key gets config.py's own did-you-mean and a
value the config rejects names the parameter, before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainpipe.config import RunConfig
from trainpipe.errors import ConfigError
from trainpipe.sweep.names import TOP_LEVEL_KEYS, full_key_hint
from trainpipe.sweep.spec import SweepSpec, parse_with_problems


def load_checked_spec(path: str | Path, *, base: str | None = None,
                      overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """`load_spec`, with the problems of the file's structure and those the config finds
    (unknown keys, rejected values) in one message, so that a file is fixed in one go."""
    from trainpipe.config import read_yaml

    p = Path(path)
    spec, problems, base_ok = parse_with_problems(read_yaml(p, what="sweep file"), source=p, base=base,
                                                  overrides=overrides)
    if problems.items and base_ok:
        for msg in config_problems(spec, problems.where):
            problems.add(msg)
    problems.raise_if_any()
    return spec


def check_against_config(spec: SweepSpec) -> RunConfig:
    """Resolve the config of every candidate value; raise one ConfigError naming every problem.

    Each value is tried with every other parameter at its first candidate, and a method
    that visits a fixed list of points (grid) has each of them tried, so a trial can only fail at run time, never
    on its config. Returns the base config with `fixed` applied.
    """
    where = f"sweep file {spec.source!r}" if spec.source else "sweep"
    problems: list[str] = []
    base_cfg = _check(spec, where, problems)
    try:
        check_metric(spec, where)
    except ConfigError as e:
        problems.append(str(e).removeprefix(f"{where}: "))
    if problems:
        if len(problems) == 1:
            raise ConfigError(f"{where}: {problems[0]}")
        raise ConfigError(f"{where}: {len(problems)} problems: "
                          + " ".join(f"({i + 1}) {m}" for i, m in enumerate(problems)))
    assert base_cfg is not None
    return base_cfg


def config_problems(spec: SweepSpec, where: str) -> list[str]:
    """What `check_against_config` would report, as a list (used while parsing a file that
    has other problems too, so that one message names them all)."""
    problems: list[str] = []
    _check(spec, where, problems)
    return problems


def _check(spec: SweepSpec, where: str, problems: list[str]) -> RunConfig | None:
    from trainpipe import config as config_mod

    base = spec.base
    try:
        base_data = config_mod.read_yaml(config_mod.resolve_config_path(base), what="base config") \
            if base is not None else config_mod.read_yaml(config_mod.PACKAGED_CONFIGS / "quickstart.yaml")
    except ConfigError as e:
        problems.append(f"base: {e}")
        return None
    common = spec.constant_overrides()
    try:
        leaves = _leaf_keys(config_mod.load(base=base_data).to_dict())
    except ConfigError:
        leaves = []  # the base itself is reported below
    unknown = {k for k in common if _is_unknown_flat(k)}
    for k in sorted(unknown):
        problems.append(f"{_origin(spec, k)}: {k!r} is not a config key{full_key_hint(k, leaves) or '.'} "
                        f"Use a dotted config key (optim.lr, data.batch_size, train.epochs) or a W&B-style "
                        f"name trainpipe knows (lr, batch_size, epochs, ...).")
    try:
        base_cfg = config_mod.load(base=base_data, overrides={k: v for k, v in common.items() if k not in unknown})
    except ConfigError as e:
        problems.append(f"the base config {base or 'quickstart'} with `fixed` and the command line's overrides "
                        f"does not validate: {e}")
        return None
    first = {p.key: p.candidates()[0] for p in spec.varied}
    bad: set[str] = set()

    def attempt(values: dict[str, Any], blame: str) -> bool:
        try:
            config_mod.load(base=base_data, overrides={**common, **values})
        except ConfigError as e:
            problems.append(f"parameters.{blame}: {e}")
            return False
        return True

    for p in spec.varied:
        if _is_unknown_flat(p.key):
            problems.append(f"parameters.{p.display}: {p.key!r} is not a config key"
                            f"{full_key_hint(p.key, leaves) or '.'} Parameters are dotted config keys "
                            f"(optim.lr, data.batch_size, train.epochs) or W&B-style names trainpipe knows "
                            f"(lr, learning_rate, batch_size, epochs, optimizer, ...).")
            bad.add(p.key)
            continue
        for v in p.candidates():
            others = {k: v0 for k, v0 in first.items() if k not in bad and not _is_unknown_flat(k)}
            if not attempt({**others, p.key: v}, f"{p.display} = {p.label_of(v)!r}"):
                bad.add(p.key)
                break
    try:
        points = spec.search().points
    except ConfigError:
        points = None  # the method refuses these parameters; the sweep file's check said why
    if not bad and points is not None and len(points) > 1:
        by_key = {p.key: p for p in spec.varied}
        for combo in points:
            if not attempt(combo, ", ".join(f"{by_key[k].display} = {by_key[k].label_of(v)!r}"
                                            for k, v in combo.items())):
                break
    return base_cfg


# What every trial logs per epoch (the trainer's metrics; val/* when the run has a validation
# split, val/top5 with more than 5 classes).
LOGGED_PER_EPOCH = ("val/acc", "val/loss", "val/top5", "train/acc", "train/loss", "lr")


def check_metric(spec: SweepSpec, where: str) -> None:
    """Refuse a sweep metric that no trial logs: otherwise every trial runs to its end and is
    then marked failed for want of the metric."""
    if spec.metric in LOGGED_PER_EPOCH:
        return
    from trainpipe.errors import did_you_mean

    raise ConfigError(f"{where}: metric.name {spec.metric!r} is not logged by any trial"
                      f"{did_you_mean(spec.metric, LOGGED_PER_EPOCH) or '.'} A trial logs, per epoch: "
                      f"{', '.join(LOGGED_PER_EPOCH)}.")


def _is_unknown_flat(key: str) -> bool:
    return "." not in key and key not in TOP_LEVEL_KEYS


def _origin(spec: SweepSpec, key: str) -> str:
    return "command line" if key in spec.overrides else "fixed"


def _leaf_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.extend(_leaf_keys(v, f"{prefix}{k}."))
        out.append(f"{prefix}{k}")
    return out

