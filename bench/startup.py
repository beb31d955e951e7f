"""Start-up time of the `trainpipe` command, as ratios to `python -c "import torch"`.

Each command is run as users run it, a fresh process from start to exit; so is the
baseline, in the same rounds, in alternating order, so that both see the same machine
and the same file-system cache. The ratios are medians over the rounds. Bounds: `--help`
and an argument error at most 0.25 (they must not import torch), `check quickstart` and
`list` at most 1.3 (they need the registries' entries, hence torch, but neither
torchvision, timm, Optuna nor matplotlib).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from bench import Section, add_write_option, hardware, median, publish, spread, table, today

BASELINE = ("import torch", [sys.executable, "-c", "import torch"])
# (what, arguments after `python -m trainpipe`, exit status expected, bound as a ratio)
COMMANDS = (
    ("trainpipe --help", ["--help"], 0, 0.25),
    ("trainpipe train --outptu x (argument error)", ["train", "--outptu", "x"], 2, 0.25),
    ("trainpipe check quickstart", ["check", "quickstart"], 0, 1.3),
    ("trainpipe list", ["list"], 0, 1.3),
)


def time_command(cmd: list[str], expect: int, cwd: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != expect:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}, expected {expect}:\n{proc.stderr[-2000:]}")
    return elapsed


def run(quick: bool = False, *, rounds: int | None = None) -> Section:
    rounds = rounds or (1 if quick else 3)
    cands = [BASELINE] + [(what, [sys.executable, "-m", "trainpipe", *args]) for what, args, _, _ in COMMANDS]
    expect = {BASELINE[0]: 0} | {what: code for what, _, code, _ in COMMANDS}
    times: dict[str, list[float]] = {what: [] for what, _ in cands}
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-startup-") as tmp:
        for what, cmd in cands:  # warm-up: the first start of a process reads its files from disk
            time_command(cmd, expect[what], tmp)
        for r in range(rounds):
            for what, cmd in cands if r % 2 == 0 else cands[::-1]:
                times[what].append(time_command(cmd, expect[what], tmp))
    base = median(times[BASELINE[0]])
    rows, ok = [["`python -c \"import torch\"` (baseline)", spread(times[BASELINE[0]]), "1.00", "-", "-"]], True
    for what, _, _, bound in COMMANDS:
        ratio = median(times[what]) / base
        met = ratio <= bound
        ok &= met
        rows.append([f"`{what}`", spread(times[what]), f"{ratio:.2f}", f"{bound:g}", "met" if met else "NOT MET"])
    body = table(["command", "seconds (median, min-max)", "ratio to import torch", "bound", ""], rows)
    print(body)
    md = "\n".join([
        f"`python -m bench startup` (also part of `make bench`), measured {today()} on {hardware(threads=False)}. "
        f"Each command a fresh process from start to exit, after one warm-up start of each; median of {rounds} "
        f"rounds in alternating order{' (quick mode: not for quoting)' if quick else ''}.",
        "",
        body,
    ])
    return Section("startup", md, ok=ok)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench startup", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round: checks that it runs")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    add_write_option(p)
    a = p.parse_args(argv)
    section = run(a.quick, rounds=a.rounds)
    publish(section, a)
    return 0 if section.ok else 1
