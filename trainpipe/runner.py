"""`train()`: one run, from config to summary. The CLI and sweeps call this.

The order is fixed: the resolved config is written before anything can fail, then
data, model, optimizer, schedule, the loop, the test evaluation of the best
checkpoint, and the summary. `summary.json` always ends with a status, also when
the run fails or is interrupted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from trainpipe import checkpoint as ckpt
from trainpipe import config as config_mod
from trainpipe.callbacks import Callback, Checkpoint, EarlyStopping
from trainpipe.config import RunConfig
from trainpipe.errors import ConfigError

ConfigLike = str | Path | Mapping[str, Any] | RunConfig | None


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config: RunConfig | None = None

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")


def resolve(config: ConfigLike = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> RunConfig:
    if isinstance(config, RunConfig):
        return config_mod.load(base=config, overrides=overrides) if overrides else config
    if isinstance(config, Mapping):
        return config_mod.load(base=config, overrides=overrides)
    return config_mod.load(config, overrides)


def versions() -> dict[str, str]:
    from trainpipe import __version__

    return {"trainpipe": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def new_run_dir(cfg: RunConfig, output: str | Path | None) -> Path:
    if output is not None:
        return Path(output)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg.name}-{stamp}"
    d, i = base, 1
    while d.exists():  # two runs started in the same second
        i += 1
        d = base.with_name(f"{base.name}-{i}")
    return d


def write_config(run_dir: Path, cfg: RunConfig, command: str) -> None:
    v = versions()
    header = (
        f"# Resolved config of this run (every default filled in).\n"
        f"# command: {command}\n"
        f"# written: {dt.datetime.now().isoformat(timespec='seconds')}\n"
        f"# versions: trainpipe {v['trainpipe']}, torch {v['torch']}, python {v['python']}\n"
    )
    (run_dir / "config.yaml").write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def append_history(run_dir: Path, event: dict[str, Any]) -> None:
    """history.jsonl: every train/resume of this directory, with its overrides."""
    event = {"time": dt.datetime.now().isoformat(timespec="seconds"), **event, **versions()}
    with (run_dir / "history.jsonl").open("a") as f:
        f.write(json.dumps(event) + "\n")


def train(
    config: ConfigLike = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    output: str | Path | None = None,
    *,
    quiet: bool = False,
    callbacks: Sequence[Callback] = (),
    command: str | None = None,
) -> RunResult:
    """Run one training, exactly as `trainpipe train` does; returns the run's results.

    `config` is a YAML path, the name of a packaged config, a dict, a `RunConfig`, or
    None for the packaged quickstart (digits). `overrides` are `key.sub=value`
    strings or a {dotted key: value} dict.
    """
    cfg = resolve(config, overrides)
    run_dir = new_run_dir(cfg, output)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = command or f"trainpipe.train({config!r}, overrides={list(overrides)!r})"
    write_config(run_dir, cfg, command)
    append_history(run_dir, {"event": "train", "command": command, "overrides": _as_list(overrides)})
    return execute(cfg, run_dir, quiet=quiet, extra_callbacks=callbacks)


def _as_list(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    if isinstance(overrides, Mapping):
        return [f"{k}={v}" for k, v in overrides.items()]
    return [str(o) for o in overrides]


def execute(
    cfg: RunConfig,
    run_dir: Path,
    *,
    quiet: bool = False,
    extra_callbacks: Sequence[Callback] = (),
    resume_state: dict[str, Any] | None = None,
) -> RunResult:
    """Build everything from `cfg` and run the loop in `run_dir` (fresh or resumed)."""
    from trainpipe import data as data_mod
    from trainpipe import models, optim, sched
    from trainpipe.engine import Trainer, resolve_device
    from trainpipe.console import console_report

    started = time.perf_counter()
    prior_wall = (resume_state or {}).get("wall_time_s", 0.0)
    summary: dict[str, Any] = {"status": "running", "name": cfg.name, "seed": cfg.seed, "run_dir": str(run_dir)}
    summary_path = run_dir / "summary.json"
    write_json(summary_path, summary)
    out = console_report(quiet)
    trainer = None
    try:
        ckpt.seed_everything(cfg.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        device = resolve_device(cfg.train.device)
        data = data_mod.build(cfg.data, seed=cfg.seed, device=device, channels_last=cfg.train.channels_last)
        m = cfg.model
        model = models.build(m.name, m.options(), data.spec, pretrained=m.pretrained, weights=m.weights,
                             input_size=m.input_size, freeze=m.freeze)
        stats = models.model_stats(model, data.spec)
        model = model.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
        o = cfg.optim
        optimizer = optim.build(o.name, o.options(), model, lr=o.lr, weight_decay=o.weight_decay,
                                decay_norm_and_bias=o.decay_norm_and_bias, backbone_lr_mult=o.backbone_lr_mult)
        s = cfg.sched
        schedule = sched.build(s.name, s.options(), optimizer, epochs=cfg.train.epochs,
                               steps_per_epoch=max(len(data.train), 1), warmup_epochs=s.warmup_epochs,
                               warmup_steps=s.warmup_steps, monitor_mode=cfg.train.monitor_mode)
        summary.update({"device": str(device), "loader": data.info.get("loader"), **stats,
                        "train_size": data.info.get("train_size"), "val_size": data.info.get("val_size"),
                        "test_size": data.info.get("test_size")})
        write_json(summary_path, summary)
        out.start(cfg, run_dir, summary)

        callbacks = build_callbacks(cfg, run_dir) + list(extra_callbacks)
        callbacks.append(Checkpoint(run_dir / "checkpoints", every=cfg.train.checkpoint.every,
                                    keep=cfg.train.checkpoint.keep, save_best=cfg.train.checkpoint.best,
                                    config=cfg.to_dict()))
        progress = out.progress(cfg, data)
        trainer = Trainer(cfg, model, optimizer, schedule, data, device=device, callbacks=callbacks,
                          progress=progress)
        if resume_state is not None:
            trainer.load_state_dict(resume_state)
            ckpt.restore_rng(resume_state["rng"])
        out.attach(trainer)
        state = trainer.fit()

        summary.update(final_summary(trainer, cfg, run_dir))
        summary["status"] = {"non_finite_loss": "failed", "pruned": "pruned"}.get(state.stop_reason, "completed")
        summary["stop_reason"] = state.stop_reason
    except KeyboardInterrupt:
        summary.update({"status": "interrupted", "stop_reason": "interrupted"})
        raise
    except ConfigError:
        summary.update({"status": "failed", "stop_reason": "config_error"})
        raise
    except Exception as e:
        summary.update({"status": "failed", "stop_reason": "error", "error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        if trainer is not None:
            st = trainer.state
            summary.setdefault("best_epoch", st.best_epoch)
            summary["epochs_run"] = st.epoch
            summary.setdefault(f"best/{cfg.train.monitor}", st.best_metric)
        summary["wall_time_s"] = prior_wall + (time.perf_counter() - started)
        write_json(summary_path, summary)
    result = RunResult(run_dir, summary, list(trainer.state.history), cfg)
    out.finish(result)
    return result


def build_callbacks(cfg: RunConfig, run_dir: Path) -> list[Callback]:
    from trainpipe.registry import TRACKERS

    t = cfg.train
    cbs: list[Callback] = []
    if t.batch_size_schedule:
        from trainpipe.callbacks import BatchSizeSchedule

        cbs.append(BatchSizeSchedule(cfg.data.batch_size, t.batch_size_schedule, t.lr_scaling))
    if t.early_stopping is not None:
        es = t.early_stopping
        cbs.append(EarlyStopping(es.monitor or t.monitor, es.mode or t.monitor_mode, es.patience,
                                 es.min_delta, es.restore_best))
    cbs.append(TRACKERS.build("jsonl", run_dir))
    for name in enabled_trackers(cfg):
        cbs.append(TRACKERS.build(name, run_dir, cfg))
    return cbs


def enabled_trackers(cfg: RunConfig) -> list[str]:
    names = []
    if cfg.tracking.tensorboard:
        names.append("tensorboard")
    if cfg.tracking.wandb is not None and cfg.tracking.wandb.mode != "disabled":
        names.append("wandb")
    if cfg.tracking.plots:
        names.append("plots")
    return [n for n in names if n in _tracker_names()]


def _tracker_names() -> list[str]:
    from trainpipe.registry import TRACKERS

    return TRACKERS.names()


def final_summary(trainer: Any, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Test metrics of the best checkpoint (never used for selection), plus the run's bests."""
    st = trainer.state
    out: dict[str, Any] = {"best_epoch": st.best_epoch, "epochs_run": st.epoch,
                           f"best/{cfg.train.monitor}": st.best_metric}
    if st.history:
        last = st.history[-1]
        out.update({f"final/{k}": v for k, v in last.items() if k.startswith("train/")})
        times = [h["epoch_time_s"] for h in st.history if "epoch_time_s" in h]
        out["epoch_time_s"] = sum(times) / len(times) if times else None
    best_path = run_dir / "checkpoints" / "best.pt"
    if trainer.data.test is not None:
        model = trainer.eval_model
        if best_path.is_file():
            model.load_state_dict(ckpt.load(best_path, map_location=trainer.device)["model"])
        out.update(trainer.evaluate(trainer.data.test, prefix="test", model=model))
    return out
