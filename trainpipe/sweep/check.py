"""Checking a sweep against the config before any trial starts.

Every candidate value of every parameter is resolved through `trainpipe.config.load`
(the same code a run uses), so an unknown key gets config.py's own did-you-mean and a
value the config rejects names the parameter, before anything is written.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from trainpipe.config import RunConfig
from trainpipe.errors import ConfigError
from trainpipe.sweep.spec import SweepSpec


def check_against_config(spec: SweepSpec) -> RunConfig:
    """Resolve the config of every candidate value; raise ConfigError on the first that fails.

    Each value is tried with every other parameter at its first candidate, and a grid
    is tried whole (every combination), so a trial can only fail at run time, never
    on its config. Returns the base config with `fixed` applied.
    """
    from trainpipe import config as config_mod

    where = f"sweep file {spec.source!r}" if spec.source else "sweep"
    base = spec.base
    try:
        base_data = config_mod.read_yaml(config_mod.resolve_config_path(base), what="base config") \
            if base is not None else config_mod.read_yaml(config_mod.PACKAGED_CONFIGS / "quickstart.yaml")
    except ConfigError as e:
        raise ConfigError(f"{where}: base: {e}") from None
    common = spec.constant_overrides()
    try:
        base_cfg = config_mod.load(base=base_data, overrides=common)
    except ConfigError as e:
        raise ConfigError(f"{where}: the base config {base or 'quickstart'} with `fixed` does not "
                          f"validate: {e}") from None
    check_metric(spec, where)
    leaves = _leaf_keys(base_cfg.to_dict())
    first = {p.key: p.candidates()[0] for p in spec.varied}

    def attempt(values: dict[str, Any], blame: str) -> None:
        try:
            config_mod.load(base=base_data, overrides={**common, **values})
        except ConfigError as e:
            key = blame.split(" = ", 1)[0]
            raise ConfigError(f"{where}: parameters.{blame}: {e}{_dotted_hint(key, leaves)}") from None

    for p in spec.varied:
        for v in p.candidates():
            attempt({**first, p.key: v}, f"{p.key} = {v!r}")
    if spec.method == "grid" and spec.grid_size() > 1:
        for combo in spec.grid():
            attempt(combo, ", ".join(f"{k} = {v!r}" for k, v in combo.items()))
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


def _leaf_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.extend(_leaf_keys(v, f"{prefix}{k}."))
        out.append(f"{prefix}{k}")
    return out


def _dotted_hint(key: str, leaves: list[str]) -> str:
    # W&B sweep files often use flat names (lr, batch_size) that their own script maps;
    # here a parameter is a dotted config key.
    if "." in key:
        return ""
    last = {k: k.rsplit(".", 1)[-1] for k in leaves}
    close = difflib.get_close_matches(key, set(last.values()), n=1, cutoff=0.75)
    same = [k for k, tail in last.items() if close and tail == close[0]]
    if same:
        return f" Sweep parameters are dotted config keys: did you mean {' or '.join(same[:3])}?"
    return ""
