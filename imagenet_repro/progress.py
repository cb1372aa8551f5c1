"""Progress bars for a person at a terminal, plain lines for a log.

:func:`progress` returns a tqdm bar.  On a terminal (the stream is a TTY) it is tqdm's bar,
redrawn in place and cleared when done.  Anywhere else (a log file, SLURM's output file, CI,
a pipe) a redrawn bar is a stream of carriage returns, so the same bar writes a plain line
instead (no bar, no ``\\r``): when it starts, at most every ``log_every_s`` seconds while it
moves (tqdm's ``mininterval``), and once at the end, e.g.::

    epoch 3/16:  41% 512/1250 [00:31<00:45, 16.4it/s, loss=2.311, lr=0.387, g=1.27, img_s=4182]

The caller uses it as any tqdm bar (``update``, ``set_postfix``, ``close``, a ``with``).
"""
from __future__ import annotations

import sys
from typing import IO, Any, Optional

from tqdm import tqdm

LOG_EVERY_S = 30.0  # a line at most this often in a log
LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a TTY (False for files, pipes and closed or fd-less streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _Lines:
    """A stream for tqdm that writes each redraw (``"\\r" + status + padding``) as one line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()  # (tqdm pads a shorter status with spaces)
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, ... of the real stream
        return getattr(self.stream, name)


def progress(total: int, desc: str, *, initial: int = 0, unit: str = "it", enabled: bool = True,
             stream: Optional[IO[str]] = None, log_every_s: float = LOG_EVERY_S) -> tqdm:
    """A tqdm bar on ``stream`` (default: ``sys.stderr``) that is a bar on a terminal and
    plain lines elsewhere; ``enabled=False`` shows nothing."""
    stream = sys.stderr if stream is None else stream
    common = dict(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled)
    if is_terminal(stream):
        return tqdm(file=stream, dynamic_ncols=True, leave=False, **common)
    # maxinterval too: tqdm's monitor thread would otherwise redraw a slow bar every 10 s
    return tqdm(file=_Lines(stream), bar_format=LOG_FORMAT, mininterval=log_every_s,
                maxinterval=max(log_every_s, 10.0), leave=True, **common)
