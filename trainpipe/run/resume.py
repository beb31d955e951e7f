"""`resume()`: continue a run from its newest good checkpoint, exactly.

The checkpoint holds the model, optimizer, schedule, GradScaler, EMA, callback
states (early-stopping counters and best weights), epoch and step, and every global
RNG. An epoch's order and augmentation draws are functions of (seed, epoch), so a
run killed at any moment resumes from the end of its last checkpointed epoch and
reaches the same weights as a run never stopped (bit for bit on the CPU with
`train.deterministic`). A run stopped by a signal (`trainpipe.run.signals`) saved its
checkpoint at a step boundary mid-epoch, with the epoch's sums so far and the
loader's random streams there: it continues from that very step.

Overrides given at resume time are applied to the run's config.yaml; the new
resolved config replaces it and history.jsonl records the overrides together with
the config they replaced. The schedule is rebuilt from the new config and set to
the checkpoint's time, so with `train.epochs` raised the lr continues on the
longer horizon (see the README's "Resume" section).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainpipe.run import checkpoints as ckpt
from trainpipe import config as config_mod
from trainpipe.loop import distributed
from trainpipe.errors import ConfigError
from trainpipe.loop.callbacks import Callback
from trainpipe.run import rundir
from trainpipe.run.train import RunResult, execute, run_device


def resume(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    quiet: bool = False,
    command: str | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Continue the run in `run_dir` from checkpoints/last.pt (falling back to previous.pt
    and epoch snapshots when it is unreadable), with `overrides` applied to its config;
    `callbacks` are added to the run's own, as in `train`."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / rundir.CONFIG
    if not cfg_path.is_file():
        what = "does not exist" if not run_dir.exists() else "has no config.yaml"
        raise ConfigError(f"resume: {str(run_dir)!r} {what}; pass the directory of a run started with "
                          f"`trainpipe train` (it holds config.yaml, checkpoints/, metrics.jsonl).")
    overrides = list(overrides)
    old = config_mod.load(cfg_path)
    cfg = config_mod.load(cfg_path, overrides) if overrides else old
    command = command or f"trainpipe.run.resume({str(run_dir)!r}, overrides={overrides!r})"

    def warn(msg: str) -> None:
        if main:
            print(f"warning: {' '.join(msg.split())}", file=sys.stderr)

    # Under DDP (`--nproc`, torchrun) only rank 0 records and prints; every rank reads
    # the files before rank 0 may rewrite config.yaml.
    main = distributed.is_main()
    summary = rundir.read_summary(run_dir)
    owner = rundir.live_owner(run_dir) if main else None
    if owner is not None:
        raise ConfigError(f"resume: {str(run_dir)!r} is still being trained by another process "
                          f"({rundir.describe_owner(owner)}); wait for it to end, or stop it first.")
    found = ckpt.find_resumable(run_dir / rundir.CHECKPOINTS, warn=warn)
    device = run_device(cfg)
    distributed.barrier()
    if found is None:
        # Killed before its first checkpoint: nothing to continue, so start over in place.
        warn(f"{run_dir / rundir.CHECKPOINTS} holds no checkpoint yet; starting the run over.")
        return execute(cfg, run_dir, device=device, quiet=quiet, extra_callbacks=callbacks,
                       on_start=lambda: _record(run_dir, cfg, old, overrides, command, checkpoint=None, epoch=0))
    state, path = found
    saved = state["state"]
    epoch = int(saved["epoch"])
    stopped_early = saved.get("stop_reason") == "early_stopping"
    if not overrides and summary.get("status") == "completed" and (epoch >= cfg.train.epochs or stopped_early):
        if not quiet and main:
            print(f"{run_dir} already finished ({summary.get('stop_reason')}, {epoch} epochs); "
                  f"to train longer, resume with train.epochs=N (N > {epoch}).")
        return RunResult(run_dir, summary, list(saved.get("history", [])), cfg)
    # A finished run continues only because the user asked for more: forget the old stop.
    saved["should_stop"], saved["stop_reason"] = False, None
    if not quiet and main:
        was = " after it was interrupted (its process is gone)" if rundir.status(run_dir, summary) == "interrupted" else ""
        at = (f"epoch {epoch + 1} of {cfg.train.epochs}, batch {saved['batch']}" if saved.get("batch")
              else f"epoch {epoch} of {cfg.train.epochs}")
        print(f"resuming {run_dir}{was} from {path.name} ({at})")
    # Nothing is written (config.yaml, history, summary.json) until the data, the model and
    # this checkpoint are loaded: a resume that cannot start leaves the run as it was.
    return execute(cfg, run_dir, device=device, quiet=quiet, extra_callbacks=callbacks, resume_state=state,
                   resume_path=path,
                   prior_wall_time=float(summary.get("wall_time_s") or 0.0),
                   on_start=lambda: _record(run_dir, cfg, old, overrides, command, checkpoint=path.name, epoch=epoch,
                                            batch=int(saved.get("batch") or 0)))


def _record(run_dir: Path, cfg: config_mod.RunConfig, old: config_mod.RunConfig, overrides: list[str],
            command: str, *, checkpoint: str | None, epoch: int, batch: int = 0) -> None:
    if not distributed.is_main():
        return
    event: dict[str, Any] = {"event": "resume", "command": command, "overrides": overrides,
                             "checkpoint": checkpoint, "from_epoch": epoch}
    if batch:
        event["from_batch"] = batch  # a checkpoint saved mid-epoch: epoch from_epoch + 1 continues there
    if overrides:
        event["previous_config"] = old.to_dict()
        rundir.write_config(run_dir, cfg, command)
    rundir.append_history(run_dir, event)
