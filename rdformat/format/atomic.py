"""Atomic file output: the one helper every writer of the package uses (the .rdc writer, adapters, CLI).

Bytes go to a temporary file in the target's folder (same filesystem, so the final ``os.replace``
is atomic); the target appears only when the write completed and was flushed to disk, so an
interrupted write never leaves a broken file under the target's name. Overwriting keeps the
existing file's permission bits, and a target that is a symlink is written through (the link's
destination is replaced, the link stays).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _final_path(path: Path) -> Path:
    """Where the bytes must land: the destination of a symlinked target, else the target itself."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


class AtomicFile:
    """A temporary file beside ``path`` that replaces ``path`` on :meth:`commit`.

    :meth:`abort` (or an exception inside ``with``) deletes the temporary file and leaves ``path``
    untouched. ``stream`` is the open binary file to write to.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = _final_path(Path(path))
        parent = self.path.parent if str(self.path.parent) else Path(".")
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
        try:
            os.fchmod(fd, self._mode())
        except (AttributeError, OSError):  # pragma: no cover - platforms without fchmod
            pass
        self.stream: BinaryIO = os.fdopen(fd, "wb")
        self._done = False

    def _mode(self) -> int:
        """The existing file's permission bits, or the usual ones for a new file (0666 minus the umask).

        mkstemp creates files readable by the owner only; a finished model file must not be more
        private, nor more public, than the file it replaces.
        """
        try:
            return stat.S_IMODE(os.stat(self.path).st_mode)
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            return 0o666 & ~umask

    def commit(self) -> None:
        """Flush to disk and publish the file under its name."""
        if self._done:
            return
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            self.stream.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Delete the temporary file; the target is left as it was."""
        if self._done:
            return
        self._done = True
        try:
            self.stream.close()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for writing atomically: the file appears under its name only if the block succeeds."""
    with AtomicFile(path) as f:
        yield f.stream
