"""Runs killed with SIGKILL, trained in a fresh interpreter (multiprocessing's spawn).

A forked child would inherit whatever earlier tests left in the pytest process
(autograd's worker threads refuse to run after a fork; W&B's service thread), so
whether it could train would depend on the order tests ran in. A spawned child
starts clean, with one torch thread like the test process, so its numbers match a
reference trained there bit for bit.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any


def train_and_kill(run_dir: Path, overrides: list[str], *, hook: Callable[[], None] | None = None,
                   kill_when: Callable[[], bool] | None = None, timeout_s: float = 120) -> None:
    """Train in a child process; SIGKILL it when `kill_when()` turns true, or let `hook`
    (a picklable function run in the child before training) make it kill itself."""
    child = mp.get_context("spawn").Process(target=_train, args=(str(run_dir), overrides, hook))
    child.start()
    deadline = time.monotonic() + timeout_s
    while kill_when is not None and not kill_when() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    if kill_when is not None and child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
    child.join(timeout_s)
    assert child.exitcode == -signal.SIGKILL, f"the run ended before the kill (exit code {child.exitcode})"


def _train(run_dir: str, overrides: list[str], hook: Callable[[], None] | None) -> None:
    import torch

    import trainpipe

    torch.set_num_threads(1)
    if hook is not None:
        hook()
    trainpipe.train(None, overrides, output=run_dir, quiet=True)


def _die_at_step(n: int) -> None:
    from trainpipe.loop.trainer import Trainer

    real = Trainer.train_step
    calls = [0]

    def step(self: Trainer, *a: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *a)

    Trainer.train_step = step  # type: ignore[method-assign]


def die_at_step(n: int) -> Callable[[], None]:
    """A hook: the child kills itself just before its n-th training step (counted from 1)."""
    return partial(_die_at_step, n)


def _die_in_save(n: int) -> None:
    import torch

    real = torch.save
    calls = [0]

    def save(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        calls[0] += 1
        if calls[0] == n:
            buf = io.BytesIO()
            real(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real(obj, f, *a, **kw)

    torch.save = save  # type: ignore[assignment]


def die_in_save(n: int) -> Callable[[], None]:
    """A hook: the child writes half of its n-th torch.save, then kills itself."""
    return partial(_die_in_save, n)


def interrupt_in_epoch(monkeypatch: Any, epoch: int, before: Callable[[Any], None] | None = None) -> None:
    """Ctrl-C in the process itself: `Trainer.train_epoch` raises KeyboardInterrupt from the
    0-based `epoch` on, after `before(trainer)` (e.g. a progress bar put up)."""
    from trainpipe.loop.trainer import Trainer

    real = Trainer.train_epoch

    def train_epoch(self: Any, e: int) -> Any:
        if e >= epoch:
            if before is not None:
                before(self)
            raise KeyboardInterrupt
        return real(self, e)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def train_and_signal(run_dir: Path, overrides: list[str], hook: Callable[[], None], *,
                     timeout_s: float = 300) -> int:
    """Train through the CLI in a child process, which `hook` makes signal itself; returns its exit code."""
    child = mp.get_context("spawn").Process(target=_train_cli, args=(str(run_dir), overrides, hook))
    child.start()
    child.join(timeout_s)
    if child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
        raise AssertionError("the signalled run did not stop")
    return child.exitcode


def _train_cli(run_dir: str, overrides: list[str], hook: Callable[[], None]) -> None:
    import sys

    import torch

    from trainpipe.cli import main

    torch.set_num_threads(1)
    hook()
    sys.exit(main(["train", *overrides, "--output", run_dir, "--quiet"]))


def _signal_at_step(n: int, signum: int) -> None:
    from trainpipe.loop.trainer import Trainer

    real = Trainer.train_step
    calls = [0]

    def step(self: Trainer, *a: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signum)  # delivered as from `kill -SIG PID`, while the step runs
        return real(self, *a)

    Trainer.train_step = step  # type: ignore[method-assign]


def signal_at_step(n: int, signum: int) -> Callable[[], None]:
    """A hook: the child sends itself `signum` during its n-th training step (counted from 1)."""
    return partial(_signal_at_step, n, signum)
