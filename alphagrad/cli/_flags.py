"""The command line's checks at the boundary: flag values at parse time (argparse ``type=``
functions, so a bad value is argparse's ``error: argument --flag: ...`` line with exit status 2,
before any work starts) and the writing of the files ``--out`` names (an `OSError` becomes an
`AlphagradError` naming the path)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Iterator

from alphagrad.errors import AlphagradError

__all__ = ["nonnegative_int", "out_dir", "out_file", "positive_float", "positive_int", "writing"]


def positive_float(text: str) -> float:
    """A finite number > 0 (``--minutes``, ``--seconds``): "0", "-1", "nan" and "inf" are refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (``--iterations``, ``--simulations``, ``--games``)."""
    return _integer(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (``--seed``: the searches' NumPy generators refuse negative seeds)."""
    return _integer(text, 0)


def _creatable(directory: str, text: str) -> None:
    """Checks that `directory` (absolute) is a writable directory or can be created: its nearest
    existing ancestor must be a writable directory. `text` is the flag's value, for the message."""
    existing = directory
    while not os.path.exists(existing):  # ends at the root, which exists
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise argparse.ArgumentTypeError(f"cannot create {text}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: directory {existing} is not writable")


def out_file(text: str) -> str:
    """An ``--out FILE``: not an existing directory, in a directory that exists or can be created.

    Checked before the work (a search, a benchmark) so that its result is not lost at the end;
    `writing` still catches what changes in between.
    """
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory; give the file to write")
    _creatable(os.path.dirname(os.path.abspath(text)), text)
    return text


def out_dir(text: str) -> str:
    """An ``--out DIR``: an existing directory, or a path where one can be created."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is an existing file, not a directory")
    _creatable(os.path.abspath(text), text)
    return text


@contextlib.contextmanager
def writing(path: str, flag: str = "--out") -> Iterator[None]:
    """Turns an `OSError` raised in the block into an `AlphagradError` naming `path` and `flag`
    (the file writers are atomic, so nothing half-written is left behind)."""
    try:
        yield
    except OSError as err:
        where = f" ({err.filename})" if err.filename and os.fspath(err.filename) != os.fspath(path) else ""
        raise AlphagradError(f"cannot write {path} ({flag}): {err.strerror or err}{where}") from err
