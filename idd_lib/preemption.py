"""Stop a training run cleanly when the scheduler asks: write a checkpoint at the next step, exit.

Slurm sends SIGTERM at pre-emption and at the time limit (after ``--signal`` warnings, SIGUSR1 or
SIGUSR2, which submitit also uses); a plain ``kill`` sends SIGTERM. Under :func:`stop_requests` those
signals only set a flag; the training loop reads it after each step (:meth:`StopRequests.pending`),
writes ``checkpoint.pt`` and then lets the signal do what it did before (:meth:`StopRequests.resend`):
by default the process ends by that signal (exit status 128 + its number); under submitit its own
handler requeues the Slurm job. The same command then resumes from that checkpoint and ends with
the numbers of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

import torch

from . import distributed

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))


class Preempted(SystemExit):
    """The run stopped on a signal after writing its checkpoint, and the signal's earlier handler
    returned: the exit status is 128 + signum."""

    def __init__(self, signum: int, step: int, checkpoint):
        name = signal.Signals(signum).name
        self.message = (f"stopped by {name} after step {step}: checkpoint written to {checkpoint}; "
                        f"run the same command to resume")
        super().__init__(128 + signum)


class StopRequests:
    """The signal received since the loop started (0: none)."""

    def __init__(self):
        self.signum, self.previous = 0, {}

    def handle(self, signum, frame) -> None:
        self.signum = self.signum or signum

    def pending(self) -> int:
        """The signal to stop on, agreed by every data-parallel rank (the largest one any received)."""
        if not distributed.active():
            return self.signum
        flag = torch.tensor([float(self.signum)], device=distributed.device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def resend(self, signum: int) -> None:
        """The earlier handlers back, and ``signum`` delivered to them (returns only if one returns)."""
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
        signal.raise_signal(signum)


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequests]:
    """:data:`STOP_SIGNALS` set a flag instead of killing the process, within the block (main thread
    only: elsewhere signals cannot be caught, and the block is a no-op); the old handlers come back after."""
    requests = StopRequests()
    if threading.current_thread() is not threading.main_thread():
        yield requests
        return
    requests.previous = {signum: signal.signal(signum, requests.handle) for signum in STOP_SIGNALS}
    try:
        yield requests
    finally:
        for signum, handler in requests.previous.items():
            signal.signal(signum, handler)


def stop(requests: StopRequests, signum: int, step: int, checkpoint) -> None:
    """After the checkpoint: one line, then the signal's own disposition; :class:`Preempted` if it returns."""
    err = Preempted(signum, step, checkpoint)
    print(f"error: {err.message}", file=sys.stderr, flush=True)
    requests.resend(signum)
    raise err
