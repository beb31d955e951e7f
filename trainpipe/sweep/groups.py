"""Configurations: the trials of a sweep that differ only in their seed, taken together.

A sweep with `seed: {values: [0, 1, 2]}` runs each configuration once per seed; one
lucky seed says little, so configurations are ranked by the mean of their completed
trials and shown as mean ± std with n (airbench reports its accuracy that way). A
sweep without a seed parameter has one trial per configuration.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from trainpipe.sweep.spec import SweepSpec


@dataclass
class ConfigGroup:
    shown: dict[str, Any]  # the configuration's parameters (not the seed), as results show them
    rows: list[Any] = field(default_factory=list)  # its TrialRows, best first
    rank: int | None = None  # 1 = best mean; None while none of its trials has completed

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.rows if r.state == "completed" and _finite(r.value)]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation over seeds; None with fewer than two."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def test_values(self) -> list[float]:
        return [r.test_acc for r in self.rows if r.state == "completed" and _finite(r.test_acc)]

    @property
    def label(self) -> str:
        return f"#{self.rank}" if self.rank is not None else "-"

    @property
    def trials(self) -> str:
        return ", ".join(r.name for r in sorted(self.rows, key=lambda r: r.number))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def group_key(shown: dict[str, Any], spec: SweepSpec) -> tuple:
    return tuple(repr(shown.get(p.display)) for p in spec.config_params)


def config_groups(rows: list[Any], spec: SweepSpec) -> list[ConfigGroup]:
    """The configurations of `rows` (TrialRows), best mean first; those without a completed trial last."""
    groups: dict[tuple, ConfigGroup] = {}
    for r in rows:
        shown = {p.display: r.shown[p.display] for p in spec.config_params if p.display in r.shown}
        groups.setdefault(group_key(r.shown, spec), ConfigGroup(shown)).rows.append(r)
    sign = -1.0 if spec.goal == "maximize" else 1.0
    scored = sorted((g for g in groups.values() if g.mean is not None),
                    key=lambda g: (sign * g.mean, min(r.number for r in g.rows)))
    rest = sorted((g for g in groups.values() if g.mean is None), key=lambda g: min(r.number for r in g.rows))
    for i, g in enumerate(scored):
        g.rank = i + 1
    return scored + rest


def mean_std(values: list[float], fmt: Any = lambda v: f"{v:.4g}") -> str:
    """`0.9712 ± 0.0031 (n=3)`; a single value has no spread to show."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{fmt(values[0])} (n=1)"
    return f"{fmt(statistics.fmean(values))} ± {fmt(statistics.stdev(values))} (n={len(values)})"
