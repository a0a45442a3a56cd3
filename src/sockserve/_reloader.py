"""``--reload`` for development: run the server as a child process, and start
a new one when a source file changes, without refusing a connection.

The parent binds nothing itself: it is given the listening sockets, already
bound, and passes them to each child the way systemd does (descriptors from 3,
``LISTEN_FDS``, ``LISTEN_PID`` = the child's pid, ``LISTEN_FDNAMES``), so the
child serves them as inherited sockets (``sockserve._socket_activation``).
The parent keeps its copies open across restarts: while no child runs, new
connections wait in the kernel's accept queue, and the next child takes them.

Changes are found by polling the modification times of the ``.py`` files
under the watched directories (no dependency; ``__pycache__`` and hidden
directories such as ``.venv`` and ``.git`` skipped). A restart is one log line
naming the file, SIGTERM to the child, SIGKILL to its process group if it has
not exited after ``stop_timeout``, and a new child. A child that exits on its
own (a syntax error at start, say) is reported and not restarted until the
next change: a restart loop would only repeat the error.

The child runs in its own process group, so a Ctrl-C in the terminal reaches
the parent alone, which stops the child with one SIGTERM (a second signal to
a sockserve server skips its drain, so it is passed on only when the parent
gets a second one); on timeout the whole group is killed, grandchildren
(prefork workers) included. On Linux the child also gets
SIGTERM if the parent dies without stopping it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time

from ._socket_activation import _LISTEN_VARIABLES, SD_LISTEN_FDS_START

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from types import FrameType

    from typing_extensions import Self

__all__ = ["SourceWatcher", "run_with_reload"]

log = logging.getLogger("sockserve.reload")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


class SourceWatcher:
    """Finds changed ``.py`` files under some directories (or named files) by
    polling their modification time and size."""

    def __init__(self, roots: Iterable[str | os.PathLike[str]], suffixes: tuple[str, ...] = (".py",)) -> None:
        self.roots = [os.fspath(root) for root in roots]
        self.suffixes = suffixes
        self._state = self._scan()

    def changes(self) -> list[str]:
        """The files added, changed or removed since the last call (or since
        construction), sorted; the state is updated, so each change is told once."""
        state = self._scan()
        changed = sorted(path for path in state.keys() | self._state.keys() if state.get(path) != self._state.get(path))
        self._state = state
        return changed

    def _scan(self) -> dict[str, tuple[int, int, int]]:
        found: dict[str, tuple[int, int, int]] = {}
        for root in self.roots:
            if os.path.isdir(root):
                self._walk(root, found)
            else:
                self._add(root, found)  # a file named on its own is watched whatever its suffix
        return found

    def _walk(self, directory: str, found: dict[str, tuple[int, int, int]]) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return  # removed, or not readable: nothing to watch there
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .venv, .git, .tox, .mypy_cache...: not the program's source
            try:
                # A symlinked directory is not followed: it could loop, or lead into a virtualenv.
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        self._walk(entry.path, found)
                elif entry.name.endswith(self.suffixes):
                    self._add(entry.path, found)
            except OSError:
                continue

    @staticmethod
    def _add(path: str, found: dict[str, tuple[int, int, int]]) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        # The size and inode too: an edit within the file system's timestamp
        # granularity, or an editor's write-and-rename, still shows.
        found[path] = (st.st_mtime_ns, st.st_size, st.st_ino)


def run_with_reload(
    argv: Sequence[str],
    watch: Sequence[str | os.PathLike[str]],
    *,
    sockets: Sequence[socket.socket] = (),
    names: Sequence[str] | None = None,
    interval: float = 1.0,
    stop_timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``argv`` as a child process, restart it when a watched source
    file changes, until SIGTERM, SIGINT or SIGHUP; return the last child's
    exit status (128 + the signal's number if a signal ended it).

    ``sockets``: bound (and, for streams, listening) sockets that every child
    receives as descriptors 3, 4, ... with the ``LISTEN_*`` variables;
    ``names`` one per socket (``LISTEN_FDNAMES``; ``"unknown"`` by default,
    as systemd says for a socket it was not given a name for). The sockets
    stay the caller's: open while this runs, not closed by it. ``env``: the
    children's environment (``os.environ`` by default), without any
    ``LISTEN_*`` it holds. ``interval``: seconds between scans of ``watch``.
    Must be called from the main thread (it handles signals), of a process
    with no other threads (it forks).
    """
    if names is not None and len(names) != len(sockets):
        raise ValueError(f"{len(names)} name(s) for {len(sockets)} socket(s)")
    if not argv:
        raise ValueError("no command to run")
    for name in names or ():
        # systemd's rule for FileDescriptorName=: the colon separates names in LISTEN_FDNAMES.
        if not 0 < len(name) <= 255 or not name.isascii() or not name.isprintable() or ":" in name:
            raise ValueError(f"socket name {name!r}: 1 to 255 printable ASCII characters, no ':'")
    import threading

    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run_with_reload() handles signals and must run in the main thread")
    child_env = {k: v for k, v in (os.environ if env is None else env).items() if k not in _LISTEN_VARIABLES}
    if sockets:
        child_env["LISTEN_FDS"] = str(len(sockets))
        child_env["LISTEN_FDNAMES"] = ":".join(names if names is not None else ["unknown"] * len(sockets))
    spawner = _Spawner(list(argv), child_env, [sock.fileno() for sock in sockets])
    with _Signals() as signals:
        return _Reloader(spawner, SourceWatcher(watch), signals, interval, stop_timeout).run()


class _Signals:
    """Records the stop signals and wakes :meth:`wait` for them and for SIGCHLD
    (a child that exits is noticed at once, not at the next scan)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._reader, self._writer = socket.socketpair()
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1

    def __enter__(self) -> Self:
        for sock in (self._reader, self._writer):
            sock.setblocking(False)
        self._previous_wakeup = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default is the nearest.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_wakeup)
        self._reader.close()
        self._writer.close()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGCHLD:
            self.received.append(signum)

    def wait(self, timeout: float) -> None:
        """Until a signal arrives (or arrived since the last call), or ``timeout`` seconds."""
        select.select([self._reader], [], [], max(timeout, 0.0))
        try:
            while self._reader.recv(512):
                pass
        except BlockingIOError:
            pass

    def reset_in_child(self) -> None:
        """In a forked child before exec: the parent's handlers and wake-up fd are not its."""
        signal.set_wakeup_fd(-1)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        # Python ignores SIGPIPE for itself; the program exec'd expects the default (as subprocess does it).
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


class _SpawnError(Exception):
    pass


class _Spawner:
    """Starts the child the systemd way: fork, set ``LISTEN_PID`` to the
    child's own pid (known only after the fork, which is why this is not
    ``subprocess``), move the sockets to 3, 4, ..., close everything else, exec."""

    def __init__(self, argv: list[str], env: dict[str, str], fds: list[int]) -> None:
        self.argv = argv
        self.env = env
        self.fds = fds
        try:
            self.max_fd = max(os.sysconf("SC_OPEN_MAX"), SD_LISTEN_FDS_START + len(fds) + 2)
        except (OSError, ValueError):
            self.max_fd = 65536
        self.prctl = _parent_death_signal_call()
        import fcntl  # imported here, not after fork in each child

        self._fcntl = fcntl

    def spawn(self, signals: _Signals) -> int:
        """The child's pid; _SpawnError (with the reason) if it could not exec."""
        error_reader, error_writer = os.pipe()  # close-on-exec: EOF means the exec worked
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child: coverage does not follow it past exec)
            self._exec(signals, parent, error_writer)
        os.close(error_writer)
        try:
            chunks = []
            while chunk := os.read(error_reader, 4096):
                chunks.append(chunk)
        finally:
            os.close(error_reader)
        if chunks:
            os.waitpid(pid, 0)
            raise _SpawnError(b"".join(chunks).decode(errors="replace"))
        return pid

    def _exec(self, signals: _Signals, parent: int, error_writer: int) -> None:  # pragma: no cover
        try:
            signals.reset_in_child()
            os.setpgid(0, 0)
            if self.prctl is not None:
                self.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
                if os.getppid() != parent:
                    os._exit(1)  # the parent died before the request took effect
            count = len(self.fds)
            first_free = SD_LISTEN_FDS_START + count
            fcntl = self._fcntl
            # Out of the way first: a socket (or the error pipe) may sit on a descriptor
            # the sockets are about to be moved to.
            error_writer = fcntl.fcntl(error_writer, fcntl.F_DUPFD_CLOEXEC, first_free)
            moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, first_free) for fd in self.fds]
            for index, fd in enumerate(moved):
                os.dup2(fd, SD_LISTEN_FDS_START + index)  # inheritable: they must survive exec
            # Nothing else of the parent's is the server's business (subprocess closes them too).
            os.closerange(first_free, error_writer)
            os.closerange(error_writer + 1, self.max_fd)
            env = dict(self.env)
            if count:
                env["LISTEN_PID"] = str(os.getpid())
            os.execvpe(self.argv[0], self.argv, env)  # noqa: S606  (the user's own command, as given)
        except BaseException as exc:
            try:
                os.write(error_writer, str(exc).encode(errors="replace") or type(exc).__name__.encode())
            finally:
                os._exit(127)


def _parent_death_signal_call() -> Callable[..., int] | None:
    """prctl() from libc on Linux, to have a child killed when its parent dies; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    return prctl


class _Reloader:
    def __init__(
        self, spawner: _Spawner, watcher: SourceWatcher, signals: _Signals, interval: float, stop_timeout: float
    ) -> None:
        self.spawner = spawner
        self.watcher = watcher
        self.signals = signals
        self.interval = interval
        self.stop_timeout = stop_timeout
        self.child: int | None = None
        self.status = 0

    def run(self) -> int:
        try:
            self._start()
            while not self.signals.received:
                self.signals.wait(self.interval)
                if self.signals.received:
                    break
                self._reap(block=False)
                changed = self.watcher.changes()
                if not changed:
                    continue
                more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
                log.info("%s changed%s: restarting the server", changed[0], more)
                self._stop()
                if not self.signals.received:
                    self._start()
        finally:
            if self.child is not None:  # a stop signal, or an error in the loop
                self._stop()
        return self.status

    def _start(self) -> None:
        try:
            self.child = self.spawner.spawn(self.signals)
        except _SpawnError as exc:
            self.status = 127
            log.error("cannot run %s: %s; waiting for a change", self.spawner.argv[0], exc)
            return
        log.info("server started (pid %d)", self.child)

    def _reap(self, *, block: bool) -> bool:
        """True if the child has exited (its status is reported and kept)."""
        assert self.child is not None or not block
        if self.child is None:
            return False
        pid, status = os.waitpid(self.child, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        code = os.waitstatus_to_exitcode(status)
        self.status = code if code >= 0 else 128 - code
        how = f"exited with status {code}" if code >= 0 else f"was killed by {signal.Signals(-code).name}"
        stopping = bool(self.signals.received) or block
        log.log(
            logging.INFO if stopping or code == 0 else logging.WARNING,
            "server (pid %d) %s%s",
            pid,
            how,
            "" if stopping else "; waiting for a change to restart it",
        )
        self._kill_leftovers(pid)
        self.child = None
        return True

    def _stop(self) -> None:
        """SIGTERM, and a second one if the parent gets a second stop signal
        (a sockserve server then closes what remains at once, as it would
        under a second Ctrl-C); SIGKILL to its group after stop_timeout."""
        if self.child is None or self._reap(block=False):
            return
        # A stop for a restart has seen no signal; a stop for a signal has seen one.
        second = max(len(self.signals.received), 1) + 1
        passed_on = False
        os.kill(self.child, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while not self._exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "server (pid %d): not stopped after %g s: killing its process group", self.child, self.stop_timeout
                )
                _kill_group(self.child, signal.SIGKILL)
                break
            if not passed_on and len(self.signals.received) >= second:
                log.info("server (pid %d): a second signal: passing it on", self.child)
                os.kill(self.child, signal.SIGTERM)
                passed_on = True  # once; what follows is up to the deadline
            self.signals.wait(min(remaining, self.interval))
        self._reap(block=True)

    def _exited(self) -> bool:
        """Whether the child has exited, without reaping it (_reap() does, and reports)."""
        assert self.child is not None
        try:
            return os.waitid(os.P_PID, self.child, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    @staticmethod
    def _kill_leftovers(pgid: int) -> None:
        """Processes of the child's group that outlived it (a forking server's children) are ended."""
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        log.warning("processes of the server's group %d outlived it: killing them", pgid)
        _kill_group(pgid, signal.SIGKILL)


def _kill_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
