"""The suite's user-facing error and the one-line form of any exception.

:class:`ConfigError` is bad input (a config key, a spec, a data file, a resource the run
needs): the CLI prints its message as ``repro: error: <message>`` and exits 2, before
anything is written or submitted.  Every message is one line; :func:`first_line` and
:func:`describe` make one out of a library's exception when it is wrapped.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration problem; the message is one line."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def describe(exc: BaseException) -> str:
    """``Type: first line`` (just ``Type`` when the message is empty): an error of code we did not write."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
