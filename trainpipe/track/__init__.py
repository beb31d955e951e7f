"""Where metrics go: metrics.jsonl (always), curves.png, TensorBoard and W&B.

Trackers are callbacks registered in `TRACKERS`, one module each, and built by the
run as `TRACKERS.build(name, run_dir, cfg)`; optional back ends (TensorBoard, W&B)
import their libraries only when a config chooses them. All of them use the same
metric keys (`train/loss`, `val/acc`, `lr`, ...) with the epoch as the step, and
close in `on_fit_end`, which runs in a `finally`.
"""

from trainpipe.errors import ConfigError
from trainpipe.track.plots import draw_curves

__all__ = ["draw_curves", "require_library"]


def require_library(tracker: str, package: str) -> None:
    """The one message for a tracker whose optional library is not installed."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"tracking: the {tracker} tracker needs the {package} package, which is not installed; "
                          f"install it with `pip install {package}`, or take {tracker} out of tracking.trackers "
                          f"(and unset tracking.{tracker}).")
