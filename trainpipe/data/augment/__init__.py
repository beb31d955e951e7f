"""Augmentation pipelines: `data.augment` specs -> ops, applied batched or per sample.

Each op has a batched form for DeviceLoader (`op.batch(x, g)`: tensor ops on the whole
batch, a draw per sample from `g`) and a torchvision v2 form for StreamLoader
(`op.transform()`). The built-in ops live in `ops.py` (label-mixing MixUp/CutMix in `mix.py`); any other torchvision v2
class (RandAugment, TrivialAugmentWide, ...) is accepted by its exact name with its own
keyword arguments, has no batched form, and so selects StreamLoader.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from trainpipe.data.augment.ops import AugmentOp, OptionError
from trainpipe.errors import did_you_mean
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


def _torchvision_names() -> list[str]:
    from torchvision.transforms import v2

    return [n for n in dir(v2) if _torchvision_class(n) is not None]


@AUGMENTS.register_fallback(
    names=_torchvision_names,
    hint="Any torchvision.transforms.v2 class also works by its exact name (e.g. RandAugment) with its own "
         "arguments.",
)
def _torchvision_entry(name: str) -> Entry | None:
    """Registry fallback: any torchvision.transforms.v2 class by its exact name."""
    cls = _torchvision_class(name)
    if cls is None:
        return None

    def build(**options: Any) -> AugmentOp:
        return _torchvision_op(name, cls, options)

    summary = " ".join((inspect.getdoc(cls) or name).strip().split("\n\n")[0].split())
    return Entry(name, build, f"{summary} (torchvision, stream loader only)")




# ---------------------------------------------------------------- pipelines


def build_pipeline(specs: Sequence[Mapping[str, Any]] | None) -> list[AugmentOp]:
    """The ops of a validated `data.augment` ({name: op, **options} each, as
    `trainpipe.config.load` leaves them)."""
    return [AUGMENTS.get(spec["name"]).fn(**{k: v for k, v in spec.items() if k != "name"})
            for spec in specs or []]


def apply_batch(ops: Sequence[AugmentOp], x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Run every op's batched form on x (B, C, H, W), in order."""
    for op in ops:
        x = op.batch(x, g)
    return x


def stream_transform(ops: Sequence[AugmentOp]) -> v2.Compose:
    """The per-sample torchvision v2 pipeline equivalent to `ops`."""
    from torchvision.transforms import v2

    return v2.Compose([op.transform() for op in ops] or [v2.Identity()])
