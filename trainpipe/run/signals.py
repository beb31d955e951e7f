"""Signals: SIGINT (Ctrl-C), SIGTERM and SIGUSR1 become a stop request.

While a run trains, the first of these signals does not break the loop where it happens:
it sets the run's `StopRequest`, which the loop honours at the next step boundary (after
an optimizer step), where the run saves a checkpoint that resumes exactly, mid-epoch.
The run then ends with status `interrupted`, its stop reason naming the signal
(`sigint`, `sigterm`, `sigusr1`), and the command exits with 128 + the signal's number
(130, 143, 138). Schedulers use these signals to say "stop soon": Slurm sends SIGUSR1
(or whatever `--signal` names) before the time limit and SIGTERM on preemption or
`scancel`.

A second signal stops at once (KeyboardInterrupt where the program is; the last
checkpoint is kept). A signal within `SAME_REQUEST_S` of the first is taken as the same
request delivered twice: a terminal sends Ctrl-C to every process of the job and a
sweep command forwards it to its workers too; `scancel` signals every process of a job.

Outside a training loop (a sweep worker between trials, a run still building its data)
a signal raises KeyboardInterrupt at once, as Python's default handler for SIGINT does.
Python runs handlers in the main thread only; elsewhere nothing is installed and the
signals keep their previous handlers.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from trainpipe.loop.stop import StopReason
from trainpipe.loop.trainer import StopRequest

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# A signal this soon after the first is the same request, delivered by two senders.
SAME_REQUEST_S = 1.0


class _State:
    target: StopRequest | None = None  # the training run's request, while one trains
    outer: StopRequest | None = None  # the outermost block's request (a worker between its runs)
    first_at: float | None = None  # when the first signal came (monotonic seconds)
    signum: int | None = None  # the first signal
    stop_now: bool = False  # a KeyboardInterrupt was raised; `check` raises it again
    depth: int = 0  # nested `handling` blocks (a sweep worker, then each of its runs)


def reason_of(signum: int) -> StopReason:
    """The stop reason a signal gives a run: `sigint`, `sigterm`, `sigusr1`."""
    return StopReason(signal.Signals(signum).name.lower())


def interrupted_reason() -> StopReason:
    """The stop reason of a run stopped at once: the first signal's, or `interrupted`."""
    return reason_of(_State.signum) if _State.signum is not None else StopReason.INTERRUPTED


def signal_of(reason: str | None) -> int | None:
    """The signal a stop reason names, or None when it names none."""
    for sig in SIGNALS:
        if reason == reason_of(sig):
            return int(sig)
    return None


def exit_code(signum: int | None) -> int:
    """The shell's convention: 128 + the signal's number (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1)."""
    return 128 + int(signum) if signum else 128 + int(signal.SIGINT)


def received() -> int | None:
    """The first signal received inside the outermost `handling` block, if any."""
    return _State.signum


def check() -> None:
    """Raise KeyboardInterrupt if a signal stopped the program at once (again: Python drops an
    exception raised while it runs a finaliser, a weakref callback in SQLAlchemy, say), or
    if the outermost block's request was set while no run trains. Code outside the training
    loop calls this at its safe points."""
    outer = _State.outer
    if _State.stop_now or (outer is not None and outer.reason is not None and _State.target is outer):
        raise KeyboardInterrupt


def _handler(signum: int, frame: FrameType | None) -> None:
    now = time.monotonic()
    if _State.first_at is not None and now - _State.first_at < SAME_REQUEST_S:
        return
    first = _State.first_at is None
    if first:
        _State.first_at, _State.signum = now, signum
    target = _State.target
    if first and target is not None and target.reason is None:
        target.reason = reason_of(signum)
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{what}: stopping at the next step boundary, with a checkpoint there; Ctrl-C again stops at "
              f"once (the last checkpoint is kept).", file=sys.stderr, flush=True)
        return
    if _State.stop_now:
        return  # stopping already; `check` raises again where it is safe
    _State.stop_now = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def handling(request: StopRequest | None = None) -> Iterator[None]:
    """Within this block SIGINT, SIGTERM and SIGUSR1 go to `request` (when given and not yet
    set) or raise KeyboardInterrupt. Blocks nest: a sweep worker's block holds its runs'. A
    request given to the outermost block (a worker's) is honoured by `check()`; a run started
    after it was set stops at its first step boundary."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer = _State.depth == 0
    if outer:
        _State.first_at, _State.signum, _State.stop_now = None, None, False
        _State.outer = request
    elif request is not None and _State.outer is not None and _State.outer.reason is not None:
        request.reason = _State.outer.reason
    saved_target = _State.target
    old = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    _State.depth += 1
    if request is not None:
        _State.target = request
    try:
        yield
    finally:
        _State.target = saved_target
        _State.depth -= 1
        if outer:
            _State.outer = None
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def install(request: StopRequest | None = None) -> Callable[[], None]:
    """`handling(request)` without a `with`: returns the function that ends it (puts the old
    handlers back)."""
    block = handling(request)
    block.__enter__()
    return lambda: block.__exit__(None, None, None)
