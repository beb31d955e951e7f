"""trainpipe: one YAML config runs a training; one sweep file runs a search.

The Python API mirrors the command line (a notebook, a script):

    trainpipe.train(config, overrides, output)   -> RunResult      `trainpipe train`
    trainpipe.resume(run_dir, overrides)         -> RunResult      `trainpipe resume`
    trainpipe.evaluate(run_dir_or_checkpoint)    -> EvalResult     `trainpipe eval`
    trainpipe.sweep(sweep_file_or_dir, overrides) -> SweepOutcome  `trainpipe sweep`
    trainpipe.report(dirs)                       -> ReportPath     `trainpipe report`

Bad input raises `ConfigError` (`DataError`, `StorageError` are kinds of it); an
interrupted run raises `TrainingInterrupted` (a KeyboardInterrupt carrying the result).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "EvalResult", "RunConfig", "RunResult", "StorageError",
           "TrainingInterrupted", "evaluate", "load_config", "report", "resume", "sweep", "train", "__version__"]

# The public names are imported on first use, so that `trainpipe --help` (which imports
# this package) does not pay for torch and pydantic.
_LAZY = {
    "RunConfig": ("trainpipe.config", "RunConfig"),
    "load_config": ("trainpipe.config", "load"),
    "RunResult": ("trainpipe.run.result", "RunResult"),
    "train": ("trainpipe.run.train", "train"),
    "resume": ("trainpipe.run.resume", "resume"),
    "evaluate": ("trainpipe.run.evaluate", "evaluate_checkpoint"),
    "EvalResult": ("trainpipe.run.evaluate", "EvalResult"),
    "ConfigError": ("trainpipe.errors", "ConfigError"),
    "DataError": ("trainpipe.errors", "DataError"),
    "StorageError": ("trainpipe.errors", "StorageError"),
    "TrainingInterrupted": ("trainpipe.errors", "TrainingInterrupted"),
    # subpackages that are called: trainpipe.sweep(...), trainpipe.report(...)
    "sweep": ("trainpipe.sweep", None),
    "report": ("trainpipe.report", None),
}

if TYPE_CHECKING:
    from trainpipe import report, sweep
    from trainpipe.config import RunConfig, load as load_config
    from trainpipe.errors import ConfigError, DataError, StorageError, TrainingInterrupted
    from trainpipe.run.evaluate import EvalResult, evaluate_checkpoint as evaluate
    from trainpipe.run.result import RunResult
    from trainpipe.run.resume import resume
    from trainpipe.run.train import train


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'trainpipe' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def callable_package(name: str, call: Callable[..., Any]) -> None:
    """Make the (sub)package `name` callable as `call`: `trainpipe.sweep(...)`, `trainpipe.report(...)`.

    A function of this package with the subpackage's name would not do: importing the
    subpackage (which the function itself does) sets the package attribute to the module.
    """
    import sys
    import types

    class CallablePackage(types.ModuleType):
        __call__ = staticmethod(call)

    sys.modules[name].__class__ = CallablePackage
