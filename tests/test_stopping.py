"""The rules of :mod:`imagenet_repro.train.stopping`, with a fake clock and a fake exchange:
which steps the ranks agree at, what they decide there, and how Ctrl-C is counted.  The real
thing on several processes is tests/test_ranks.py."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from imagenet_repro.train.stopping import (
    MAX_INTERVAL,
    STOP_SHARE,
    DeferredSignals,
    StepAgreement,
    next_interval,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ranks:
    """``world`` agreements, one thread each, exchanging through a real all-gather (a barrier):
    a rank that exchanges at a step where another does not breaks the barrier (the test fails
    instead of hanging).  Each rank has its own clock."""

    def __init__(self, world: int, stop_within_s: float, checkpoint_every_s: float = 0.0) -> None:
        self.clocks = [Clock() for _ in range(world)]
        self.barrier = threading.Barrier(world, timeout=10)
        self.rows: list = [None] * world
        self.agreements = [StepAgreement(world, self._exchange(r), stop_within_s, checkpoint_every_s, clock=c)
                           for r, c in enumerate(self.clocks)]
        for a in self.agreements:
            a.start(0)

    def _exchange(self, rank: int):
        def all_gather(row: list[float]) -> list[list[float]]:
            self.rows[rank] = row
            self.barrier.wait()
            table = list(self.rows)
            self.barrier.wait()
            return table
        return all_gather

    def step(self, step: int, seconds: list[float], pending: list) -> list:
        """Every rank reaches the boundary after ``step`` steps, each having spent ``seconds[r]``."""
        for clock, s in zip(self.clocks, seconds):
            clock.now += s
        out: list = [None] * len(self.agreements)
        errors: list = []

        def boundary(rank: int) -> None:
            try:
                out[rank] = self.agreements[rank].boundary(step, pending[rank])
            except threading.BrokenBarrierError as exc:
                errors.append(f"rank {rank} at step {step}: {exc!r}")

        threads = [threading.Thread(target=boundary, args=(r,)) for r in range(len(self.agreements))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        return out


def test_the_interval_fits_the_stop_budget_at_the_measured_step_time():
    assert next_interval(180, 0.5) == int(STOP_SHARE * 180 / 0.5) == 120
    assert next_interval(10, 4.0) == 1  # a step longer than the budget's share: every step
    assert next_interval(180, 1e-6) == MAX_INTERVAL
    assert next_interval(10, 0.0) == next_interval(10, float("nan")) == 1


def test_one_rank_acts_at_the_boundary_where_the_signal_is_seen_without_any_exchange():
    clock = Clock()
    agreement = StepAgreement(1, lambda row: pytest.fail("one rank exchanged"), 30.0, 0.0, clock=clock)
    agreement.start(0)
    assert agreement.boundary(1, None) is None
    decision = agreement.boundary(2, signal.SIGUSR2)
    assert decision.signal == signal.SIGUSR2 and decision.seen_by == (0,) and not decision.checkpoint
    assert decision.reason(2, 1) == "interrupted by SIGUSR2 at step 2; resumes from its checkpoint"


def test_ranks_that_see_the_signal_at_different_steps_all_stop_at_the_same_agreement_step():
    # 0.5 s a step, 10 s to stop: an agreement every 6 steps after the first (after step 1)
    ranks = Ranks(2, stop_within_s=10.0)
    decisions = {}
    pending = [None, None]
    for step in range(1, 40):
        if step == 3:
            pending[1] = signal.SIGUSR2  # rank 1 first
        if step == 5:
            pending[0] = signal.SIGUSR2  # rank 0 two steps later
        out = ranks.step(step, [0.5, 0.5], pending)
        if any(d is not None for d in out):
            decisions[step] = out
            break
    (step, out), = decisions.items()
    assert step == 1 + next_interval(10.0, 0.5) == 7  # the first agreement step after both signals
    assert out[0] == out[1] and out[0].signal == signal.SIGUSR2 and out[0].seen_by == (0, 1)
    assert out[0].reason(step, 2) == ("interrupted by SIGUSR2 at step 7 (seen by rank 0, 1 of 2); "
                                      "resumes from its checkpoint")
    assert step * 0.5 - 3 * 0.5 <= STOP_SHARE * 10.0  # acted on within the budget's share


def test_the_slowest_rank_sets_the_interval_and_a_lone_signal_stops_everyone():
    ranks = Ranks(3, stop_within_s=30.0)
    assert ranks.step(1, [0.1, 2.0, 0.1], [None] * 3) == [None] * 3  # first agreement: the slowest is 2 s
    assert [a.interval for a in ranks.agreements] == [next_interval(30.0, 2.0)] * 3 == [5] * 3
    for step in range(2, 6):
        assert ranks.step(step, [0.1, 2.0, 0.1], [None, None, signal.SIGTERM if step >= 2 else None]) == [None] * 3
    out = ranks.step(6, [0.1, 2.0, 0.1], [None, None, signal.SIGTERM])
    assert all(d.signal == signal.SIGTERM and d.seen_by == (2,) for d in out)


def test_a_timed_checkpoint_due_on_one_rank_clock_is_taken_by_all_at_the_same_step():
    ranks = Ranks(2, stop_within_s=3.0, checkpoint_every_s=60.0)  # 1 s a step: agree every step
    for step in range(1, 200):
        seconds = [1.0, 1.0]
        if step == 1:
            ranks.clocks[1].now -= 5.0  # rank 1's clock started later: its own clock is never due first
        out = ranks.step(step, seconds, [None, None])
        if out[0] is not None:
            break
    assert out[0] == out[1] and out[0].checkpoint and out[0].signal is None
    assert step == 60  # rank 0's clock, the first to reach 60 s


def test_after_an_evaluation_the_ranks_agree_one_step_later_and_the_eval_is_not_a_step():
    ranks = Ranks(2, stop_within_s=30.0)
    ranks.step(1, [0.01, 0.01], [None, None])  # fast steps: a long interval
    assert ranks.agreements[0].interval == MAX_INTERVAL
    for clock in ranks.clocks:
        clock.now += 120.0  # a long evaluation
    for a in ranks.agreements:
        a.after_pause(1)
    out = ranks.step(2, [0.01, 0.01], [signal.SIGUSR1, None])
    assert all(d.signal == signal.SIGUSR1 for d in out)
    assert ranks.agreements[0].interval == MAX_INTERVAL  # measured from after the pause


@pytest.mark.parametrize("inherited", [signal.default_int_handler, signal.SIG_IGN],
                         ids=["foreground", "background job"])  # a non-interactive shell's `cmd &` ignores SIGINT
def test_ctrl_c_delivered_twice_at_once_counts_once_and_a_later_second_one_stops_at_once(inherited):
    outside = signal.signal(signal.SIGINT, inherited)  # whatever this pytest was started with
    try:
        clock = Clock()
        signals = DeferredSignals(clock=clock)
        signals.install()
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the terminal's
            clock.now += 0.05
            os.kill(os.getpid(), signal.SIGINT)  # torchrun's agent forwarding the same Ctrl-C
            assert signals.pending == signal.SIGINT
            clock.now += 5.0
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: at once
        finally:
            signals.restore()
        assert signal.getsignal(signal.SIGINT) is inherited  # put back as it was
        assert signals.previous_handler(signal.SIGINT) is None  # Python's own or SIG_IGN: not called at the stop
    finally:
        signal.signal(signal.SIGINT, outside)


def test_the_first_signal_names_the_stop_and_a_foreign_handler_is_handed_over():
    calls = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        signals = DeferredSignals()
        signals.install()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR2)
        signals.restore()
        assert signals.pending == signal.SIGTERM and calls == []
        signals.previous_handler(signal.SIGUSR2)(signal.SIGUSR2, None)  # submitit's, say
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_a_collective_failure_is_told_from_a_rank_own_error():
    from imagenet_repro.train.distributed import is_collective_failure

    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:40599. This is typically caused by a remote worker crashing.")
    assert is_collective_failure(gloo)
    assert not is_collective_failure(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_collective_failure(ValueError("Connection closed by peer"))  # not a collective's error type
