"""The run configuration: typed, validated, frozen.

`load(path, overrides)` is the one way a config enters trainpipe: YAML (safe_load
only) or a dict, then `dotted.key=value` overrides (values parsed as YAML), then
pydantic validation with `extra="forbid"`, then each component section's options
(`model.*`, `optim.*`, ...) checked against the signature of the registered
function that will receive them. Every failure becomes one `ConfigError`
paragraph that names the dotted key and, where possible, the closest valid key.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from trainpipe.config.messages import explain
from trainpipe.config.schema import COMPONENT_CLASSES, COMPONENT_SECTIONS, ComponentSection, RunConfig, \
    TrackingConfig
from trainpipe.config.types import ComponentList, ComponentName
from trainpipe.config.yamlfile import parse_yaml, read_yaml_file
from trainpipe.errors import ConfigError, did_you_mean
from trainpipe.registry import AUGMENTS, FAMILIES, OPTIMIZERS, TRACKERS, Entry

PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def read_yaml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """A YAML file that holds a mapping (a config, a sweep file), read by `read_yaml_file`'s
    rules (no duplicate keys, recursive anchors or alias bombs); {} when it is empty."""
    p = Path(path)
    if not p.exists():
        packaged = PACKAGED_CONFIGS / p.name
        hint = f" A packaged config of that name exists: {packaged}." if packaged.is_file() else ""
        raise ConfigError(
            f"{what} {str(p)!r} does not exist.{hint} Pass the path of a YAML file, "
            f"or run `trainpipe list configs` to see the configs that ship with trainpipe."
        )
    data = read_yaml_file(p, what=what)
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
            value = parse_yaml(raw, source=f"override {key}") if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # an unparsable value stays a string; validation will say if that is wrong
        pairs.append((key, value))
    return pairs


def apply_overrides(data: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    return _apply_pairs(data, parse_overrides(overrides))


def _apply_pairs(data: dict[str, Any], pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = _deepcopy(data)
    for key, value in pairs:
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
    data = nest_dotted_keys(data)
    pairs = parse_overrides(overrides)
    return validate(_apply_pairs(_drop_switched_options(data, dict(pairs)), pairs))


def nest_dotted_keys(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config's mappings with dotted keys (`train.epochs: 1`, as overrides write them) nested
    (`train: {epochs: 1}`), so a file may use either form; the same key given both ways is
    refused. Only keys whose parts are all names are split (`"0.5"` stays a key)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        parts = key.split(".") if isinstance(key, str) else [key]
        if len(parts) > 1 and not all(p.isidentifier() for p in parts):
            parts = [key]
        if isinstance(value, Mapping):
            value = nest_dotted_keys(value, f"{prefix}{key}.")
        node = out
        for i, part in enumerate(parts):
            where = prefix + ".".join(map(str, parts[: i + 1]))
            last = i == len(parts) - 1
            if part not in node:
                node[part] = value if last else {}
            elif last and isinstance(node[part], dict) and isinstance(value, dict):
                node[part] = _merge_nested(node[part], value, where)
            elif last:
                raise ConfigError(f"{where}: is set twice in the config, once as a dotted key ({prefix}{key}) and "
                                  f"once nested under its section; keep one of them.")
            elif not isinstance(node[part], dict):
                raise ConfigError(f"{where}: is set to {node[part]!r}, a value, but {prefix}{key} treats it as a "
                                  f"section with keys; keep one of them.")
            node = node[part]
    return out


def _merge_nested(a: dict[str, Any], b: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if k in out and isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _merge_nested(out[k], v, f"{where}.{k}")
        elif k in out:
            raise ConfigError(f"{where}.{k}: is set twice in the config, once as a dotted key and once nested "
                              f"under its section; keep one of them.")
        else:
            out[k] = v
    return out


def _drop_switched_options(data: dict[str, Any], pairs: Mapping[str, Any]) -> dict[str, Any]:
    """When an override switches a component (`optim.name=adamw`), the config's options that
    belonged to the old component (`optim.momentum`) are dropped unless the new one takes them
    too, so that sweeps over `optim.name` or `model.name` work from any base config."""
    out = _deepcopy(data)
    for section, cls in COMPONENT_CLASSES.items():
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
@functools.lru_cache(maxsize=512)  # options_model and the component markers both read them
def _option_hints(entry: Entry) -> dict[str, Any]:
    """The entry's option annotations, resolved (modules use `from __future__ import
    annotations`) in the function's own module, without evaluating anything from a config."""
    params = entry.options()
    shim = type("_Options", (), {"__annotations__": {n: p.annotation for n, p in params.items()}})
    shim.__module__ = entry.fn.__module__
    try:
        return typing.get_type_hints(shim, include_extras=True)
    except NameError as e:
        # A type the signature names but its module imports only for type checking: without
        # the types, the options would go unchecked, so this is the component's bug to fix.
        raise TypeError(f"{entry.name}: the types of its options cannot be resolved in {entry.fn.__module__} "
                        f"({e}); import them at module level there.") from None


def options_model(entry: Entry) -> type[BaseModel]:
    """A pydantic model of an entry's keyword-only parameters (its config options)."""
    params = entry.options()
    hints = _option_hints(entry)
    fields: dict[str, Any] = {}
    for n, p in params.items():
        ann = hints.get(n, Any)
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[n] = (ann, default)
    extra = "allow" if entry.accepts_any_option() else "forbid"
    return create_model(f"{entry.name}_options", __config__=ConfigDict(extra=extra, allow_inf_nan=False), **fields)


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
    """Every component's options checked against its registered entry and completed with its
    defaults, so the resolved config says everything and the builders check nothing again."""
    updates: dict[str, Any] = {}
    for section in COMPONENT_SECTIONS:
        sec: ComponentSection = getattr(cfg, section)
        entry = sec.registry.get(sec.component(), key=f"{section}.{sec.name_field}")
        opts = validate_options(entry, sec.options(), key=section, also_valid=list(type(sec).model_fields))
        opts = _nested_components(entry, opts, section, cfg)
        base = sec.model_dump(mode="json", exclude=set(sec.options()))
        if section == "data":
            base["augment"] = augment_specs(cfg.data.augment)
        updates[section] = type(sec).model_validate({**base, **_json_ready(opts)})
    updates["tracking"] = _complete_trackers(cfg.tracking)
    cfg = cfg.model_copy(update=updates)
    _refuse_non_finite(cfg.model_dump(), "")
    _cross_checks(cfg)
    return cfg


def _complete_trackers(t: TrackingConfig) -> TrackingConfig:
    """Each tracker's options section (`tracking.<name>: {...}`) checked against the tracker's
    registered signature and completed, as a component's options are; a null section is dropped."""
    extra = dict(t.__pydantic_extra__ or {})
    sections = {}
    for name, options in extra.items():
        if options is None:
            continue
        if name not in TRACKERS:
            fields = list(TrackingConfig.model_fields)
            raise ConfigError(f"tracking.{name}: unknown key{did_you_mean(name, fields + TRACKERS.names()) or '.'} "
                              f"Valid keys here: {', '.join(fields)}, or a tracker's name "
                              f"({', '.join(TRACKERS.names())}) for its options.")
        if not isinstance(options, Mapping):
            raise ConfigError(f"tracking.{name}: expected the {name} tracker's options as a mapping, e.g. "
                              f"tracking.{name}={{...}}; got {options!r}. To turn it on with its defaults, list it "
                              f"in tracking.trackers.")
        sections[name] = _json_ready(validate_options(TRACKERS.get(name), options, key=f"tracking.{name}"))
    base = t.model_dump(mode="json", exclude=set(extra))
    return TrackingConfig.model_validate({**base, **sections})


def _refuse_non_finite(value: Any, key: str) -> None:
    """Typed floats refuse inf and nan themselves (`allow_inf_nan=False`); this covers the
    options no signature types (a torchvision transform's keyword arguments)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value} is not a finite number; no setting takes inf or nan. Give a finite "
                          f"value in the config or override it with {key.split('[', 1)[0]}=VALUE.")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _refuse_non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _refuse_non_finite(v, f"{key}[{i}]")


def augment_specs(specs: Sequence[Any], *, key: str = "data.augment") -> list[dict[str, Any]]:
    """A `data.augment` list, each entry checked and completed (see `_augment_spec`)."""
    return [_augment_spec(spec, f"{key}[{i}]") for i, spec in enumerate(specs)]


def _augment_spec(spec: Any, key: str) -> dict[str, Any]:
    """One `data.augment` entry (a name, {name: op, **options} or {op: {options}}) as
    {name: op, **every option}, checked against the op's registered signature."""
    name, options = _parse_augment(spec, key)
    entry = AUGMENTS.get(name, key=key)
    if entry.accepts_any_option():
        # A torchvision transform by name: its options are its constructor's, checked by
        # constructing it once here.
        try:
            entry.fn(**options)
        except ConfigError as e:
            raise ConfigError(f"{key} ({name}): {getattr(e, 'detail', e)}") from None
        return {"name": name, **options}
    return {"name": name, **_json_ready(validate_options(entry, options, key=key))}


def _parse_augment(spec: Any, key: str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        if "name" in spec and isinstance(spec["name"], str):
            return spec["name"], {k: v for k, v in spec.items() if k != "name"}
        if len(spec) == 1:
            (name, options), = spec.items()
            if isinstance(name, str) and (options is None or isinstance(options, Mapping)):
                return name, dict(options or {})
    raise ConfigError(
        f"{key}: expected an augmentation as a name (hflip), a mapping with a name "
        f"({{name: random_crop, padding: 4}}) or a one-key mapping ({{random_crop: {{padding: 4}}}}), "
        f"got {spec!r}."
    )


def _nested_components(entry: Entry, opts: dict[str, Any], key: str, cfg: RunConfig) -> dict[str, Any]:
    """Options that name or list components of another family (`ComponentName`,
    `ComponentList` in the entry's signature: SAM's base optimizer, a chain's schedules),
    each checked and completed like any component."""
    for option, marker in _component_markers(entry).items():
        where = f"{key}.{option}"
        if isinstance(marker, ComponentName):
            name = opts[option]
            if name == entry.name:
                default = entry.options()[option].default
                raise ConfigError(f"{where}: {entry.name} cannot wrap itself; name the {marker.family} it should "
                                  f"wrap, e.g. {where}={default}.")
            named = FAMILIES[marker.family].get(str(name), key=where)
            if marker.options is not None and not named.accepts_any_option():
                opts[marker.options] = validate_options(named, opts.get(marker.options) or {},
                                                        key=f"{key}.{marker.options}")
        elif isinstance(marker, ComponentList):
            opts[option] = [_member(raw, f"{where}[{i}]", marker, entry) for i, raw in enumerate(opts[option])]
            if marker.check is not None:
                marker.check(opts[option], cfg)
    return opts


def _member(raw: Any, key: str, marker: ComponentList, owner: Entry) -> dict[str, Any]:
    """One member of a `ComponentList`: {name, **options checked and completed, **member keys}."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a mapping such as {{name: ...}}, got {raw!r}.")
    opts = dict(raw)
    name = opts.pop("name", None)
    kept = {k: opts.pop(k) for k in marker.member_keys if k in opts}
    if name is None:
        raise ConfigError(f"{key}.name: is missing; name the {marker.family}, e.g. name: "
                          f"{FAMILIES[marker.family].names()[0]}.")
    if name == owner.name:
        raise ConfigError(f"{key}.name: a {owner.name} cannot hold another {owner.name}; list its members "
                          f"here instead.")
    entry = FAMILIES[marker.family].get(str(name), key=f"{key}.name")
    return {"name": name, **_json_ready(validate_options(entry, opts, key=key)), **kept}


def _component_markers(entry: Entry) -> dict[str, ComponentName | ComponentList]:
    """The entry's options marked as holding other components."""
    out = {}
    for option, hint in _option_hints(entry).items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, (ComponentName, ComponentList)):
                out[option] = meta
    return out


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
    s, epochs = cfg.sched, cfg.train.epochs
    for i, name in enumerate(cfg.tracking.trackers):
        TRACKERS.get(name, key=f"tracking.trackers[{i}]")
    if s.warmup_epochs and s.warmup_steps:
        raise ConfigError(f"sched.warmup_steps: set either sched.warmup_epochs ({s.warmup_epochs:g}) or "
                          f"sched.warmup_steps ({s.warmup_steps}), not both.")
    if epochs and s.warmup_epochs >= epochs:
        raise ConfigError(f"sched.warmup_epochs: warmup ({s.warmup_epochs:g} epochs) must end before training "
                          f"does ({epochs} epochs).")
    # The optimizer's entry declares a closure step (step="closure", trainpipe.loop.step): its
    # second forward/backward runs outside the GradScaler and on the current batch only.
    name = cfg.optim.name
    closure_optim = OPTIMIZERS.get(name, key="optim.name").traits.get("step") == "closure"
    if closure_optim and cfg.train.precision == "fp16":
        raise ConfigError(
            f"train.precision: fp16 cannot be combined with optim.name={name}: a SAM-style optimizer's second "
            "forward/backward pass runs outside the fp16 GradScaler, so its gradients would stay scaled. Use "
            "train.precision=bf16 (no scaler needed) or fp32."
        )
    if closure_optim and cfg.train.grad_accum_steps > 1:
        raise ConfigError(
            f"train.grad_accum_steps: SAM-style optimizers (optim.name={name}) re-evaluate the loss on the "
            "current batch at perturbed weights, which would see only the last of the accumulated batches. "
            f"Use train.grad_accum_steps=1 with optim.name={name} (raise data.batch_size instead)."
        )
