"""Benchmarks of trainpipe against baselines measured in the same run; results in BENCHMARKS.md.

Every section is a module with `run(quick: bool = False) -> Section`: it prints its own
table while it runs and returns the Markdown block that `python -m bench` writes between
the section's markers in BENCHMARKS.md (everything outside the markers is left alone).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
SHARED_DATA = ROOT.parent / "shared" / "data"


@dataclass
class Section:
    """One section's results: `markdown` goes into BENCHMARKS.md between its markers."""

    name: str
    markdown: str
    ok: bool = True  # False when a requirement the section checks (e.g. a ratio bound) failed


def hardware(*, threads: bool = True) -> str:
    """A one-line description of where the numbers were measured (`threads`: this process's torch threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = torch.get_num_threads()
    parts = [f"{cpu}, {cores} cores available",
             f"torch {torch.__version__}" + (f", {n} thread{'s' * (n != 1)}" if threads else "")]
    if torch.cuda.is_available():
        parts.insert(0, f"{torch.cuda.get_device_name()}")
    return "; ".join(parts)


def today() -> str:
    return dt.date.today().isoformat()


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, *, cpu_time: bool = False) -> float:
    """Seconds `fn` takes: wall-clock, or with `cpu_time` this process's CPU time.

    CPU time is what a comparison of two CPU loops should use on a shared machine: other
    processes' load changes wall-clock time by tens of percent, but not the CPU time this
    process itself spends (run single-threaded, so that idle threads spinning do not count).
    """
    clock = time.process_time if cpu_time else time.perf_counter
    sync(device)
    start = clock()
    fn()
    sync(device)
    return clock() - start


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> str:
    """'median (min-max)' with three significant digits."""
    return f"{median(xs):.3g} ({min(xs):.3g}-{max(xs):.3g})"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable as plain text on a console)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def write_section(section: Section, path: Path = BENCHMARKS_MD) -> bool:
    """Replace the block between the section's markers; False when the file has no such markers."""
    if not path.is_file():
        return False
    start, end = markers(section.name)
    text = path.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return False
    block = f"{start}\n{section.markdown.strip()}\n{end}"
    path.write_text(pattern.sub(lambda _: block, text, count=1))
    return True


def add_write_option(p: argparse.ArgumentParser) -> None:
    """`--no-write` for a section run on its own (`python -m bench SECTION`)."""
    p.add_argument("--no-write", action="store_true", help=f"print only; leave {BENCHMARKS_MD.name} alone")


def publish(section: Section, args: argparse.Namespace, path: Path = BENCHMARKS_MD) -> None:
    """Refresh the section's block of BENCHMARKS.md, unless --no-write or --quick (not for quoting)."""
    if not args.no_write and not args.quick and not write_section(section, path):
        print(f"   ({path.name} has no markers for {section.name!r}; results printed only)")
