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
# Every name trainpipe writes into a run directory (train, resume, eval, report, trackers).
# `--overwrite` deletes these and nothing else; the README's "The run directory" lists them.
OWN_FILES = (CONFIG, SUMMARY, METRICS, HISTORY, PROCESS, CURVES, WANDB_ID,
             "report.md", "report.html", "confusion_matrix.csv")
OWN_PATTERNS = ("eval-*.json", "confusion-*.png", ".*.tmp")  # .NAME.XXXX.tmp: a write cut short
# Folders trainpipe makes in a run directory, and what it writes in them (W&B's folder only
# when WANDB_DIR is unset). A folder is removed only once nothing else is left in it.
OWN_FOLDERS = {
    CHECKPOINTS: ("last.pt", "previous.pt", "best.pt", "epoch-*.pt", ".*.tmp"),
    TENSORBOARD: ("events.out.tfevents.*",),
    "report_files": ("*.png",),
    "wandb": ("run-*", "offline-run-*", "latest-run", "debug.log", "debug-internal.log"),
}
CONFIG_HEADER = "# Resolved config of this run"


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


def written_by_trainpipe(path: str | Path) -> bool:
    """Whether `path` holds a run that trainpipe wrote: its config.yaml starts with the header
    that trainpipe writes (a project folder's own config.yaml does not)."""
    try:
        with open(Path(path) / CONFIG, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(CONFIG_HEADER)
    except OSError:
        return False


def own_entries(path: str | Path) -> list[Path]:
    """The files and folders in run directory `path` that trainpipe wrote, by the names above."""
    import fnmatch

    p = Path(path)
    try:
        names = sorted(os.listdir(p))
    except OSError:
        return []

    def owned(name: str, patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)

    out = []
    for name in names:
        entry = p / name
        if name in OWN_FOLDERS and entry.is_dir() and not entry.is_symlink():
            out += [entry / n for n in sorted(os.listdir(entry)) if owned(n, OWN_FOLDERS[name])]
            out.append(entry)
        elif name in OWN_FILES or owned(name, OWN_PATTERNS):
            if entry.is_file() or entry.is_symlink():
                out.append(entry)
    return out


def remove_run(path: str | Path, *, keep_dir: bool = False) -> list[str]:
    """Delete what trainpipe wrote in run directory `path` (`own_entries`), and the directory
    itself when nothing else is left (unless `keep_dir`: a folder the user made);
    returns the names of the entries kept (not trainpipe's)."""
    import shutil

    p = Path(path)
    for entry in own_entries(p):
        if entry.is_dir() and not entry.is_symlink():
            if entry.name in OWN_FOLDERS and entry.parent == p:
                try:
                    entry.rmdir()  # only when empty: a file of the user's in it stays
                except OSError:
                    pass
            else:
                shutil.rmtree(entry)  # a W&B run folder: W&B's files only
        else:
            entry.unlink(missing_ok=True)
    try:
        kept = sorted(os.listdir(p))
    except OSError:
        return []
    if not kept and not keep_dir:
        p.rmdir()
    return kept


def protected_target(path: str | Path) -> str | None:
    """Why `path` must never be a target of deletion (the root, the home directory, the current
    directory or one of its parents), or None."""
    target = Path(path).resolve()  # "~" is a folder of that name here: the shell expands it, not trainpipe
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "it is the root of the file system"
    if target == Path.home().resolve():
        return "it is your home directory"
    if target == cwd:
        return "it is the current directory"
    if target in cwd.parents:
        return "it holds the current directory"
    return None


def live_owner(run_dir: str | Path) -> dict[str, Any] | None:
    """The process record of another process that is training `run_dir` now, else None."""
    if read_summary(run_dir).get("status") != "running":
        return None
    rec = read_process(run_dir)
    if gone(rec) is False and not is_current(rec):
        return rec
    return None


def describe_owner(rec: Mapping[str, Any]) -> str:
    return f"pid {rec.get('pid')} on {rec.get('host', '?')}"


# ---------------------------------------------------------------------- writers
def versions() -> dict[str, str]:
    from trainpipe import __version__

    torch = sys.modules.get("torch")
    return {"trainpipe": __version__, "torch": getattr(torch, "__version__", "?"), "python": sys.version.split()[0]}


def write_config(run_dir: Path, cfg: Any, command: str) -> None:
    import yaml

    v = versions()
    header = (
        f"{CONFIG_HEADER} (every default filled in).\n"
        f"# command: {command}\n"
        f"# written: {dt.datetime.now().isoformat(timespec='seconds')}\n"
        f"# versions: trainpipe {v['trainpipe']}, torch {v['torch']}, python {v['python']}\n"
    )
    files.write_text(run_dir / CONFIG, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


AUTO_NOTE = "# auto chose: "


def note_auto_choices(run_dir: Path, choices: dict[str, str]) -> None:
    """Add to config.yaml's header what its `auto` values chose on this machine, e.g.
    `# auto chose: train.channels_last=true (2-D convolutions on cpu)`; a resumed run
    replaces the note of the process before it."""
    if not choices:
        return
    path = run_dir / CONFIG
    lines = [line for line in path.read_text().splitlines(keepends=True) if not line.startswith(AUTO_NOTE)]
    end = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    note = AUTO_NOTE + "; ".join(f"{k}={v}" for k, v in choices.items()) + "\n"
    files.write_text(path, "".join([*lines[:end], note, *lines[end:]]))


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


def unreadable_lines(path: str | Path) -> list[int]:
    """The 1-based numbers of the lines of a .jsonl file that are not a JSON object (cut short)."""
    p = Path(path)
    if not p.is_file():
        return []
    bad = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        try:
            ok = isinstance(json.loads(line), dict)
        except json.JSONDecodeError:
            ok = not line.strip()
        if not ok:
            bad.append(i)
    return bad


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
    """config.yaml as a plain dict ({} when missing); a file that is not a config is a
    ConfigError naming it."""
    from trainpipe.config import read_yaml

    p = Path(run_dir) / CONFIG
    if not p.is_file():
        return {}
    return read_yaml(p, what="run config")


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
    current = str(s.get("status", "unknown"))
    if current == "running" and process_gone(run_dir):
        return "interrupted"
    return current


def describe_status(run_dir: str | Path, summary: dict[str, Any] | None = None) -> str:
    """One line for people: the status, and for a run that stopped before its end, how to continue it."""
    s = read_summary(run_dir) if summary is None else summary
    current = status(run_dir, s)
    if current == "interrupted":
        done = s.get("epochs_run") or max((int(r.get("epoch", 0)) for r in read_metrics(run_dir)), default=0)
        at = f" after epoch {done}" if done else ""
        return f"interrupted{at} (its process is gone); `{resume_command(run_dir)}` continues it"
    if current == "failed" and s.get("error"):
        return f"failed: {s['error']}"
    return current
