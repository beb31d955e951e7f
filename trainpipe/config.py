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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from trainpipe.errors import ConfigError, did_you_mean
from trainpipe.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULERS, Entry, Registry

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentSection(Section):
    """A section naming a registered component plus that component's own options.

    Keys that are not fields of the section are the component's options; they are
    validated (and completed with defaults) against the registered function.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    registry: typing.ClassVar[Registry]
    name_field: typing.ClassVar[str] = "name"

    def component(self) -> str:
        return getattr(self, self.name_field)

    def options(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


# --------------------------------------------------------------------------- data
class MixConfig(Section):
    """Batch-level MixUp / CutMix (timm's parameter names)."""

    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    prob: float = Field(1.0, ge=0, le=1)
    switch_prob: float = Field(0.5, ge=0, le=1)
    mode: Literal["batch", "elem"] = "batch"  # one lambda per batch (timm's default) or per sample


class DataConfig(ComponentSection):
    registry: typing.ClassVar[Registry] = DATASETS
    name_field: typing.ClassVar[str] = "dataset"

    dataset: str = "digits"
    root: str = "data"
    download: bool = False
    cache_dir: str | None = None
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int | None = Field(None, gt=0)
    val_split: float = Field(0.15, ge=0)
    fraction: float = Field(1.0, gt=0, le=1)
    augment: list[str | dict[str, Any]] = Field(default_factory=list)
    mix: MixConfig | None = None
    loader: Literal["auto", "device", "stream"] = "auto"
    num_workers: int = Field(2, ge=0)
    drop_last: bool = True
    channels: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, gt=0)
    skip_corrupt: bool = False

    @field_validator("val_split")
    @classmethod
    def _val_split_is_fraction_or_count(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("val_split must be a fraction in [0, 1) or a whole number of samples")
        return v


# -------------------------------------------------------------------------- model
class ModelConfig(ComponentSection):
    registry: typing.ClassVar[Registry] = MODELS

    name: str = "cnn_small"
    pretrained: bool = False
    weights: str | None = None
    input_size: int | None = Field(None, gt=0)
    freeze: Literal["none", "backbone"] = "none"


# ---------------------------------------------------------------------- optimizer
class OptimConfig(ComponentSection):
    registry: typing.ClassVar[Registry] = OPTIMIZERS

    name: str = "sgd"
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5.0e-4, ge=0)
    decay_norm_and_bias: bool = False
    backbone_lr_mult: float = Field(1.0, ge=0)


class SchedConfig(ComponentSection):
    registry: typing.ClassVar[Registry] = SCHEDULERS

    name: str = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)


# -------------------------------------------------------------------------- train
class EarlyStoppingConfig(Section):
    monitor: str | None = None  # None: the run's train.monitor
    mode: Literal["max", "min"] | None = None
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = True


class CheckpointConfig(Section):
    every: int = Field(1, ge=1)  # write last.pt every N epochs (and always at the end)
    keep: int = Field(0, ge=0)  # keep the K newest epoch-NNN.pt snapshots besides last/best
    best: bool = True


class EmaConfig(Section):
    decay: float = Field(0.999, gt=0, lt=1)
    every: int = Field(1, ge=1)
    warmup: bool = True  # ramp the decay up early in training, as timm's ModelEmaV3 does


class TrainConfig(Section):
    epochs: int = Field(20, ge=0)
    device: str = "auto"
    monitor: str = "val/acc"
    monitor_mode: Literal["max", "min"] = "max"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_accum_steps: int = Field(1, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    ema: EmaConfig | None = None
    tta: Literal["none", "flip"] = "none"
    on_nonfinite: Literal["stop", "skip_step", "rollback"] = "stop"
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    deterministic: bool = False
    sync_bn: bool = False  # under DDP on GPUs: BatchNorm statistics over the global batch
    batch_size_schedule: dict[int, int] | None = None
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    log_every: int = Field(20, ge=1)  # steps between progress-bar refreshes (each one syncs)

    @field_validator("device")
    @classmethod
    def _device_name(cls, d: str) -> str:
        ok = d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isdigit())
        if not ok:
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return d


# ----------------------------------------------------------------------- tracking
class WandbConfig(Section):
    project: str = "trainpipe"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] = "online"
    tags: list[str] = Field(default_factory=list)


class TrackingConfig(Section):
    tensorboard: bool = False
    wandb: WandbConfig | None = None
    plots: bool = True
    progress: Literal["auto", "bar", "none"] = "auto"


class RunConfig(Section):
    name: str = "run"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sched: SchedConfig = Field(default_factory=SchedConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """The full resolved config as plain YAML-safe data."""
        return self.model_dump(mode="json")


COMPONENT_SECTIONS = ("data", "model", "optim", "sched")


# ------------------------------------------------------------------------ loading
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
        raise ConfigError(_explain(e, data)) from None
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
        raise ConfigError(_explain(e, options, prefix=key, valid_keys=valid, entry=entry)) from None
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


# --------------------------------------------------------------------- messages
def _valid_keys_at(loc: Sequence[Any]) -> list[str]:
    """Field names of the config model reached by following `loc` from RunConfig."""
    model: Any = RunConfig
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = _model_of(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        keys = list(model.model_fields)
        return keys
    return []


def _model_of(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        m = _model_of(arg)
        if m is not None:
            return m
    return None


def _explain(
    err: ValidationError,
    data: Any,
    *,
    prefix: str = "",
    valid_keys: list[str] | None = None,
    entry: Entry | None = None,
) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith("function-") and p not in ("int", "float", "str")]
        # pydantic reports union members as extra loc parts (e.g. 'list[...]'); drop them
        loc = [p for p in loc if "[" not in p and not p.startswith("dict")]
        dotted = ".".join(([prefix] if prefix else []) + loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            keys = valid_keys if valid_keys is not None else _valid_keys_at(loc[:-1])
            parent = dotted.rsplit(".", 1)[0] if "." in dotted else ""
            choices = [f"{parent}.{k}" if parent else k for k in keys]
            owner = f" for {entry.name}" if entry is not None else ""
            hint = did_you_mean(dotted, choices) or "."
            lines.append(
                f"{dotted}: unknown key{owner}{hint} "
                f"Valid keys here: {', '.join(keys) if keys else '(none)'}."
            )
        elif kind == "missing":
            lines.append(f"{dotted}: required key is missing; add it to the config or pass {dotted}=VALUE.")
        else:
            got = e.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) or len(repr(got)) < 80 else type(got).__name__
            msg = e["msg"]
            msg = msg[0].lower() + msg[1:] if msg else msg
            msg = msg.removeprefix("value error, ")
            lines.append(f"{dotted or 'config'}: {msg}; got {shown}. Fix the value in the config or override it with {dotted or 'KEY'}=VALUE.")
    if len(lines) > 1:
        return f"{len(lines)} problems in the config: " + " ".join(f"({i + 1}) {l}" for i, l in enumerate(lines))
    return lines[0] if lines else str(err)
