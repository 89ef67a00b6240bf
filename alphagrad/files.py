"""Writing files so that a reader never sees half of one: every file alphagrad writes goes through here.

A file is written to a temporary file in its destination directory and renamed over the
destination, so an interrupted run leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["write_atomically"]


def _default_mode() -> int:
    """The mode `open()` would give a new file (0o666 minus the umask); temporary files get 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | os.PathLike, text: str | bytes, *, newline: str | None = None) -> None:
    """Writes `text` to `path` atomically (temporary file beside it, then rename), creating its directory.

    Args:
      path: the destination file.
      text: the whole contents: a string (text mode) or bytes (binary, e.g. a rendered image).
      newline: as for `open` (``""`` for CSV written with the csv module); text only.

    Raises:
      OSError: the directory cannot be created or written; nothing is left behind.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        binary = isinstance(text, bytes)
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else newline) as fh:
            fh.write(text)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
