"""The run directory: every file name in it, how each is written, and how each is read.

    runs/<name>-<time>/
      config.yaml      the resolved config, written first (header: command, time, versions)
      summary.json     status, bests, test metrics, sizes, times; rewritten as the run goes
      metrics.jsonl    one JSON object per epoch
      history.jsonl    every train / resume / rollback of this directory
      process.json     pid, host and start time of the process running it (tells a killed run)
      checkpoints/     last.pt, previous.pt, best.pt, epoch-NNNN.pt
      eval-<checkpoint>-<split>.json, confusion-<checkpoint>-<split>.png   `trainpipe eval`
      curves.png  tb/  wandb_id.txt                                      trackers

Writers go through `trainpipe.files` (temporary file, fsync, rename), so a reader never
sees half a file; readers skip a line cut short by a killed process.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainpipe import files
from trainpipe.errors import ConfigError

CONFIG = "config.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
HISTORY = "history.jsonl"
PROCESS = "process.json"
CHECKPOINTS = "checkpoints"
CURVES = "curves.png"
TENSORBOARD = "tb"
WANDB_ID = "wandb_id.txt"
# Files that only a run writes: a directory holding any of them holds a run.
RUN_MARKERS = (CONFIG, SUMMARY, METRICS, CHECKPOINTS)


def fresh(name: str, parent: str | Path = "runs") -> Path:
    """A directory path that does not exist yet: parent/<name>-<date>-<time>, with -2, -3, ...
    when several start in the same second."""
    base = Path(parent) / f"{name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    d, i = base, 1
    while d.exists():
        i += 1
        d = base.with_name(f"{base.name}-{i}")
    return d


def eval_names(checkpoint: str | Path, split: str, tta: bool) -> tuple[str, str]:
    """(json, png) file names of one evaluation: one pair per checkpoint, split and TTA setting,
    so evaluating last.pt never replaces the evaluation of best.pt."""
    stem = f"{Path(checkpoint).stem}-{split}{'-tta' if tta else ''}"
    return f"eval-{stem}.json", f"confusion-{stem}.png"


def holds_run(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / name).exists() for name in RUN_MARKERS)


# ---------------------------------------------------------------------- writers
def versions() -> dict[str, str]:
    from trainpipe import __version__

    torch = sys.modules.get("torch")
    return {"trainpipe": __version__, "torch": getattr(torch, "__version__", "?"), "python": sys.version.split()[0]}


def write_config(run_dir: Path, cfg: Any, command: str) -> None:
    import yaml

    v = versions()
    header = (
        f"# Resolved config of this run (every default filled in).\n"
        f"# command: {command}\n"
        f"# written: {dt.datetime.now().isoformat(timespec='seconds')}\n"
        f"# versions: trainpipe {v['trainpipe']}, torch {v['torch']}, python {v['python']}\n"
    )
    files.write_text(run_dir / CONFIG, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    files.write_json(run_dir / SUMMARY, summary)


def append_history(run_dir: Path, event: dict[str, Any]) -> None:
    """history.jsonl: every train/resume of this directory, with its overrides."""
    event = {"time": dt.datetime.now().isoformat(timespec="seconds"), **event, **versions()}
    files.append_text(run_dir / HISTORY, json.dumps(event) + "\n")


def write_process(run_dir: Path) -> None:
    """Record which process runs this directory, so that a reader can tell a killed run."""
    files.write_json(run_dir / PROCESS, this_process())


# ---------------------------------------------------------------------- readers
def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, one per line; a line cut short by a crash is skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / METRICS)


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / HISTORY)


def read_summary(run_dir: str | Path, *, strict: bool = False) -> dict[str, Any]:
    """summary.json as a dict; {} when it is missing or unreadable, unless `strict`
    (then a ConfigError naming the file)."""
    p = Path(run_dir) / SUMMARY
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        if strict:
            raise ConfigError(f"{p} cannot be read ({e}); the run may still be writing it.") from None
        return {}
    return data if isinstance(data, dict) else {}


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """config.yaml as a plain dict ({} when missing)."""
    import yaml

    p = Path(run_dir) / CONFIG
    if not p.is_file():
        return {}
    return yaml.safe_load(p.read_text()) or {}


# ------------------------------------------------------------ is it still running?
# One answer for run directories (process.json) and sweep trials (their worker record):
# a process is identified by its pid, the machine it ran on, and its start time, so that
# a later process that got the same pid is not taken for it.
@functools.lru_cache(maxsize=1)
def machine_id() -> str:
    """Host plus boot and process-namespace ids: two containers on one host differ."""
    parts = [socket.gethostname(), _boot_id()]
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return "|".join(p for p in parts if p)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """The process's start time since boot (field 22 of /proc/PID/stat): with the pid, it tells
    the process apart from a later one that got the same pid. None when unknown or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _pid_alive(pid: int) -> bool:
    """Without /proc start times: whether any live (not zombie) process has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def this_process() -> dict[str, Any]:
    """A record of the running process that `gone()` can judge later, on any machine."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "machine": machine_id(), "boot": _boot_id(),
            "start": _start_ticks(os.getpid())}


def is_current(rec: Mapping[str, Any]) -> bool:
    """Whether `rec` (a `this_process()` record) describes the process calling this."""
    return (rec.get("pid") == os.getpid() and rec.get("host") == socket.gethostname()
            and rec.get("machine", machine_id()) == machine_id())


def gone(rec: Mapping[str, Any]) -> bool | None:
    """True when the process `rec` records no longer runs, False while it does, None when this
    machine cannot tell (it ran on another machine, or the record has no pid)."""
    try:
        pid = int(rec["pid"])
    except (ValueError, KeyError, TypeError):
        return None
    if "machine" in rec:
        if rec["machine"] != machine_id():
            return None
    elif rec.get("host") != socket.gethostname() or rec.get("boot") != _boot_id():
        return None  # a record written before `machine` was kept
    if rec.get("start") is not None:
        return _start_ticks(pid) != rec["start"]
    return not _pid_alive(pid)


def read_process(run_dir: str | Path) -> dict[str, Any]:
    try:
        rec = json.loads((Path(run_dir) / PROCESS).read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def is_this_process(run_dir: str | Path) -> bool:
    return is_current(read_process(run_dir))


def process_gone(run_dir: str | Path) -> bool | None:
    """True when the process recorded in process.json no longer runs; None when this machine
    cannot tell (another machine, no record)."""
    return gone(read_process(run_dir))


def resume_command(run_dir: str | Path) -> str:
    import shlex

    return f"trainpipe resume {shlex.quote(str(run_dir))}"


def status(run_dir: str | Path, summary: dict[str, Any] | None = None) -> str:
    """The run's status as a user should read it: summary.json's, except that a run marked
    "running" whose process is gone (killed, machine rebooted) is "interrupted"."""
    s = read_summary(run_dir) if summary is None else summary
    st = str(s.get("status", "unknown"))
    if st == "running" and process_gone(run_dir):
        return "interrupted"
    return st


def describe_status(run_dir: str | Path, summary: dict[str, Any] | None = None) -> str:
    """One line for people: the status, and for a run that stopped before its end, how to continue it."""
    s = read_summary(run_dir) if summary is None else summary
    st = status(run_dir, s)
    if st == "interrupted":
        done = s.get("epochs_run") or max((int(r.get("epoch", 0)) for r in read_metrics(run_dir)), default=0)
        at = f" after epoch {done}" if done else ""
        return f"interrupted{at} (its process is gone); `{resume_command(run_dir)}` continues it"
    if st == "failed" and s.get("error"):
        return f"failed: {s['error']}"
    return st
