"""Constrained option types for the keyword-only parameters of registered components.

A component's signature is its schema (see `trainpipe.registry`): annotating an option
with one of these types makes `trainpipe.config.load` check its range together with
every other value, so a bad `sched.gamma` or `data.augment[0].p` is refused before any
data is read, and the component's body never checks it again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

__all__ = [
    "AtLeastOne", "ComponentList", "ComponentName", "Dropout", "Fraction", "Milestones", "NonNegativeFloat", "NonNegativeInt", "OpenFraction",
    "OrderedPair", "PositiveFloat", "PositiveInt", "Probability",
]

Probability = Annotated[float, Field(ge=0.0, le=1.0, description="a probability in [0, 1]")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, description="a fraction in [0, 1]")]
OpenFraction = Annotated[float, Field(gt=0.0, lt=1.0, description="a fraction in (0, 1)")]
AtLeastOne = Annotated[float, Field(ge=1.0)]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0, description="a dropout rate in [0, 1)")]


def _increasing_epochs(v: list[int]) -> list[int]:
    if any(m < 1 for m in v) or any(b <= a for a, b in zip(v, v[1:])):
        raise ValueError("milestones must be increasing epochs >= 1")
    return v


def _ordered(v: Sequence[float]) -> tuple[float, float]:
    lo, hi = float(v[0]), float(v[1])
    if lo > hi:
        raise ValueError("must be (min, max) with min <= max")
    return lo, hi


Milestones = Annotated[list[int], AfterValidator(_increasing_epochs)]
OrderedPair = Annotated[tuple[float, float], AfterValidator(_ordered)]


# ------------------------------------------------ components that hold components
@dataclass(frozen=True)
class ComponentName:
    """Marks an option that names a component of another family, e.g. SAM's `base` optimizer:

        base: Annotated[str, ComponentName("optimizer", options="base_options")] = "sgd"

    `trainpipe.config.load` looks the name up in that family (its unknown-name message; a
    component cannot name itself) and checks the mapping in the sibling option `options`
    against the named component's signature, completed with its defaults.
    """

    family: str
    options: str | None = None


@dataclass(frozen=True)
class ComponentList:
    """Marks an option that lists components of another family, each `{name, **options}`,
    e.g. a chain's schedulers:

        schedulers: Annotated[list[dict[str, Any]], ComponentList("scheduler", ...)]

    `trainpipe.config.load` checks each member against its component's signature (a member
    may also carry `member_keys`, e.g. start_epoch), then calls `check(members, cfg)`, when
    given, for what concerns the list as a whole (the chain's hand-off epochs).
    """

    family: str
    member_keys: tuple[str, ...] = ()
    check: Callable[[list[dict[str, Any]], Any], None] | None = None
