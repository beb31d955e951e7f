"""Where metrics go: metrics.jsonl (always), curves.png, TensorBoard and W&B.

Trackers are callbacks registered in `TRACKERS`, one module each, and built by the
run as `TRACKERS.build(name, run_dir, cfg)`; optional back ends (TensorBoard, W&B)
import their libraries only when a config chooses them. All of them use the same
metric keys (`train/loss`, `val/acc`, `lr`, ...) with the epoch as the step, and
close in `on_fit_end`, which runs in a `finally`.
"""

from trainpipe.track.plots import draw_curves

__all__ = ["draw_curves"]
