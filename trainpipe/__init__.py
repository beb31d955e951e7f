"""trainpipe: one YAML config runs a training; one sweep file runs a search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["RunConfig", "RunResult", "load_config", "train", "__version__"]

# The public names are imported on first use, so that `trainpipe --help` (which imports
# this package) does not pay for torch and pydantic.
_LAZY = {
    "RunConfig": ("trainpipe.config", "RunConfig"),
    "load_config": ("trainpipe.config", "load"),
    "RunResult": ("trainpipe.run.train", "RunResult"),
    "train": ("trainpipe.run.train", "train"),
}

if TYPE_CHECKING:
    from trainpipe.config import RunConfig, load as load_config
    from trainpipe.run.train import RunResult, train


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'trainpipe' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
