"""Progress: a redrawn bar on a terminal (a pty here), plain lines in a file or a pipe (a log,
SLURM's output file, CI), never a stream of carriage returns; and the trainer's epoch bars
through it, both ways."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import sys
import termios
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import pytest

from imagenet_repro.progress import is_terminal, progress

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def terminal(columns: int = 100) -> Iterator[tuple[IO[str], list[bytes]]]:
    """A pty's slave end as a text stream; what reaches the master end is drained (so a
    writer never blocks on a full pty) into the list, complete when the block exits."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    stream = os.fdopen(slave, "w", buffering=1, encoding="utf-8")
    chunks: list[bytes] = []
    done = threading.Event()

    def drain() -> None:
        while True:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the slave end closed
                    return
                if not data:
                    return
                chunks.append(data)
            elif done.is_set():
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield stream, chunks
    finally:
        stream.flush()
        done.set()
        reader.join(timeout=10)
        stream.close()
        os.close(master)


@contextmanager
def log_stream(kind: str, tmp_path: Path) -> Iterator[tuple[IO[str], list[str]]]:
    """A file or a pipe as a text stream; its whole text in the list when the block exits."""
    text: list[str] = []
    if kind == "file":
        path = tmp_path / "log.txt"
        with open(path, "w", encoding="utf-8") as stream:
            yield stream, text
        text.append(path.read_bytes().decode("utf-8"))  # (read_text would turn "\r" into "\n")
        return
    r, w = os.pipe()
    reader = os.fdopen(r, "r", encoding="utf-8", newline="")  # keeps a "\r"
    got: list[str] = []
    thread = threading.Thread(target=lambda: got.append(reader.read()), daemon=True)
    thread.start()
    with os.fdopen(w, "w", encoding="utf-8") as stream:
        yield stream, text
    thread.join(timeout=10)
    reader.close()
    text.append(got[0])


def _run_bar(stream: IO[str], total: int, sleep_s: float, **kw) -> float:
    t0 = time.monotonic()
    with progress(total, "epoch 1/2", stream=stream, **kw) as bar:
        for i in range(total):
            time.sleep(sleep_s)
            bar.set_postfix(loss=f"{2.5 - i / total:.3f}", refresh=False)
            bar.update(1)
    return time.monotonic() - t0


@pytest.mark.parametrize("kind", ["file", "pipe"])
def test_a_log_gets_a_plain_line_now_and_then(kind, tmp_path):
    with log_stream(kind, tmp_path) as (stream, text):
        assert not is_terminal(stream)
        elapsed = _run_bar(stream, total=40, sleep_s=0.02, log_every_s=0.2)
    out = text[0]
    assert "\r" not in out and "\x1b" not in out, repr(out[:300])
    lines = out.splitlines()
    assert all(re.match(r"epoch 1/2: +\d+% \d+/40 \[", line) for line in lines), lines
    assert re.match(r"epoch 1/2: +0% 0/40 ", lines[0])  # when it starts
    assert re.match(r"epoch 1/2: 100% 40/40 .*loss=1\.525\]$", lines[-1])  # once at the end, with the postfix
    percents = [int(re.match(r"epoch 1/2: +(\d+)%", line).group(1)) for line in lines]
    assert percents == sorted(percents)
    # start + end + one at most every 0.2 s in between (and at least one: the bar took >= 0.8 s)
    assert 3 <= len(lines) <= 2 + elapsed / 0.2 + 1, (elapsed, lines)


def test_a_terminal_gets_a_redrawn_bar_that_is_cleared(tmp_path):
    with terminal() as (stream, chunks):
        assert is_terminal(stream)
        _run_bar(stream, total=20, sleep_s=0.03)
    out = b"".join(chunks).decode("utf-8")
    assert out.count("\r") >= 3, repr(out)  # redrawn in place (mininterval 0.1 s over 0.6 s)
    assert "epoch 1/2:" in out and "%|" in out and "/20 [" in out  # tqdm's bar: "epoch 1/2:  45%|████▌  | 9/20 ["
    assert "\n" not in out, repr(out)  # leave=False: no line left behind


def test_disabled_shows_nothing(tmp_path):
    with log_stream("file", tmp_path) as (stream, text):
        _run_bar(stream, total=5, sleep_s=0, enabled=False, log_every_s=0)
    with terminal() as (tty, chunks):
        _run_bar(tty, total=5, sleep_s=0, enabled=False)
    assert text == [""] and b"".join(chunks) == b""


# ---------------------------------------------------------------------------- the trainer


def _train(out: Path, overrides: list[str]) -> str:
    from imagenet_repro.config import load_config
    from imagenet_repro.train.loop import run_training

    return run_training(load_config(ROOT / "experiments/demo.yaml", [*overrides, "train.progress=true"]), out)


@pytest.mark.slow
def test_trainer_writes_plain_lines_to_a_log(tmp_path, fmnist_tiny, monkeypatch):
    with log_stream("file", tmp_path) as (stream, text):
        monkeypatch.setattr(sys, "stderr", stream)
        assert _train(tmp_path / "run", fmnist_tiny) == "done"
        monkeypatch.undo()
    out = text[0]
    assert "\r" not in out, repr(out[:300])
    lines = [line for line in out.splitlines() if line.startswith("epoch ") and "%" in line]
    # 2048 images / batch 128 = 16 steps per epoch; a line at the start and at the end of each
    for epoch in (1, 2):
        assert any(re.match(rf"epoch {epoch}/2: +0% 0/16 ", line) for line in lines), lines
        assert any(re.match(rf"epoch {epoch}/2: 100% 16/16 .*loss=", line) for line in lines), lines


@pytest.mark.slow
@pytest.mark.long  # make test-rehearsals: the bar itself is tested above; this is the trainer through a pty
def test_trainer_draws_a_bar_on_a_terminal(tmp_path, fmnist_tiny, monkeypatch):
    with terminal() as (stream, chunks):
        monkeypatch.setattr(sys, "stderr", stream)
        assert _train(tmp_path / "run", fmnist_tiny) == "done"
        monkeypatch.undo()
    out = b"".join(chunks).decode("utf-8")
    assert "\r" in out and re.search(r"epoch 2/2: +\d+%\|", out), repr(out[-500:])


# ---------------------------------------------------------------------------- the sweep launcher


def test_sweep_wait_writes_plain_lines_to_a_log(tmp_path, capsys):
    import socket

    from imagenet_repro import rundir
    from imagenet_repro.sweep.launcher import wait_for
    from imagenet_repro.sweep.status import RunRef

    refs = [RunRef(f"r{i}", tmp_path / f"r{i}", {}, {}) for i in range(2)]
    me = dict(pid=os.getpid(), pid_start=rundir.process_start(os.getpid()), host=socket.gethostname())
    rundir.write_status(refs[0].run_dir, "done")
    rundir.write_status(refs[1].run_dir, "running", **me)  # alive: this process
    later = threading.Timer(0.5, lambda: rundir.write_status(refs[1].run_dir, "done"))
    later.start()
    states = wait_for(refs, [], poll_s=0.02)
    later.join()
    assert [s.state for s in states] == ["done", "done"]
    err = capsys.readouterr().err  # pytest's capture: not a terminal
    assert "\r" not in err, repr(err[:300])
    lines = [line for line in err.splitlines() if line.startswith("runs finished")]
    assert re.match(r"runs finished: +0% 0/2 ", lines[0]) and len(lines) == 2, lines  # within 30 s: start, end
    assert re.match(r"runs finished: 100% 2/2 .*done 2", lines[-1]), lines
