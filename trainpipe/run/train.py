"""`train()`: one run, from config to summary. The CLI and sweeps call this.

The order is fixed: the resolved config is written before anything can fail, then
data, model, optimizer, schedule, the loop, the test evaluation of the best
checkpoint, and the summary. `summary.json` always ends with a status, also when
the run fails or is interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from trainpipe import files
from trainpipe.run import checkpoints as ckpt
from trainpipe.run import rundir
from trainpipe.run import signals
from trainpipe import config as config_mod
from trainpipe.loop import distributed
from trainpipe.loop.callbacks import BatchSizeSchedule, Callback, EarlyStopping
from trainpipe.run.checkpoints import Checkpoint
from trainpipe.run.record import RunRecord, bests
from trainpipe.run.preflight import check_model_fits
from trainpipe.run.result import RunResult
from trainpipe.config import RunConfig
from trainpipe.errors import ConfigError, StorageError, TrainingInterrupted, check_output
from trainpipe.loop.rng import global_rng_kept, rank_seed, seed_everything
from trainpipe.loop.trainer import StopRequest

ConfigLike = str | Path | Mapping[str, Any] | RunConfig | None


def resolve(config: ConfigLike = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> RunConfig:
    if isinstance(config, RunConfig):
        return config_mod.load(base=config, overrides=overrides) if overrides else config
    if isinstance(config, Mapping):
        return config_mod.load(base=config, overrides=overrides)
    return config_mod.load(config, overrides)


def default_run_name(cfg: RunConfig, config: ConfigLike = None,
                     overrides: Sequence[str] | Mapping[str, Any] = ()) -> str:
    """What a run directory is called by default: the config file and the dataset
    (`quickstart-arrays`, `mnist`), or the `name` given as an override."""
    if "name" in dict(config_mod.parse_overrides(overrides)):
        return cfg.name
    stem = Path(str(config)).stem if isinstance(config, (str, Path)) else cfg.name
    dataset = cfg.data.dataset
    return stem if dataset.replace("_", "") in stem.replace("_", "").replace("-", "") else f"{stem}-{dataset}"


def new_run_dir(cfg: RunConfig, output: str | Path | None, name: str | None = None) -> Path:
    return Path(output) if output is not None else rundir.fresh(name or cfg.name)


def train(
    config: ConfigLike = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    output: str | Path | None = None,
    *,
    quiet: bool = False,
    callbacks: Sequence[Callback] = (),
    command: str | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Run one training, exactly as `trainpipe train` does; returns the run's results.

    `config` is a YAML path, the name of a packaged config, a dict, a `RunConfig`, or
    None for the packaged quickstart (digits). `overrides` are `key.sub=value`
    strings or a {dotted key: value} dict. An `output` directory that already holds a
    run is refused (ConfigError) unless `overwrite`, which deletes that run first.
    An interrupt (Ctrl-C, a notebook's stop button) raises TrainingInterrupted, which
    carries the run directory and the RunResult so far (status "interrupted").
    """
    check_output(output)
    cfg = resolve(config, overrides)
    from trainpipe.loop.device import resolve_device

    resolve_device(cfg.train.device)  # a device this machine lacks: refused before anything is written
    if not distributed.launched():  # under torchrun, the launching command did this once
        claim_output(output, overwrite=overwrite)
    device = run_device(cfg)
    # rank 0's choice, under DDP
    run_dir = distributed.broadcast_object(new_run_dir(cfg, output, default_run_name(cfg, config, overrides)))
    command = command or f"trainpipe.train({config!r}, overrides={list(overrides)!r})"
    created = not run_dir.exists()
    # An empty folder the user made for the run: refused input leaves it as it was, empty.
    was_empty = run_dir.is_dir() and not any(run_dir.iterdir())
    if distributed.is_main():
        files.make_dir(run_dir, what="run directory")
        rundir.write_config(run_dir, cfg, command)
        rundir.append_history(run_dir, {"event": "train", "command": command, "overrides": _as_list(overrides)})
    try:
        return execute(cfg, run_dir, device=device, quiet=quiet, extra_callbacks=callbacks)
    except ConfigError as e:
        # Bad input found before the first epoch (a data file, a model that does not fit the
        # data): the directory holds nothing worth keeping, so it is not left behind.
        if ((created or was_empty) and distributed.is_main() and not isinstance(e, StorageError)
                and not (run_dir / rundir.METRICS).exists()):
            try:
                rundir.remove_run(run_dir, keep_dir=was_empty)
            except OSError:
                pass
        raise


def claim_output(output: str | Path | None, *, overwrite: bool) -> None:
    """Refuse an `--output` that holds a run (its results would be mixed with or replaced by
    this one's) unless `overwrite`, which deletes that run's files (trainpipe's own, by name:
    `rundir.own_entries`) and nothing else. Refused in every case: a run that another process
    is training now, a folder whose run files trainpipe did not write (it would replace
    them), and, for `overwrite`, the root, the home directory, the current directory or one of
    its parents."""
    if output is None:
        return
    where = f"--output {str(output)!r}"
    if overwrite:
        why = rundir.protected_target(output)
        if why is not None:
            raise ConfigError(f"{where} --overwrite: refused, {why}; trainpipe never deletes there. "
                              f"Give a run directory of its own, e.g. --output runs/NAME.")
    if not rundir.holds_run(output):
        taken = [n for n in (*rundir.OWN_FILES, *rundir.OWN_FOLDERS) if (Path(output) / n).exists()]
        if taken:  # e.g. a curves.png or report.md of the user's: the run would replace it
            raise ConfigError(f"{where} holds {', '.join(taken)}, which a run writes; trainpipe does not replace "
                              f"files it did not write there. Choose another --output (an empty or new folder).")
        return
    if not rundir.written_by_trainpipe(output):
        found = [n for n in rundir.RUN_MARKERS if (Path(output) / n).exists()]
        raise ConfigError(
            f"{where} holds {', '.join(found)} that trainpipe did not write (no trainpipe header in its "
            f"{rundir.CONFIG}); a run there would replace them, so trainpipe neither writes nor deletes "
            f"anything there. Choose another --output (an empty or new folder)."
        )
    owner = rundir.live_owner(output)
    if owner is not None:
        raise ConfigError(
            f"{where} is being trained right now by another process ({rundir.describe_owner(owner)}); "
            f"two trainings in one directory would mix their files. Wait for it to end or stop it, "
            f"or choose another --output."
        )
    if not overwrite:
        raise ConfigError(
            f"{where} already holds a run ({rundir.describe_status(output)}). "
            f"To continue it: `{rundir.resume_command(output)}`; to replace it and delete its files, add "
            f"--overwrite (trainpipe.train(..., overwrite=True)); or choose another --output."
        )
    kept = rundir.remove_run(output)
    if kept:
        print(f"--overwrite: deleted the run's files in {output}; kept what trainpipe did not write: "
              f"{', '.join(kept[:8])}{' ...' if len(kept) > 8 else ''}", file=sys.stderr)


def _as_list(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    if isinstance(overrides, Mapping):
        return [f"{k}={v}" for k, v in overrides.items()]
    return [str(o) for o in overrides]


def execute(cfg: RunConfig, run_dir: Path, *, device: torch.device, **kw: Any) -> RunResult:
    """Build everything from `cfg` and run the loop in `run_dir` (see `_execute`), holding
    the process-wide torch settings the run needs (`loop.device.run_settings`); the global
    random generators and those settings are given back as they were before, and its
    compile and GPU caches dropped (see the README, "In a notebook" and "Process-wide
    settings and determinism")."""
    from trainpipe.loop.device import release_run_caches, run_settings, settings_for

    try:
        with global_rng_kept(), run_settings(settings_for(cfg.train, device)):
            return _execute(cfg, run_dir, device=device, **kw)
    finally:
        release_run_caches(device, compiled=cfg.train.compile)


def _execute(
    cfg: RunConfig,
    run_dir: Path,
    *,
    device: torch.device,
    quiet: bool = False,
    extra_callbacks: Sequence[Callback] = (),
    resume_state: dict[str, Any] | None = None,
    resume_path: Path | None = None,
    prior_wall_time: float = 0.0,
    on_start: Callable[[], None] | None = None,
) -> RunResult:
    """Build everything from `cfg` and run the loop in `run_dir` on `device` (`run_device`);
    with `resume_state` (a full checkpoint read from `resume_path`), continue from it.
    `prior_wall_time` is the time the run's earlier processes spent (see `RunRecord`).

    With `on_start` (a resume), nothing is written into `run_dir` until the run can start:
    the data, the model and the checkpoint's state are built and loaded first, then
    `on_start()` records the resume, then summary.json says "running". An error before that
    leaves every file of the run as it was."""
    from trainpipe.loop.trainer import Trainer
    from trainpipe.run.console import console_report

    main = distributed.is_main()  # only rank 0 writes and prints
    record = RunRecord(run_dir, cfg, main=main, prior_wall_time=prior_wall_time, on_start=on_start)
    out = console_report(quiet or not main)
    progress = None
    # A signal while the loop runs becomes a stop at the next step boundary (run/signals.py).
    request = StopRequest()
    end_signals = signals.install(request)
    try:
        with record.recording():
            data, model, optimizer, stats = build_parts(cfg, device)
            schedule = build_schedule(cfg, optimizer, data)
            record.note({"device": str(device), "loader": data.info.get("loader"), **stats,
                         **{f"{split}_size": data.info.get(f"{split}_size") for split in ("train", "val", "test")},
                         "processes": distributed.world_size()})
            callbacks = callbacks_for(cfg, run_dir, main=main, console=out, extra=extra_callbacks)
            progress = out.progress(cfg, data)
            trainer = Trainer(cfg, model, optimizer, schedule, data, device=device, callbacks=callbacks,
                              progress=progress, stop_request=request, last_good_state=lambda: ckpt.find_resumable(
                                  run_dir / rundir.CHECKPOINTS, map_location=device),
                              on_event=(lambda e: _log_event(run_dir, e, quiet)) if main else None)
            record.follow(trainer)
            if resume_state is not None:
                load_resume_state(trainer, resume_state, resume_path)
            record.begin()  # a resume writes its first file here, once everything has loaded
            if main:
                rundir.note_auto_choices(run_dir, auto_choices(cfg, record.summary))
            out.start(cfg, run_dir, record.summary)

            def finalize(tr: Any) -> dict[str, Any]:
                distributed.barrier()  # rank 0 has written best.pt before any rank reads it
                return final_summary(tr, cfg, run_dir)

            record.finished(trainer.fit(finalize))
            if trainer.stopped_by_request:
                # The state where the loop stopped is saved: raised as Ctrl-C is, so that a
                # script or a sweep stops here too.
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        # The CLI and a notebook name the run directory and how to continue it.
        raise TrainingInterrupted(run_dir, record.result()) from None
    finally:
        end_signals()
        if progress is not None:
            progress.close()  # a live display gives the console's streams back
    result = record.result()
    out.finish(result)
    return result


def auto_choices(cfg: RunConfig, summary: dict[str, Any]) -> dict[str, str]:
    """What the config's `auto` settings chose for this run ({dotted key: value and why})."""
    out = {}
    if cfg.train.device == "auto":
        out["train.device"] = summary["device"]
    if cfg.train.channels_last == "auto":
        why = summary["channels_last_reason"].removeprefix("auto: ")
        out["train.channels_last"] = f"{str(summary['channels_last']).lower()} ({why})"
    return out


def run_device(cfg: RunConfig) -> torch.device:
    """This process's device; when launched as one of several DDP ranks, joining the process
    group first (the one place a run sets up DDP: `train` and `resume` call it before anything
    that involves the other ranks)."""
    from trainpipe.loop.device import resolve_device

    return distributed.setup(resolve_device(cfg.train.device))


def build_schedule(cfg: RunConfig, optimizer: Any, data: Any) -> Any:
    from trainpipe import sched

    s = cfg.sched
    return sched.build(s.name, s.options(), optimizer, epochs=cfg.train.epochs,
                       steps_per_epoch=max(len(data.train), 1), warmup_epochs=s.warmup_epochs,
                       warmup_steps=s.warmup_steps, monitor_mode=cfg.train.monitor_mode)


class Parts(NamedTuple):
    data: Any  # data.DataBundle: train / val / test loaders, spec, info
    model: Any
    optimizer: Any
    stats: dict[str, Any]  # parameters and MACs per image, and what train.channels_last chose


def build_parts(cfg: RunConfig, device: torch.device) -> Parts:
    """Seed, then the data, the model (on `device`) and the optimizer, as every run
    (and `lr-find`) builds them from a config. Under DDP each rank keeps its shard."""
    from trainpipe import data as data_mod
    from trainpipe import models, optim
    from trainpipe.loop.device import memory_format, resolve_channels_last

    seed_everything(cfg.seed)
    splits = data_mod.load_splits(cfg.data, seed=cfg.seed)
    m = cfg.model
    check_model_fits(cfg, splits.spec, device)
    model = models.build(m.name, m.options(), splits.spec, pretrained=m.pretrained, weights=m.weights,
                         input_size=m.input_size, freeze=m.freeze)
    stats = models.model_stats(model, splits.spec)
    # The model decides the batches' memory format, before the loaders lay the data out.
    channels_last, why = resolve_channels_last(cfg.train.channels_last, model, device)
    stats.update(channels_last=channels_last, channels_last_reason=why)
    data = data_mod.build(cfg.data, seed=cfg.seed, device=device, channels_last=channels_last, splits=splits)
    distributed.shard(data, cfg)
    if distributed.world_size() > 1:
        # Every rank built the same initial weights from the seed (DDP also copies rank 0's);
        # from here each rank draws its own dropout and drop-path masks.
        seed_everything(rank_seed(cfg.seed, distributed.rank()))
    model = model.to(device, memory_format=memory_format(channels_last))
    o = cfg.optim
    optimizer = optim.build(o.name, o.options(), model, lr=o.lr, weight_decay=o.weight_decay,
                            decay_norm_and_bias=o.decay_norm_and_bias, backbone_lr_mult=o.backbone_lr_mult)
    return Parts(data, model, optimizer, stats)


def load_resume_state(trainer: Any, state: dict[str, Any], path: Path | None) -> None:
    """Load a full checkpoint into `trainer`; a checkpoint that does not fit the config
    (a different model, different parameter groups) is a ConfigError naming the file."""
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"checkpoint {str(path or 'given')!r} does not fit the config being resumed ({first}). "
            f"Overrides that change the model or the optimizer's parameter groups (model.*, optim.name, "
            f"optim.decay_norm_and_bias) cannot be applied to a running training; start a new run with "
            f"`trainpipe train` (model.weights=... loads weights into a new run)."
        ) from None


def _log_event(run_dir: Path, event: dict[str, Any], quiet: bool) -> None:
    rundir.append_history(run_dir, event)
    if not quiet and event.get("event") == "rollback":
        print(f"non-finite values in epoch {event['diverged_epoch']}: rolled back to epoch {event['to_epoch']} "
              f"({event['checkpoint']}), lr x{event['lr_factor']:g} (rollback {event['rollback']})", file=sys.stderr)


def callbacks_for(cfg: RunConfig, run_dir: Path, *, main: bool, console: Callback,
                  extra: Sequence[Callback] = ()) -> list[Callback]:
    """Every callback of a run, in the order their hooks run; the one place that order is decided.

    The console prints an epoch's line first; the batch-size schedule sets the next epoch's
    batch size before anything else starts it; early stopping judges the epoch before the
    trackers log it (and its stop); the caller's callbacks see all of that; the checkpoint
    writer comes last, so that it saves every other callback's new state. Ranks other than
    0 under DDP (`main=False`) write nothing: no trackers, no checkpoints.
    """
    from trainpipe.registry import TRACKERS

    t = cfg.train
    cbs: list[Callback] = [console]
    if t.batch_size_schedule:
        cbs.append(BatchSizeSchedule(cfg.data.batch_size, t.batch_size_schedule, t.lr_scaling))
    if t.early_stopping is not None:
        es = t.early_stopping
        cbs.append(EarlyStopping(es.monitor or t.monitor, es.mode or t.monitor_mode, es.patience,
                                 es.min_delta, es.restore_best))
    if main:
        # Each tracker's options come from its own section, tracking.<name> (checked by the config).
        cbs += [TRACKERS.build(name, run_dir, cfg, **cfg.tracking.options_for(name)) for name in cfg.tracking.enabled()]
    cbs += list(extra)
    if main:
        ck = t.checkpoint
        cbs.append(Checkpoint(run_dir / rundir.CHECKPOINTS, every=ck.every, keep=ck.keep, save_best=ck.best,
                              config=cfg.to_dict()))
    return cbs


def final_summary(trainer: Any, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Test metrics of the best checkpoint (never used for selection), plus the run's bests."""
    state = trainer.state
    out: dict[str, Any] = bests(state, cfg.train.monitor)
    if state.history:
        last = state.history[-1]
        out.update({f"final/{k}": v for k, v in last.items() if k.startswith("train/")})
        times = [h["epoch_time_s"] for h in state.history if "epoch_time_s" in h]
        out["epoch_time_s"] = sum(times) / len(times) if times else None
    best_path = run_dir / rundir.CHECKPOINTS / ckpt.BEST
    if trainer.data.test is not None:
        model = trainer.eval_model
        if best_path.is_file():
            # Evaluate best.pt in the model's place, then put the current weights back:
            # what stays in memory is decided by the callbacks (early_stopping.restore_best).
            current = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            model.load_state_dict(ckpt.load(best_path, map_location=trainer.device)["model"])
            out.update(trainer.evaluate(trainer.data.test, prefix="test", model=model))
            model.load_state_dict(current)
        else:
            out.update(trainer.evaluate(trainer.data.test, prefix="test", model=model))
    return out
