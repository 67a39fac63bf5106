"""How a run stops when it is asked to: SIGTERM like Ctrl-C, and a run's process with its parent.

SIGTERM is what `kill`, `docker stop`, systemd and job schedulers send before SIGKILL. Python's default
for it is to die on the spot, leaving run.json at 'running'; here it raises `StopRequested` (a
KeyboardInterrupt) in the main thread, so the run takes the Ctrl-C path: the summaries are flushed and
run.json says 'interrupted', from which `--resume` continues. Signals after the first are ignored while the
run winds down, so a second one cannot cut the flush short.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StopRequested(KeyboardInterrupt):
    """A stop asked for by a signal other than Ctrl-C (its name is the message)."""


def stop_reason(exc: KeyboardInterrupt) -> str:
    """What run.json says stopped a run."""
    return f"stopped by {exc}" if isinstance(exc, StopRequested) else "interrupted by the user (Ctrl-C)"


def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
    """From now on, the first of `signals` raises StopRequested (SIGINT: KeyboardInterrupt); later ones are
    ignored. Call it from the main thread."""

    def handler(signum: int, _frame) -> None:
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise StopRequested(signal.Signals(signum).name)

    for s in signals:
        signal.signal(s, handler)


def stop_with_parent(parent_pid: int) -> None:
    """Linux: this process gets SIGTERM when its parent dies, even by SIGKILL, so a killed `dqnlab ab` leaves
    no run training on in the background. Elsewhere (no prctl) nothing changes."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
