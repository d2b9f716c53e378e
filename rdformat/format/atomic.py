"""Atomic file output: the one helper every writer of the package uses (the .rdc writer, adapters, CLI).

Bytes go to a temporary file in the target's folder (same filesystem, so the final ``os.replace``
is atomic); the target appears only when the write completed and was flushed to disk, so an
interrupted write never leaves a broken file under the target's name. Overwriting keeps the
existing file's permission bits, and a target that is a symlink is written through (the link's
destination is replaced, the link stays).

Temporary files are named ``.<target name>.<8 random characters>.tmp``. A writer holds an exclusive
``flock`` on its temporary file while it writes; a killed writer's lock dies with it. Before writing,
:class:`AtomicFile` removes the temporary files of the same target name whose lock it can take (their
writer is gone) and that are older than :data:`STALE_TEMP_GRACE` seconds (the grace covers a writer
that has created its file but not locked it yet). Where ``flock`` is not available only files older
than :data:`STALE_TEMP_SECONDS` are removed: a live writer that slow is unlikely, and two writers
racing for one target lose one of the writes anyway.

Multi-file outputs (a model plus its data file, shards plus their index) are written with
:meth:`AtomicFile.finish` / :meth:`AtomicFile.publish`: every member is finished (flushed, closed)
first, data files are published under names that no existing file has (:func:`fresh_name`), and the
file that points at them (the index, the model) is published last, so a reader following the pointer
always sees a complete set: the old one or the new one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO

try:  # POSIX only; without it stale temporary files are recognised by age alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: A temporary file whose lock can be taken is removed once it is this old (seconds).
STALE_TEMP_GRACE = 60
#: Without ``flock``, a temporary file is removed once it has not been modified for this long (seconds).
STALE_TEMP_SECONDS = 3600


def _final_path(path: Path) -> Path:
    """Where the bytes must land: the destination of a symlinked target, else the target itself."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def temp_pattern(name: str) -> re.Pattern:
    """The names of the temporary files :class:`AtomicFile` creates for a target called ``name``."""
    return re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}\.tmp")


def _unused(path: Path, now: float) -> bool:
    """True when nobody writes ``path`` any more (its lock is free, or it is old without flock)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    age = now - st.st_mtime  # a live writer's writes keep it young
    if fcntl is None:
        return age > STALE_TEMP_SECONDS
    if age <= STALE_TEMP_GRACE:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live writer holds it
    finally:
        os.close(fd)  # also drops the lock we may have taken
    return True


def remove_stale_temps(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporary files left beside ``folder/name`` by killed writers; returns the removed paths.

    Only files matching :func:`temp_pattern` are considered; errors are ignored (cleaning is best-effort).
    """
    pattern = temp_pattern(name)
    removed = []
    now = time.time()
    try:
        entries = [e for e in os.listdir(folder) if e.startswith(f".{name}.") and pattern.fullmatch(e)]
    except OSError:
        return removed
    for entry in entries:
        path = Path(folder) / entry
        if _unused(path, now):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def fresh_name(folder: str | os.PathLike, name: str, suffix: str, taken: Collection[str] = ()) -> str:
    """``name`` when no file of that name exists in ``folder``, else ``<name minus suffix>.rdc-<8 hex><suffix>``
    that does not exist either: members of a multi-file output never overwrite a file in place (the old
    set stays readable until its pointer is replaced), nor an unrelated file. Names in ``taken``
    (already chosen for the same output) count as existing."""
    if name not in taken and not os.path.lexists(os.path.join(folder, name)):
        return name
    base = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
    while True:
        candidate = f"{base}.rdc-{secrets.token_hex(4)}{suffix}"
        if candidate not in taken and not os.path.lexists(os.path.join(folder, candidate)):
            return candidate


class AtomicFile:
    """A temporary file beside ``path`` that replaces ``path`` on :meth:`commit`.

    :meth:`abort` (or an exception inside ``with``) deletes the temporary file and leaves ``path``
    untouched. ``stream`` is the open binary file to write to. :meth:`commit` is :meth:`finish`
    (flush to disk, close) followed by :meth:`publish` (the rename); multi-file outputs call them
    separately to order the renames.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = _final_path(Path(path))
        parent = self.path.parent if str(self.path.parent) else Path(".")
        remove_stale_temps(parent, self.path.name)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
        if fcntl is not None:  # marks the file as in use for remove_stale_temps of other writers
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            os.fchmod(fd, self._mode())
        except (AttributeError, OSError):  # pragma: no cover - platforms without fchmod
            pass
        self.stream: BinaryIO = os.fdopen(fd, "wb")
        self._done = False
        self._finished = False

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

    def finish(self) -> None:
        """Flush the temporary file to disk and close it (the target is not touched yet)."""
        if self._finished or self._done:
            return
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            self.stream.close()
        except BaseException:
            self.abort()
            raise
        self._finished = True

    def publish(self) -> None:
        """Rename the finished temporary file to the target (:meth:`finish` first if needed)."""
        if self._done:
            return
        self.finish()
        try:
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def commit(self) -> None:
        """Flush to disk and publish the file under its name."""
        self.publish()

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
