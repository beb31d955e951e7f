"""Checks of what this machine can do, made before a run allocates anything: does the
model fit in the device's memory at all."""

from __future__ import annotations

import torch

from trainpipe.config import RunConfig
from trainpipe.errors import ConfigError
from trainpipe.registry import MODELS

# fp32 weights and their gradients: the least a training step holds, before optimizer
# state (momentum 4 bytes, Adam 8) and activations. Refusing only below this bound never
# refuses a model that could train.
BYTES_PER_PARAMETER = 8


def check_model_fits(cfg: RunConfig, spec: object, device: torch.device) -> None:
    """Refuse a model whose weights and gradients alone exceed the memory of `device`,
    naming the model options that make it large."""
    from trainpipe import models
    from trainpipe.loop.device import format_bytes, memory_of

    m = cfg.model
    count = models.parameters_on_meta(m.name, m.options(), spec, input_size=m.input_size)  # type: ignore[arg-type]
    memory = memory_of(device)
    if count is None or memory is None or count * BYTES_PER_PARAMETER <= memory[0]:
        return
    need = count * BYTES_PER_PARAMETER
    defaults = {n: p.default for n, p in MODELS.get(m.name).options().items()}
    sized = {f"model.{k}": v for k, v in m.options().items()
             if isinstance(v, (int, float, list)) and not isinstance(v, bool) and v != defaults.get(k)}
    given = ", ".join(f"{k}={v}" for k, v in sized.items())
    fix = f"Lower {', '.join(sized)}" if sized else f"Choose smaller options for model.name={m.name}"
    raise ConfigError(
        f"model: {m.name}{' with ' + given if sized else ''} has {_count(count)} parameters; training needs at "
        f"least {format_bytes(need)} for its weights and gradients alone (before optimizer state and activations), "
        f"but {memory[1]}. {fix}, choose a smaller model (`trainpipe list models`), or train on a device with "
        f"more memory (train.device)."
    )


def _count(n: int) -> str:
    for size, word in ((1e12, "trillion"), (1e9, "billion"), (1e6, "million")):
        if n >= size:
            return f"{n / size:,.1f} {word}"
    return f"{n:,}"

