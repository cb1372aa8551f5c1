"""When a run stops early: signals deferred to a step boundary, and the step every rank acts at.

**Signals.**  SIGTERM, SIGUSR1, SIGUSR2 (SLURM's time limit and preemption reach the job as
one of them, through submitit) and SIGINT (Ctrl-C) are not acted on where they land:
:class:`DeferredSignals` records the first and the trainer acts at a step boundary
(checkpoint, status ``failed`` with the reason, the handler that was installed before, e.g.
submitit's requeue, exit 128 + the signal's number).  A second SIGINT stops at once
(KeyboardInterrupt), unless it comes within :data:`SAME_CTRL_C_S` of the first: that is one
Ctrl-C delivered twice (torchrun's agent forwards the terminal's).

**Agreement.**  With several ranks each rank meets a signal at its own step boundary: SLURM
delivers it to the tasks moments apart, and on GPUs the ranks' host threads run steps apart
(NCCL returns at once).  A rank that stopped alone would leave the others in a collective that
fails or hangs.  So no rank acts alone: at *agreement steps* the ranks exchange what each has
seen (a pending signal, a timed checkpoint due on its own clock, its step time) in one
host-side all-gather (:func:`imagenet_repro.train.distributed.all_gather_rows`) and all act on
the union at that same step: one checkpoint, one status, one requeue.  The next agreement step
is chosen from the slowest rank's measured step time so that it comes within
``STOP_SHARE x stop_within_s`` seconds (``stop_within_s``: SLURM's ``signal_delay_s``, the time
between the signal and the kill; the rest of it is left to the checkpoint and the requeue), and
at most :data:`MAX_INTERVAL` steps apart: no host sync on every step.  The first agreement is
after the first step, and after each evaluation the next one comes after one step.  One rank agrees with itself at every step boundary, without any
exchange.  Agreement steps depend on timing, never on a number of the run: they decide only
when a run stops or checkpoints, which resumes exactly.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional

DEFERRED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
SAME_CTRL_C_S = 2.0  # a second SIGINT within this many seconds of the first is the same Ctrl-C
DEFAULT_STOP_WITHIN_S = 30.0  # without SLURM: torchrun's agent kills its workers 30 s after forwarding a signal
STOP_SHARE = 1 / 3  # of stop_within_s, the most that may pass between agreement steps
MAX_INTERVAL = 1000  # steps between agreements, whatever the step time


class DeferredSignals:
    """Records the first of :data:`DEFERRED` to arrive (``pending``); :meth:`install` and
    :meth:`restore` swap the process's handlers (main thread only)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.pending: Optional[int] = None
        self.previous: dict[int, object] = {}
        self._clock = clock
        self._first_sigint: Optional[float] = None

    def install(self) -> None:
        for sig in DEFERRED:
            self.previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._record)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame) -> None:
        if signum == signal.SIGINT:
            now = self._clock()
            if self._first_sigint is not None:
                if now - self._first_sigint > SAME_CTRL_C_S:
                    raise KeyboardInterrupt  # a second Ctrl-C: stop at once
                return  # the same Ctrl-C, delivered twice
            self._first_sigint = now
        if self.pending is None:
            self.pending = int(signum)

    def previous_handler(self, signum: int) -> Optional[Callable]:
        """The handler ``signum`` had before :meth:`install` when it is one to call (submitit's);
        None for the defaults (SIG_DFL, SIG_IGN, Python's KeyboardInterrupt)."""
        handler = self.previous.get(signum)
        if callable(handler) and handler is not signal.default_int_handler:
            return handler
        return None


@dataclass(frozen=True)
class Decision:
    """What every rank does at this step boundary."""

    signal: Optional[int]  # stop for this signal (None: go on)
    seen_by: tuple[int, ...]  # the ranks that had a signal pending
    checkpoint: bool  # a timed checkpoint is due (on some rank's clock)

    def reason(self, step: int, world_size: int) -> str:
        name = signal.Signals(self.signal).name
        who = f" (seen by rank {', '.join(map(str, self.seen_by))} of {world_size})" if world_size > 1 else ""
        return f"interrupted by {name} at step {step}{who}; resumes from its checkpoint"


class StepAgreement:
    """Decides, at each step boundary, whether every rank stops or checkpoints now.

    ``exchange(row) -> rows``: every rank's row, in rank order (an all-gather; called on
    every rank at the same steps).  ``checkpoint_every_s`` 0: no timed checkpoints."""

    def __init__(self, world_size: int, exchange: Callable[[list[float]], list[list[float]]],
                 stop_within_s: float, checkpoint_every_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not stop_within_s > 0:
            raise ValueError(f"stop_within_s must be > 0 (got {stop_within_s})")
        self.world_size = world_size
        self.exchange = exchange
        self.stop_within_s = float(stop_within_s)
        self.checkpoint_every_s = float(checkpoint_every_s)
        self.clock = clock
        self.interval = 1  # steps from one agreement to the next
        self.agreements = 0  # how many exchanges so far (the cost a test can count)
        self._next_at: Optional[int] = None
        self._last_step = 0
        self._last_time = self._last_checkpoint = clock()

    def start(self, step: int) -> None:
        """The run (re)starts at ``step``: the first agreement comes after its first step."""
        self._next_at = step + 1
        self._last_step = step
        self._last_time = self._last_checkpoint = self.clock()

    def after_pause(self, step: int) -> None:
        """A pause in the steps (an evaluation) just ended at ``step``: agree again after the
        next step (a signal that came during the pause waits one step, not a whole interval),
        and measure the step time from here (the pause is not a step)."""
        self._next_at = step + 1
        self._last_step, self._last_time = step, self.clock()

    def checkpointed(self) -> None:
        """A checkpoint was just written (timed or not): the clock of timed checkpoints restarts."""
        self._last_checkpoint = self.clock()

    def _checkpoint_due(self, now: float) -> bool:
        return self.checkpoint_every_s > 0 and now - self._last_checkpoint >= self.checkpoint_every_s

    def boundary(self, step: int, pending: Optional[int]) -> Optional[Decision]:
        """At the boundary after ``step`` steps, with this rank's pending signal: the decision
        every rank takes here, or None (go on)."""
        now = self.clock()
        if self.world_size == 1:
            due = self._checkpoint_due(now)
            if pending is None and not due:
                return None
            return Decision(pending, (0,) if pending is not None else (), due)
        if self._next_at is None:
            self.start(step - 1)
        if step < self._next_at:
            return None
        step_s = (now - self._last_time) / max(step - self._last_step, 1)
        rows = self.exchange([float(pending or 0), float(self._checkpoint_due(now)), step_s])
        self.agreements += 1
        slowest = max(row[2] for row in rows)
        self.interval = next_interval(self.stop_within_s, slowest)
        self._next_at = step + self.interval
        self._last_step, self._last_time = step, now
        seen = [(rank, int(row[0])) for rank, row in enumerate(rows) if row[0]]
        checkpoint = any(row[1] for row in rows)
        if not seen and not checkpoint:
            return None
        # every rank takes the same signal: the first rank's (submitit's handler is the same on all)
        return Decision(seen[0][1] if seen else None, tuple(rank for rank, _ in seen), checkpoint)


def next_interval(stop_within_s: float, step_s: float) -> int:
    """Steps until the next agreement: as many as fit in ``STOP_SHARE x stop_within_s`` at
    ``step_s`` seconds a step, between 1 and :data:`MAX_INTERVAL`."""
    if not step_s > 0 or not math.isfinite(step_s):
        return 1
    return int(min(MAX_INTERVAL, max(1, math.floor(STOP_SHARE * stop_within_s / step_s))))
