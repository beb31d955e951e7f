"""One small registry class for every component family.

A component is a plain function registered under a name. Its positional-only
parameters are *context* the framework passes (the data spec, the parameters to
optimise, ...); its keyword-only parameters are the options a config may set.
That single rule lets `trainpipe.config` validate a section against the function's
signature and `trainpipe list` describe every entry without extra metadata.

    MODELS = Registry("model", module="trainpipe.models")

    @MODELS.register("mlp")
    def mlp(spec: DataSpec, /, *, widths: list[int] = [256, 128]) -> nn.Module:
        "A fully connected net."
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from trainpipe.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable[..., Any]
    description: str
    # What the entry declares about itself beyond its options, read by the code that uses
    # the family (an optimizer's `step="closure"`: it re-evaluates the loss inside step()).
    traits: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    def options(self) -> dict[str, inspect.Parameter]:
        """The keyword-only parameters: what a config may set for this entry."""
        sig = inspect.signature(self.fn)
        return {n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def accepts_any_option(self) -> bool:
        """True when the function takes **kwargs (options checked by the callee)."""
        sig = inspect.signature(self.fn)
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


class Registry:
    """Name -> builder function, for one family of components.

    Every family is filled the same way: its package (`module`) and every module in it
    are imported the first time a name is looked up, and each entry registers itself with
    `@REGISTRY.register("name")`. A family that also accepts names it does not list (any
    torchvision transform, any timm optimizer) registers one resolver for them with
    `@REGISTRY.register_fallback(...)`. Adding a component is one new module or function.
    """

    def __init__(self, family: str, *, module: str | None = None) -> None:
        self.family = family
        self._module = module
        self._entries: dict[str, Entry] = {}
        self._loaded = module is None
        self._fallback: Callable[[str], Entry | None] | None = None
        self._fallback_names: Callable[[], Iterable[str]] = lambda: ()
        self._fallback_hint = ""

    def register(self, name: str, description: str | None = None, **traits: Any) -> Callable[[Callable], Callable]:
        """Register the decorated function as `name`; `traits` are what the entry declares
        about itself beyond its options (kept in `Entry.traits`)."""

        def deco(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            # The description is the docstring's first paragraph, joined onto one line.
            first = (inspect.getdoc(fn) or "").strip().split("\n\n")[0]
            text = description or " ".join(first.split())
            self._entries[name] = Entry(name, fn, text, MappingProxyType(dict(traits)))
            return fn

        return deco

    def register_fallback(
        self, *, names: Callable[[], Iterable[str]], hint: str
    ) -> Callable[[Callable[[str], Entry | None]], Callable[[str], Entry | None]]:
        """Register `resolve(name) -> Entry | None` for the names this family accepts without
        listing them; `names()` offers them as did-you-mean suggestions and `hint` tells users
        where they come from (it ends the unknown-name message)."""

        def deco(resolve: Callable[[str], Entry | None]) -> Callable[[str], Entry | None]:
            self._fallback, self._fallback_names, self._fallback_hint = resolve, names, hint
            return resolve

        return deco

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            package = importlib.import_module(self._module)
            for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
                importlib.import_module(f"{self._module}.{info.name}")

    def __contains__(self, name: str) -> bool:
        return self.find(name) is not None

    def find(self, name: str) -> Entry | None:
        self._ensure_loaded()
        entry = self._entries.get(name)
        if entry is None and self._fallback is not None:
            entry = self._fallback(name)
        return entry

    def get(self, name: str, *, key: str | None = None) -> Entry:
        """The entry for `name`; a ConfigError listing the choices when unknown (the one
        unknown-name message of every family)."""
        entry = self.find(name)
        if entry is None:
            where = f"{key}: " if key else ""
            hint = did_you_mean(name, self.names() + list(self._fallback_names()))
            more = f" {self._fallback_hint}" if self._fallback_hint else ""
            raise ConfigError(
                f"{where}unknown {self.family} {name!r}{hint or '.'} "
                f"Valid {self.family} names: {', '.join(self.names())}.{more} "
                f"Run `trainpipe list {self.family}` to see what each one does."
            )
        return entry

    def build(self, name: str, *context: Any, **options: Any) -> Any:
        return self.get(name).fn(*context, **options)

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        self._ensure_loaded()
        return [(n, self._entries[n].description) for n in self.names()]


DATASETS = Registry("dataset", module="trainpipe.data.sources")
AUGMENTS = Registry("augment", module="trainpipe.data.augment")
MODELS = Registry("model", module="trainpipe.models")
OPTIMIZERS = Registry("optimizer", module="trainpipe.optim")
SCHEDULERS = Registry("scheduler", module="trainpipe.sched")
TRACKERS = Registry("tracker", module="trainpipe.track")
SWEEP_METHODS = Registry("method", module="trainpipe.sweep.methods")

FAMILIES: dict[str, Registry] = {
    r.family: r for r in (DATASETS, AUGMENTS, MODELS, OPTIMIZERS, SCHEDULERS, TRACKERS, SWEEP_METHODS)
}
