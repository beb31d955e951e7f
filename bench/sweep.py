"""Sweep throughput: trials per hour of one fixed small sweep with 1, 2 and 4 workers on one device.

The sweep is a grid of 8 trials on the packaged quickstart (digits, cnn_small): 4 learning
rates x 2 widths, 10 epochs each (several seconds per trial, so that running trials side by
side matters more than starting the workers). Each measurement is the wall-clock time of the command
users run, `trainpipe sweep SWEEP.yaml --output DIR --workers N`, from start to exit
(worker start-up included), into a fresh directory, so trials/hour = 8 / time x 3600.
The worker counts alternate in order between repeats; the table gives medians. The
baseline is the same sweep with 1 worker, measured in the same run: the speed-up says
how much the workers slow each other down (on a machine with C cores, more than C
workers cannot help). Every worker runs one torch thread (OMP_NUM_THREADS=1), so that the
comparison is between worker counts, not thread counts: on a shared machine, a single
worker's two OpenMP threads waiting on each other can cost more than the second core gives.
The CPU seconds per trial (the command and all its workers) tell whether workers slow each
other beyond sharing the cores: if they stay flat while the wall time does not drop, the
cores were simply busy (other jobs, or fewer cores than workers).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from bench import Section, add_write_option, hardware, median, publish, spread, table, today

GRID = {"optim.lr": {"values": [0.02, 0.05, 0.1, 0.2]}, "model.width": {"values": [16, 32]}}
FIXED = {"train.epochs": 10, "tracking.plots": False, "tracking.progress": "none"}


def sweep_file(folder: Path, *, quick: bool) -> tuple[Path, int]:
    grid = {"optim.lr": {"values": [0.05, 0.2]}} if quick else GRID
    fixed = {**FIXED, "train.epochs": 1} if quick else FIXED
    data = {"name": "bench-sweep", "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
            "parameters": grid, "fixed": fixed}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    trials = 1
    for p in grid.values():
        trials *= len(p["values"])
    return path, trials


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_sweep(spec: Path, out: Path, workers: int) -> tuple[float, float]:
    """Wall-clock seconds of the sweep command, and the CPU seconds it and its workers used."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cpu0, start = _children_cpu_s(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "trainpipe", "sweep", str(spec), "--output", str(out),
                           "--workers", str(workers)], env=env, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - start, _children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep with {workers} workers failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed, cpu


def completed(out: Path) -> int:
    from trainpipe.sweep import open_sweep, trial_rows

    spec, study = open_sweep(out)
    return sum(r.state == "completed" for r in trial_rows(study, spec))


def run(quick: bool = False, *, workers: Sequence[int] = (1, 2, 4), repeats: int | None = None) -> Section:
    repeats = repeats or (1 if quick else 3)
    workers = [w for w in workers if not quick or w <= 2]
    times: dict[int, list[float]] = {w: [] for w in workers}
    cpu: dict[int, list[float]] = {w: [] for w in workers}
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-sweep-") as tmp:
        spec, trials = sweep_file(Path(tmp), quick=quick)
        for r in range(repeats):
            for w in workers if r % 2 == 0 else workers[::-1]:
                out = Path(tmp) / f"w{w}-r{r}"
                wall, used = time_sweep(spec, out, w)
                times[w].append(wall)
                cpu[w].append(used)
                done = completed(out)
                if done != trials:
                    raise RuntimeError(f"the sweep with {w} workers completed {done} of {trials} trials")
                print(f"  {w} worker(s), repeat {r + 1}: {times[w][-1]:.1f}s", flush=True)
    base = median(times[workers[0]])
    rows = [[w, spread(ts), f"{trials / median(ts) * 3600:,.0f}", f"{base / median(ts):.2f}",
             f"{median(cpu[w]) / trials:.2f}"] for w, ts in times.items()]
    body = table(["workers", "sweep wall time s (median, min-max)", "trials/hour", f"speed-up vs {workers[0]}",
                  "CPU s per trial"], rows)
    print(body)
    md = "\n".join([
        f"`python -m bench sweep` (also part of `make bench`), measured {today()} on {hardware(threads=False)}. "
        f"A grid of {trials} quickstart trials ({'1 epoch' if quick else '10 epochs'} each, digits, cnn_small) run "
        f"by `trainpipe sweep --workers N` on the CPU, one thread per worker; median of {repeats} repeats in "
        f"alternating order"
        f"{' (quick mode: not for quoting)' if quick else ''}.",
        "",
        body,
    ])
    return Section("sweep", md)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench sweep", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 one-epoch trials, 1 and 2 workers: checks that it runs")
    p.add_argument("--repeats", type=int, default=None, help="runs per worker count (default 3)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts (default 1 2 4)")
    add_write_option(p)
    a = p.parse_args(argv)
    section = run(a.quick, workers=a.workers, repeats=a.repeats)
    publish(section, a)
    return 0
