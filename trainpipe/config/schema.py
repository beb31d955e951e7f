"""The run configuration's schema: typed, validated, frozen pydantic models, one per section.

Each component section (`data`, `model`, `optim`, `sched`) names a registered
component; its other keys are that component's own options, checked by `load` against
the registered function's keyword-only parameters.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator

from trainpipe.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULERS, Registry


class Section(BaseModel):
    # inf and nan pass range checks such as lr > 0 but cannot train (and YAML-dump as null).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    # auto: on for models with 2-D convolutions on the CPU and CUDA, off elsewhere
    # (trainpipe.loop.device.resolve_channels_last says why)
    channels_last: bool | Literal["auto"] = "auto"
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
    batch_size_schedule: dict[NonNegativeInt, PositiveInt] | None = None  # start epoch -> batch size
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    log_every: int = Field(20, ge=1)  # steps between progress-bar refreshes (each one syncs)

    @field_validator("device")
    @classmethod
    def _device_name(cls, d: str) -> str:
        ok = d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isdigit())
        if not ok:
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return d

    @field_validator("channels_last", mode="before")
    @classmethod
    def _auto_or_bool(cls, v: Any) -> Any:
        # One message instead of pydantic's one per member of the union.
        if isinstance(v, bool) or v == "auto":
            return v
        raise ValueError("channels_last must be auto, true or false")


# ----------------------------------------------------------------------- tracking
class TrackingConfig(Section):
    """Which trackers run, and each one's options.

    `trackers` turns trackers on by registered name (`trainpipe list tracker`);
    metrics.jsonl is always written and curves.png unless `plots: false`. A tracker's
    options are a section under its own name, `tracking.<name>: {...}` (checked against the
    tracker's registered signature, like a component's), and such a section also turns
    the tracker on. `tensorboard: true` is an alias of listing tensorboard.
    """

    model_config = ConfigDict(extra="allow", frozen=True)  # the extra keys are trackers' option sections

    trackers: list[str] = Field(default_factory=list)
    tensorboard: bool = False  # alias of `trackers: [tensorboard]`
    plots: bool = True  # curves.png; false turns the default plots tracker off
    progress: Literal["auto", "bar", "none"] = "auto"

    def sections(self) -> dict[str, dict[str, Any]]:
        """{tracker name: its options}, for the trackers given an options section."""
        return {k: dict(v) for k, v in (self.__pydantic_extra__ or {}).items() if v is not None}

    def options_for(self, name: str) -> dict[str, Any]:
        return self.sections().get(name, {})

    def enabled(self) -> list[str]:
        """The trackers of a run, in order: jsonl, then `trackers`, then the aliases'."""
        names = ["jsonl", *self.trackers]
        names += ["tensorboard"] * self.tensorboard
        names += list(self.sections())
        names += ["plots"] * self.plots
        return list(dict.fromkeys(names))


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


# The sections that name a registered component, and their classes: read off RunConfig, so a
# new component section is one field there.
COMPONENT_CLASSES: dict[str, type[ComponentSection]] = {
    name: f.annotation for name, f in RunConfig.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, ComponentSection)
}
COMPONENT_SECTIONS = tuple(COMPONENT_CLASSES)
