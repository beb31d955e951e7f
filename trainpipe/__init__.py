"""trainpipe: one YAML config runs a training; one sweep file runs a search."""

from __future__ import annotations

__version__ = "0.1.0"

from trainpipe.config import RunConfig, load as load_config  # noqa: E402
from trainpipe.run.train import RunResult, train  # noqa: E402

__all__ = ["RunConfig", "RunResult", "load_config", "train", "__version__"]
