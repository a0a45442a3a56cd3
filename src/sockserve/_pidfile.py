"""The pid file: written whole or not at all, refused while another live
process holds it, and removed on exit only by the process that wrote it.

A reader (``kill $(cat app.pid)``, systemd's ``PIDFile=``, a monitoring
script) must never see a half-written file, so the pid is written to a
temporary file in the same directory and renamed over the path. Starters
racing on one directory are put in line by an ``flock`` on the directory, held
only while the file is checked, written or removed: without it two servers
started at once could both find no live owner and both go on.

What "live" cannot tell: a stale file whose pid the kernel has since given to
an unrelated process looks live, and the start is refused with that pid in the
message (every pid-file scheme shares this; remove the file). Our own pid in
the file is taken as stale, not live: in a container the server is pid 1 on
every start, and the file of the last run names it.
"""

from __future__ import annotations

import os

from ._errors import SockserveError
from ._log import logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["PidFile", "PidFileError"]


class PidFileError(SockserveError):
    """The pid file cannot be taken: it names a live process, it holds
    something that is not a pid, or it cannot be written. The message names
    the path (and the pid)."""


class PidFile:
    """``with PidFile(path):`` writes this process's pid to ``path`` for the
    block's duration.

    Entering refuses (:class:`PidFileError`) when the file names another live
    process, and replaces a stale one. Leaving removes the file only if it
    still holds the pid written, and only in the process that wrote it: a
    child forked inside the block (a worker, a forking server's child) that
    leaves it too does nothing. ``pid`` is the pid written (None when not held).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # Absolute now: a server that changes directory later still removes the right file.
        self.path = os.path.abspath(os.fspath(path))
        self.pid: int | None = None

    def __repr__(self) -> str:
        return f"PidFile({self.path!r}, pid={self.pid})"

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Write our pid to the file (see the class); PidFileError if it cannot."""
        if self.pid is not None:
            raise PidFileError(f"pid file {self.path!r} is already held by this object")
        pid = os.getpid()
        with _DirectoryLock(self.path):
            holder = _read_pid(self.path)
            if holder is not None and holder != pid and _is_running(holder):
                raise PidFileError(
                    f"pid file {self.path!r} names pid {holder}, which is running: another server? "
                    "(if that process is no server of ours, remove the file)"
                )
            if holder is not None and holder != pid:
                logger.info("replacing stale pid file %r (pid %d is not running)", self.path, holder)
            _write_atomically(self.path, f"{pid}\n")
        self.pid = pid

    def release(self) -> None:
        """Remove the file if this process wrote it and it still holds our pid."""
        pid, self.pid = self.pid, None
        if pid is None or pid != os.getpid():
            return  # not held, or a forked child: the file is its parent's
        try:
            with _DirectoryLock(self.path):
                if _read_pid(self.path) == pid:
                    os.unlink(self.path)
        except (OSError, PidFileError) as exc:
            # Typically: written as root in /run, then privileges dropped. The
            # service manager removes it (PIDFile=); one line, not a traceback.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            logger.warning("could not remove pid file %r: %s", self.path, reason)


class _DirectoryLock:
    """An exclusive flock on the pid file's directory, for one check-and-write."""

    def __init__(self, path: str) -> None:
        self.directory = os.path.dirname(os.path.abspath(path))
        self.fd = -1

    def __enter__(self) -> None:
        import fcntl

        try:
            self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            if self.fd >= 0:
                os.close(self.fd)
            raise PidFileError(f"pid file directory {self.directory!r}: {exc.strerror}") from None

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)  # closing drops the lock


def _read_pid(path: str) -> int | None:
    """The pid the file names; None if there is no file or it is empty (a
    file cut short by a crash or a full disk before we wrote atomically);
    PidFileError for content that is not a pid, which may be a user's file
    named by mistake and is not ours to replace."""
    try:
        with open(path, "rb") as file:
            content = file.read(64)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidFileError(f"pid file {path!r} cannot be read: {exc.strerror}") from None
    text = content.strip()
    if not text:
        return None
    if not (text.isdigit() and len(text) <= 10 and int(text) > 0):
        raise PidFileError(f"{path!r} holds {content[:20]!r}, which is not a pid: refusing to replace it")
    return int(text)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    # A zombie has exited; only its parent has yet to reap it.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill() said it exists


def _write_atomically(path: str, text: str) -> None:
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        # No fsync: a pid file is about this boot; what matters is that no reader sees half of it.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass  # never created, or already renamed
        raise PidFileError(f"pid file {path!r} cannot be written: {exc.strerror}") from None
