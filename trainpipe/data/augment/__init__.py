"""Augmentation pipelines: `data.augment` specs -> ops, applied batched or per sample.

Each op has a batched form for DeviceLoader (`op.batch(x, g)`: tensor ops on the whole
batch, a draw per sample from `g`) and a torchvision v2 form for StreamLoader
(`op.transform()`). The built-in ops live in `augment_ops`; any other torchvision v2
class (RandAugment, TrivialAugmentWide, ...) is accepted by its exact name with its own
keyword arguments, has no batched form, and so selects StreamLoader.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pydantic
import torch

from trainpipe.data.augment.ops import AugmentOp, OptionError
from trainpipe.errors import ConfigError, did_you_mean
from trainpipe.registry import AUGMENTS, Entry

if TYPE_CHECKING:
    from torchvision.transforms import v2

__all__ = ["AugmentOp", "OptionError", "apply_batch", "build_pipeline", "stream_transform"]

# ---------------------------------------------------------------- torchvision fallback

# Batch-level ops that need labels; they live in data.mix, not in the per-image list.
_MIX_CLASSES = {"MixUp", "CutMix"}


def _torchvision_class(name: str) -> type[v2.Transform] | None:
    if not name[:1].isupper():  # v2's classes are CamelCase; other names never need torchvision
        return None
    from torchvision.transforms import v2

    cls = getattr(v2, name, None)
    if isinstance(cls, type) and issubclass(cls, v2.Transform) and cls is not v2.Transform:
        return cls
    return None


def _torchvision_op(name: str, cls: type[v2.Transform], options: dict[str, Any]) -> AugmentOp:
    if name in _MIX_CLASSES:
        raise OptionError(name, "mixes pairs of images and their labels, so it belongs in data.mix "
                          "(e.g. data.mix: {mixup_alpha: 0.8, cutmix_alpha: 1.0}), not in data.augment.")
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for arg in options:
            if arg not in params:
                raise OptionError(
                    name,
                    f"torchvision.transforms.v2.{name} has no argument {arg!r}{did_you_mean(arg, params) or '.'} "
                    f"Its arguments are: {', '.join(params) or 'none'}.",
                )
    try:
        cls(**options)  # fail at build time rather than in a loader worker
    except (TypeError, ValueError) as e:
        raise OptionError(name, f"torchvision.transforms.v2.{name} rejected the arguments: {e}") from None
    return AugmentOp(name, None, lambda: cls(**options))


def _torchvision_entry(name: str) -> Entry | None:
    """Registry fallback: any torchvision.transforms.v2 class by its exact name."""
    cls = _torchvision_class(name)
    if cls is None:
        return None

    def build(**options: Any) -> AugmentOp:
        return _torchvision_op(name, cls, options)

    summary = " ".join((inspect.getdoc(cls) or name).strip().split("\n\n")[0].split())
    return Entry(name, build, f"{summary} (torchvision, stream loader only)")


def _torchvision_names() -> list[str]:
    from torchvision.transforms import v2

    return [n for n in dir(v2) if _torchvision_class(n) is not None]


AUGMENTS.fallback = _torchvision_entry
AUGMENTS.fallback_names = _torchvision_names


# ---------------------------------------------------------------- pipelines


def _parse_spec(spec: Any, where: str) -> tuple[str, dict[str, Any]]:
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
        f"{where}: expected an augmentation as a name (hflip), a mapping with a name "
        f"({{name: random_crop, padding: 4}}) or a one-key mapping ({{random_crop: {{padding: 4}}}}), "
        f"got {spec!r}."
    )


@functools.cache
def _validated(fn: Callable[..., AugmentOp]) -> Callable[..., AugmentOp]:
    # The keyword-only signature is the schema: pydantic checks and coerces option types
    # (YAML lists become tuples) before the op checks the values themselves.
    return pydantic.validate_call(fn)


def _build_op(entry: Entry, options: dict[str, Any]) -> AugmentOp:
    if entry.accepts_any_option():
        return entry.fn(**options)
    known = entry.options()
    for arg in options:
        if arg not in known:
            raise OptionError(entry.name, f"unknown option {arg!r}{did_you_mean(arg, known) or '.'} "
                              f"Options of {entry.name}: {', '.join(known) or 'none'}.")
    try:
        return _validated(entry.fn)(**options)
    except pydantic.ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])} = {err['input']!r}: {err['msg']}" for err in e.errors()
        )
        raise OptionError(entry.name, f"{problems}. See `trainpipe list augment`.") from None


def build_pipeline(specs: Sequence[Any] | None, *, key: str = "data.augment") -> list[AugmentOp]:
    """Build the ops of `data.augment`: names, {name: ..., **options} or {name: {options}}."""
    ops = []
    for i, spec in enumerate(specs or []):
        where = f"{key}[{i}]"
        name, options = _parse_spec(spec, where)
        entry = AUGMENTS.find(name)
        if entry is None:
            builtin = AUGMENTS.names()
            hint = did_you_mean(name, builtin + _torchvision_names())
            raise ConfigError(
                f"{where}: unknown augmentation {name!r}{hint or '.'} "
                f"Built-in ops: {', '.join(builtin)}; any torchvision.transforms.v2 class also "
                "works by its exact name (e.g. RandAugment) with its own arguments."
            )
        try:
            ops.append(_build_op(entry, options))
        except OptionError as e:
            raise ConfigError(f"{where} ({name}): {e.detail}") from None
    return ops


def apply_batch(ops: Sequence[AugmentOp], x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Run every op's batched form on x (B, C, H, W), in order."""
    for op in ops:
        x = op.batch(x, g)
    return x


def stream_transform(ops: Sequence[AugmentOp]) -> v2.Compose:
    """The per-sample torchvision v2 pipeline equivalent to `ops`."""
    from torchvision.transforms import v2

    return v2.Compose([op.transform() for op in ops] or [v2.Identity()])
