"""What a config file says is what the run gets: every value it sets, found in the resolved config."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def leaves(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every value that is not a non-empty mapping."""
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _at(d: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d[part]
    return d


def _spec(given: Any) -> dict[str, Any]:
    """A component as a file may write it (`hflip`, {name: hflip, p: 1}, {cutout: {size: 8}})
    in the {name, **options} form a resolved config holds."""
    if isinstance(given, str):
        return {"name": given}
    if isinstance(given, Mapping) and "name" not in given and len(given) == 1:
        (name, options), = given.items()
        return {"name": name, **(options or {})}
    return dict(given)


def _components_kept(given: list[Any], resolved: list[Any]) -> bool:
    """A list of components (data.augment, a chain's schedulers) is completed on load with
    each one's defaults: each component the file names is there, in order, with every
    option the file sets."""
    if len(given) != len(resolved):
        return False
    return all(all(r.get(k) == v for k, v in _spec(g).items()) for g, r in zip(given, resolved))


def assert_keeps(data: Mapping[str, Any], resolved: Mapping[str, Any], where: str = "") -> None:
    """Every value of `data` (a config file or fragment, nested or with dotted keys) is the
    resolved config's value at that key."""
    for key, value in leaves(data):
        try:
            got = _at(resolved, key)
        except (KeyError, TypeError):
            raise AssertionError(f"{where}: {key} is set to {value!r} but the resolved config has no {key}") from None
        if isinstance(value, list) and got and all(isinstance(r, Mapping) and "name" in r for r in got):
            assert _components_kept(value, got), f"{where}: {key} {value!r} resolved to {got!r}"
        else:
            assert got == value, f"{where}: {key} is {value!r} in the file but {got!r} in the resolved config"
