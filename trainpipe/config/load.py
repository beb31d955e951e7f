"""The run configuration: typed, validated, frozen.

`load(path, overrides)` is the one way a config enters trainpipe: YAML (safe_load
only) or a dict, then `dotted.key=value` overrides (values parsed as YAML), then
pydantic validation with `extra="forbid"`, then each component section's options
(`model.*`, `optim.*`, ...) checked against the signature of the registered
function that will receive them. Every failure becomes one `ConfigError`
paragraph that names the dotted key and, where possible, the closest valid key.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from trainpipe.config.messages import explain
from trainpipe.config.schema import (
    COMPONENT_SECTIONS,
    ComponentSection,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
)
from trainpipe.errors import ConfigError
from trainpipe.registry import Entry

PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def read_yaml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        packaged = PACKAGED_CONFIGS / p.name
        hint = f" A packaged config of that name exists: {packaged}." if packaged.is_file() else ""
        raise ConfigError(
            f"{what} {str(p)!r} does not exist.{hint} Pass the path of a YAML file, "
            f"or run `trainpipe list configs` to see the configs that ship with trainpipe."
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML: {e}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(p)!r} must hold a mapping of sections, got {type(data).__name__}.")
    return data


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, or the name of a packaged config (`cifar10` or `cifar10.yaml`)."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (PACKAGED_CONFIGS / p.name, PACKAGED_CONFIGS / f"{p.name}.yaml"):
        if not p.parent.parts and cand.is_file():
            return cand
    return p


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    pairs = []
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not of the form key=value; write it as e.g. optim.lr=0.1 "
                f"(dotted key, '=', a YAML value)."
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # an unparsable value stays a string; validation will say if that is wrong
        pairs.append((key, value))
    return pairs


def apply_overrides(data: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    out = _deepcopy(data)
    for key, value in parse_overrides(overrides):
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {key}: {where} is a value ({nxt!r}), not a section with keys.")
            node = nxt
        node[parts[-1]] = value
    return out


def _deepcopy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


def load(
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    base: Mapping[str, Any] | RunConfig | None = None,
) -> RunConfig:
    """Read, override, validate. `path=None` (and no `base`) means the packaged quickstart."""
    if base is not None:
        data = base.to_dict() if isinstance(base, RunConfig) else _deepcopy(dict(base))
    elif path is None:
        data = read_yaml(PACKAGED_CONFIGS / "quickstart.yaml")
    else:
        data = read_yaml(resolve_config_path(path))
    data = apply_overrides(_drop_switched_options(data, overrides), overrides)
    return validate(data)


def _drop_switched_options(data: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """When an override switches a component (`optim.name=adamw`), the config's options that
    belonged to the old component (`optim.momentum`) are dropped unless the new one takes them
    too, so that sweeps over `optim.name` or `model.name` work from any base config."""
    pairs = dict(parse_overrides(overrides))
    out = _deepcopy(data)
    for section, cls in (("data", DataConfig), ("model", ModelConfig), ("optim", OptimConfig), ("sched", SchedConfig)):
        name_key = f"{section}.{cls.name_field}"
        sec = out.get(section)
        if name_key not in pairs or not isinstance(sec, dict) or sec.get(cls.name_field) == pairs[name_key]:
            continue
        old = cls.registry.find(str(sec.get(cls.name_field, cls.model_fields[cls.name_field].default)))
        new = cls.registry.find(str(pairs[name_key]))
        if old is None or new is None:
            continue  # validation will name the unknown component
        stale = set(old.options()) - set(new.options()) - set(cls.model_fields)
        out[section] = {k: v for k, v in sec.items() if k not in stale}
    return out


def validate(data: Mapping[str, Any]) -> RunConfig:
    try:
        cfg = RunConfig.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(explain(e, data)) from None
    return _complete_components(cfg)


# ----------------------------------------------------------- component options
def options_model(entry: Entry) -> type[BaseModel]:
    """A pydantic model of an entry's keyword-only parameters (its config options)."""
    params = entry.options()
    # Resolve string annotations (modules use `from __future__ import annotations`)
    # in the function's own module, without evaluating anything taken from a config.
    shim = type("_Options", (), {"__annotations__": {n: p.annotation for n, p in params.items()}})
    shim.__module__ = entry.fn.__module__
    try:
        hints = typing.get_type_hints(shim)
    except Exception:
        hints = {}
    fields: dict[str, Any] = {}
    for n, p in params.items():
        ann = hints.get(n, Any)
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[n] = (ann, default)
    extra = "allow" if entry.accepts_any_option() else "forbid"
    return create_model(f"{entry.name}_options", __config__=ConfigDict(extra=extra), **fields)


def validate_options(
    entry: Entry, options: Mapping[str, Any], *, key: str, also_valid: Sequence[str] = ()
) -> dict[str, Any]:
    """`options` checked against `entry`'s keyword-only parameters: coerced, defaults filled in.

    `key` is the dotted prefix errors name (e.g. `optim` or `sched.schedulers[1]`);
    `also_valid` lists the section's own keys, offered in did-you-mean suggestions.
    """
    try:
        validated = options_model(entry).model_validate(dict(options))
    except ValidationError as e:
        valid = list(also_valid) + list(entry.options())
        raise ConfigError(explain(e, options, prefix=key, valid_keys=valid, entry=entry)) from None
    out = {n: getattr(validated, n) for n in entry.options()}
    return {**out, **(validated.__pydantic_extra__ or {})}


def _complete_components(cfg: RunConfig) -> RunConfig:
    updates = {}
    for section in COMPONENT_SECTIONS:
        sec: ComponentSection = getattr(cfg, section)
        entry = sec.registry.get(sec.component(), key=f"{section}.{sec.name_field}")
        opts = validate_options(entry, sec.options(), key=section, also_valid=list(type(sec).model_fields))
        base = sec.model_dump(mode="json", exclude=set(sec.options()))
        updates[section] = type(sec).model_validate({**base, **_json_ready(opts)})
    from trainpipe.data.augment import build_pipeline

    build_pipeline(cfg.data.augment, key="data.augment")  # bad ops fail now, not after data loading
    cfg = cfg.model_copy(update=updates)
    _cross_checks(cfg)
    return cfg


def _json_ready(x: Any) -> Any:
    """Plain YAML-safe values (tuples become lists), so the resolved config round-trips."""
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, BaseModel):
        return x.model_dump(mode="json")
    return x


def _cross_checks(cfg: RunConfig) -> None:
    """Combinations of keys from different sections that cannot work together."""
    closure_optim = cfg.optim.name == "sam"
    if closure_optim and cfg.train.precision == "fp16":
        raise ConfigError(
            "train.precision: fp16 cannot be combined with optim.name=sam: SAM's second forward/backward "
            "pass runs outside the fp16 GradScaler, so its gradients would stay scaled. Use "
            "train.precision=bf16 (no scaler needed) or fp32."
        )
    if closure_optim and cfg.train.grad_accum_steps > 1:
        raise ConfigError(
            "train.grad_accum_steps: SAM re-evaluates the loss on the current batch at perturbed weights, "
            "which would see only the last of the accumulated batches. Use train.grad_accum_steps=1 with "
            "optim.name=sam (raise data.batch_size instead)."
        )
