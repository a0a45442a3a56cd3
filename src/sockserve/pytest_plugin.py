"""sockserve's pytest plugin (a ``pytest11`` entry point, loaded in every
pytest run once sockserve is installed): fixtures that serve a user's handler
under a chosen model on a free port or a temporary Unix path, hand out
clients, and on teardown stop everything and fail the test if it left a
thread, a descriptor, a child process or a socket file behind.

Fixtures (every name starts with ``sockserve_``, to stay out of the way of
the project's own):

- ``sockserve_serve``: a factory, ``sockserve_serve(Handler, model=...,
  family=..., **server_attributes) -> RunningServer``;
- ``sockserve_server`` / ``sockserve_client``: the one-server case, for the
  handler the test's ``sockserve_handler`` fixture returns;
- ``sockserve_model`` / ``sockserve_family``: what those fixtures serve with
  ("thread" over "tcp" unless the test asks otherwise), parametrized by the
  ``sockserve_models`` and ``sockserve_families`` markers.

Importing this module loads no server: pytest imports it in every run, so the
servers' modules are imported when a fixture first starts one.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from types import EllipsisType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._drain import DrainReport

__all__ = ["CLIENT_TIMEOUT", "FAMILIES", "MODELS", "SYNC_MODELS", "TEARDOWN_GRACE", "RunningServer", "Serve"]

# Where a handler can run: the server classes of sockserve and sockserve.aio.
MODELS = ("sequential", "thread", "pool", "framed", "fork", "async")
# The models that serve a synchronous StreamRequestHandler or BaseRequestHandler:
# ``@pytest.mark.sockserve_models(*SYNC_MODELS)`` runs a test under each.
SYNC_MODELS = ("sequential", "thread", "pool", "fork")
FAMILIES = ("tcp", "tcp6", "unix", "udp")

# model -> the sockserve class names for (tcp or tcp6, unix, udp); "async" is sockserve.aio's.
_SYNC_CLASSES = {
    "sequential": ("TCPServer", "UnixStreamServer", "UDPServer"),
    "thread": ("ThreadingTCPServer", "ThreadingUnixStreamServer", "ThreadingUDPServer"),
    "pool": ("ThreadPoolTCPServer", "ThreadPoolUnixStreamServer", "ThreadPoolUDPServer"),
    "framed": ("ThreadPoolTCPServer", "ThreadPoolUnixStreamServer", "ThreadPoolUDPServer"),
    "fork": ("ForkingTCPServer", "ForkingUnixStreamServer", "ForkingUDPServer"),
}
_ASYNC_CLASSES = ("AsyncTCPServer", "AsyncUnixStreamServer", "AsyncUDPServer")

TEARDOWN_GRACE = 5.0  # seconds a teardown lets handlers finish once the test's clients are closed
CLIENT_TIMEOUT = 10.0  # seconds a client's reads and writes wait, so a silent server fails a test, not hangs it
_JOIN_TIMEOUT = 30.0  # a stop that takes longer than grace plus this has hung: that is reported
_SETTLE = 5.0  # seconds a thread that is ending right now gets before it counts as left running

# Descriptors a library opens once per process and keeps (uvloop's signal
# pipe): seen here when they first open, so they are never mistaken for a
# test's leak.
_PROCESS_FDS: set[str] = set()
_uvloop_primed = False
# Every server a fixture serves right now, in any test of this process: a
# fork model's server process closes their sockets (it would hold them open).
_LIVE: set[RunningServer] = set()


class RunningServer:
    """A server that a ``sockserve_serve`` fixture started and will stop.

    Attributes:
        address: the address it listens on (``(host, port)`` with the port
            the kernel chose, or the Unix socket's path).
        server: the server object. Under ``model="fork"`` it serves in a
            process of its own (forked when it started, so that it holds
            none of the test's later client sockets): this object is the
            test process's copy, good for its settings, not its live state.
        model, family: what it was started with.
    """

    def __init__(self, server: Any, model: str, family: str, *, grace: float | None, timeout: float | None) -> None:
        self.server = server
        self.address: Any = server.server_address
        self.model = model
        self.family = family
        self._grace = grace
        self._timeout = timeout
        self._clients: list[socket.socket] = []
        self._report: DrainReport | None = None
        self._thread: threading.Thread | None = None
        self._process: _ServerProcess | None = None
        self._problems: list[str] = []

    def __repr__(self) -> str:
        return f"<RunningServer {type(self.server).__name__} ({self.model}) at {self.address!r}>"

    def connect(self, timeout: float | None = None) -> socket.socket:
        """A client socket connected to the server (for ``udp``, a connected
        datagram socket), whose reads and writes wait at most ``timeout``
        seconds (default: the ``timeout`` the server was started with, 10 s
        unless said). The fixture closes it at the end of the test, before
        it stops the server."""
        if self.family == "unix":
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        elif self.family == "udp":
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        else:
            client = socket.socket(socket.AF_INET6 if self.family == "tcp6" else socket.AF_INET, socket.SOCK_STREAM)
        try:
            client.settimeout(self._timeout if timeout is None else timeout)
            client.connect(self.address)
        except BaseException:
            client.close()
            raise
        self._clients.append(client)
        return client

    def stop(self, grace: float | EllipsisType | None = ...) -> DrainReport:
        """Stop gracefully now (``server.stop(grace)``; by default with the
        ``grace`` the server was started with) and return its report; the
        fixture does it at the end of the test otherwise. Later calls return
        the same report. It does not close the clients: a test of the drain
        wants them open, and what it cuts off is its business, not a leak."""
        if self._report is None:
            self._report = self._stop(self._grace if isinstance(grace, EllipsisType) else grace)
        return self._report

    # -- what the fixture does ---------------------------------------------------------

    def _start(self) -> None:
        if self.model == "fork":
            self._process = _ServerProcess(self)
        else:
            self._thread = threading.Thread(
                target=self.server.serve_forever, name=f"sockserve_serve {self.model} {self.family}", daemon=True
            )
            self._thread.start()
        _LIVE.add(self)

    def _stop(self, grace: float | None) -> DrainReport:
        budget = (grace or 0.0) + _JOIN_TIMEOUT
        try:
            if self._process is not None:
                try:
                    return self._process.stop(grace, budget)
                finally:
                    self._problems += self._process.leaks
            report: DrainReport = self.server.stop(grace)
            assert self._thread is not None
            self._thread.join(budget)
            if self._thread.is_alive():
                self._problems.append(f"{self!r}: serve_forever() had not returned {budget:.0f} s after stop()")
            return report
        finally:
            _LIVE.discard(self)

    def _close_clients(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def _close_in_a_forked_child(self) -> None:
        """In a fork model's server process: its copies of this server's
        sockets and pipes would keep them open after the test closed them."""
        for client in self._clients:
            client.close()
        if self._process is not None:
            self._process.close_in_a_forked_child()
        else:
            sock = getattr(self.server, "socket", None)
            if sock is not None:
                sock.close()

    def _finish(self) -> list[str]:
        """Teardown: close the clients, stop, and say what went wrong."""
        self._close_clients()
        stopped_by_the_test = self._report is not None
        report = self.stop()
        problems = list(self._problems)
        if report.forced and not stopped_by_the_test:
            problems.append(
                f"{self!r}: {report.forced} connection(s) still in the handler {self._grace} s after the test "
                "had closed its clients were cut off (a handler that never ends?)"
            )
        if self.family == "unix" and isinstance(self.address, str) and os.path.lexists(self.address):
            problems.append(f"socket file left behind: {self.address}")
        return problems


class Serve:
    """The ``sockserve_serve`` fixture: call it to start a server."""

    def __init__(self, model: str, family: str) -> None:
        self._default_model = model
        self._default_family = family
        self._servers: list[RunningServer] = []
        self._directory: str | None = None
        self._binds = _record_unix_binds()  # before the baseline: its pipe is closed before the check
        self._baseline = _Baseline()

    def __call__(
        self,
        handler: Any,
        model: str | None = None,
        family: str | None = None,
        *,
        server_class: type[Any] | None = None,
        grace: float | None = TEARDOWN_GRACE,
        timeout: float | None = CLIENT_TIMEOUT,
        **server_attributes: Any,
    ) -> RunningServer:
        """Serve ``handler`` under ``model`` on ``family`` until the test ends.

        Args:
            handler: the request handler class (a ``StreamRequestHandler``, a
                ``FramedRequestHandler`` for "framed" or "pool", an
                ``aio.AsyncStreamRequestHandler`` or ``AsyncProtocolHandler``
                for "async", a datagram handler for "udp").
            model: one of ``MODELS``; default: the test's ``sockserve_model``.
            family: "tcp" (127.0.0.1), "tcp6" (::1; skips the test where
                there is no IPv6 loopback), "unix" (a path in a new temporary
                directory), "udp" (127.0.0.1); default: ``sockserve_family``.
            server_class: a server class of your own (a subclass of a
                sockserve server, say with its own ``verify_request()``) to
                serve with instead of the model's; the model, and the family
                of a Unix or UDP class, are then read from it.
            grace: how long the stop at teardown lets handlers finish.
            timeout: the default timeout of the clients ``connect()`` makes.
            server_attributes: attributes of the server class, set before it
                binds (``limits=Limits(...)``, ``request_queue_size=64``,
                ``event_loop="uvloop"``...). A name the class does not have
                is refused: a typo must not pass silently.

        Raises:
            ValueError: an unknown model or family.
            TypeError: a handler the model cannot serve, or an unknown attribute.
        """
        if server_class is not None:
            model, family = _read_server_class(server_class, handler, model, family or self._default_family)
            cls = server_class
        else:
            model = self._default_model if model is None else model
            family = self._default_family if family is None else family
            cls = _server_class(handler, model, family)
        for name in server_attributes:
            if not hasattr(cls, name):
                raise TypeError(f"{cls.__name__} has no attribute {name!r} to set (a typo?)")
        if server_attributes:
            cls = type(cls.__name__, (cls,), dict(server_attributes))
        if model == "async":
            _prime_uvloop()
        if model == "fork":
            cls = type(cls.__name__, (_ServedInItsOwnProcess, cls), {})
        server = cls(self._address(family), handler)
        running = RunningServer(server, model, family, grace=grace, timeout=timeout)
        try:
            running._start()
        except BaseException:
            server.server_close()
            raise
        self._servers.append(running)
        return running

    def _address(self, family: str) -> Any:
        if family == "unix":
            if self._directory is None:
                # Not pytest's tmp_path, nor $TMPDIR (long on macOS): a Unix
                # socket's path must fit in about 104 bytes. mkdtemp makes it
                # private (0700) under a name nobody can guess.
                short = "/tmp"  # noqa: S108 - see above
                self._directory = tempfile.mkdtemp(prefix="sockserve-", dir=short if os.path.isdir(short) else None)
            return os.path.join(self._directory, f"{len(self._servers)}.sock")
        if family == "tcp6":
            if not _has_ipv6_loopback():
                pytest.skip("this machine has no IPv6 loopback (::1)")
            return ("::1", 0)
        return ("127.0.0.1", 0)

    def _socket_files_left(self) -> list[str]:
        """The Unix socket files bound while the test ran (by its handlers,
        in this process or one forked from it, or by the test) that are
        still there; a server's own is reported by its ``_finish()``."""
        own = {os.path.abspath(r.address) for r in self._servers if isinstance(r.address, str)}
        problems = []
        for path in sorted(set(_stop_recording(self._binds)) - own):
            try:
                left = stat.S_ISSOCK(os.lstat(path).st_mode)
            except OSError:
                continue  # removed: as it should be
            if left:
                problems.append(f"socket file left behind: {path}")
        return problems

    def _teardown(self) -> None:
        problems: list[str] = []
        for running in self._servers:
            running._close_clients()  # all of them first: one server's handler may be talking to another
        for running in reversed(self._servers):
            try:
                problems += running._finish()
            except Exception as exc:  # the others must still be stopped
                problems.append(f"{running!r}: stopping it failed: {exc!r}")
        problems += self._socket_files_left()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        problems += self._baseline.leaks()
        if problems:
            pytest.fail("sockserve_serve: the test left things behind:\n  " + "\n  ".join(problems), pytrace=False)


# -- choosing the server class ---------------------------------------------------------


def _server_class(handler: Any, model: str, family: str) -> type[Any]:
    if model not in MODELS:
        raise ValueError(f"unknown sockserve model {model!r}: one of {', '.join(MODELS)}")
    if family not in FAMILIES:
        raise ValueError(f"unknown address family {family!r}: one of {', '.join(FAMILIES)}")
    index = {"tcp": 0, "tcp6": 0, "unix": 1, "udp": 2}[family]
    name = getattr(handler, "__name__", repr(handler))
    if model == "async":
        from . import aio

        cls: type[Any] = getattr(aio, _ASYNC_CLASSES[index])
        return cls
    if isinstance(handler, type) and any(_from_aio(base) for base in handler.__mro__):
        raise TypeError(f"{name} is an async handler: serve it with model='async', not {model!r}")
    import sockserve

    if model == "fork" and not hasattr(os, "fork"):
        pytest.skip("the fork model needs os.fork(), which this platform lacks")
    if model == "framed" and not (isinstance(handler, type) and issubclass(handler, sockserve.FramedRequestHandler)):
        raise TypeError(f"model='framed' serves a FramedRequestHandler, and {name} is not one: use 'pool'")
    cls = getattr(sockserve, _SYNC_CLASSES[model][index])
    return cls


def _from_aio(cls: type[Any]) -> bool:
    """Whether ``cls`` is defined in ``sockserve.aio``, told by its module's
    name: importing the package to ask ``issubclass`` would cost every test
    that never serves an async handler."""
    return cls.__module__.split(".")[:2] == ["sockserve", "aio"]


def _read_server_class(cls: type[Any], handler: Any, model: str | None, family: str) -> tuple[str, str]:
    """The model and family a user's server class serves with, checked
    against those the call asked for."""
    import sockserve

    mro = cls.__mro__ if isinstance(cls, type) else ()
    if any(_from_aio(base) for base in mro):
        own = "async"
    elif hasattr(sockserve, "ForkingMixIn") and issubclass(cls, sockserve.ForkingMixIn):
        own = "fork"
    elif issubclass(cls, sockserve.ThreadPoolMixIn):
        framed = isinstance(handler, type) and issubclass(handler, sockserve.FramedRequestHandler)
        own = "framed" if framed or model == "framed" else "pool"
    elif issubclass(cls, sockserve.ThreadingMixIn):
        own = "thread"
    elif issubclass(cls, sockserve.BaseServer):
        own = "sequential"
    else:
        raise TypeError(f"server_class={cls!r} is not a sockserve server class")
    if model is not None and model != own:
        raise TypeError(f"{cls.__name__} serves the {own!r} model, not {model!r}")
    if getattr(cls, "address_family", None) == socket.AF_UNIX:
        if getattr(cls, "socket_type", None) != socket.SOCK_STREAM:
            raise TypeError(f"{cls.__name__}: Unix datagram servers are not served by this fixture")
        return own, "unix"
    if getattr(cls, "socket_type", None) == socket.SOCK_DGRAM:
        return own, "udp"
    if family not in ("tcp", "tcp6"):
        raise TypeError(f"{cls.__name__} is a TCP server: family {family!r} does not fit it")
    return own, family


_ipv6: bool | None = None


def _has_ipv6_loopback() -> bool:
    global _ipv6
    if _ipv6 is None:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
                probe.bind(("::1", 0))
            _ipv6 = True
        except OSError:
            _ipv6 = False
    return _ipv6


def _prime_uvloop() -> None:
    """Let uvloop open its once-per-process pipe before it could count as a leak."""
    global _uvloop_primed
    if _uvloop_primed:
        return
    _uvloop_primed = True
    from .aio import uvloop_available

    if not uvloop_available():
        return
    import uvloop

    before = _open_fds()
    uvloop.new_event_loop().close()
    _PROCESS_FDS.update(_open_fds() - before)


# -- the fork model's own process ------------------------------------------------------


class _ServedInItsOwnProcess:
    """Mixed into a forking server that serves in a process of its own: it
    stops when that process's parent (the test) is gone, whatever happened to it."""

    _sockserve_parent_gone: int = -1  # the read end of a pipe the test holds the other end of

    if TYPE_CHECKING:

        def shutdown(self) -> None:
            """The server's own (this class is mixed in front of a ForkingMixIn server)."""

    def service_actions(self) -> None:
        super().service_actions()  # type: ignore[misc]
        fd = self._sockserve_parent_gone
        if fd >= 0 and select.select([fd], [], [], 0)[0]:
            self.shutdown()


class _ServerProcess:
    """A forking server serving in a child of the test process.

    A forked handler inherits every descriptor of the process that forks it.
    Forked from the test itself, it would hold the test's client sockets
    open, so a client's close() would never reach a handler reading to the
    end; forked from this process, made before the test's clients, it
    holds none of them. The stop is a SIGTERM (the process's main thread
    serves, so its handler's shutdown() ends the loop at once), answered
    with the drain report on a pipe."""

    def __init__(self, running: RunningServer) -> None:
        server = running.server
        self._parent_alive_r, self._parent_alive_w = os.pipe()
        self._report_r, report_w = os.pipe()
        server._sockserve_parent_gone = self._parent_alive_r
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the server process; it never returns into pytest
            try:
                os.close(self._parent_alive_w)
                os.close(self._report_r)
                for other in list(_LIVE):
                    if other is not running:
                        other._close_in_a_forked_child()
                _serve_here(server, report_w, running._grace)
            finally:
                os._exit(0)
        self.pid = pid
        self.leaks: list[str] = []  # what the server process left, as it said when it stopped
        os.close(report_w)
        server.socket.close()  # the server process listens; this copy would keep the port open after it
        self._server = server
        ready = self._read_until(b"\n", _JOIN_TIMEOUT)
        if ready != b"ready\n":
            self._kill()
            self._close()
            raise RuntimeError(f"the fork model's server process did not start: {ready.decode(errors='replace')}")

    def _close(self) -> None:
        os.close(self._report_r)
        os.close(self._parent_alive_w)
        os.close(self._parent_alive_r)

    def close_in_a_forked_child(self) -> None:
        """Another fork model's server process holds no end of this one's pipes."""
        self._close()

    def _read_until(self, end: bytes, timeout: float) -> bytes:
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(end):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._report_r], [], [], left)[0]:
                break
            chunk = os.read(self._report_r, 65536)
            if not chunk:
                break
            data += chunk
        return data

    def stop(self, grace: float | None, budget: float) -> DrainReport:
        import signal

        from ._drain import DrainReport

        try:
            os.kill(self.pid, signal.SIGTERM)
            answer = self._read_until(b"\n", budget)
        finally:
            status = self._kill() if self._wait(budget) is None else 0
            self._close()
            self._server.server_close()  # removes a Unix socket file: this process made it
        if status:
            raise RuntimeError(f"the fork model's server process (pid {self.pid}) hung, and was killed")
        try:
            fields = json.loads(answer)
        except ValueError:
            raise RuntimeError(f"the fork model's server process (pid {self.pid}) ended with {answer!r}") from None
        if fields.get("error"):
            raise RuntimeError(f"the fork model's server process failed: {fields['error']}")
        self.leaks = [f"in the fork model's server process (pid {self.pid}): {leak}" for leak in fields["leaks"]]
        return DrainReport(fields["in_flight"], fields["forced"], fields["seconds"])

    def _wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return status
            if time.monotonic() >= deadline:
                return None
            pause.wait(0.01)

    def _kill(self) -> int:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        return 1


def _serve_here(server: Any, report_w: int, grace: float | None) -> None:  # pragma: no cover - in the server process
    """The server process: serve on its main thread until SIGTERM, stop, and
    report the drain and what it left (its handlers' processes end, taking
    their threads and descriptors with them; a process one of them started
    and left running is reparented here, where it is seen)."""
    import signal
    import traceback

    from ._signal_wakeup import signals_interrupt_waits

    me = os.getpid()
    _become_subreaper()
    baseline = _Baseline()

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getpid() != me:  # a forked handler inherited this: it dies as SIGTERM meant
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        server.shutdown()  # on the serving thread: sets the flag and wakes the loop

    fields: dict[str, Any]
    try:
        signal.signal(signal.SIGTERM, on_sigterm)
        # A SIGTERM that comes just before the loop's poll() still wakes it.
        with signals_interrupt_waits():
            os.write(report_w, b"ready\n")
            server.serve_forever(poll_interval=0.5)
        report = server.stop(grace)
        server.server_close()
        _reap_zombies()
        fields = {
            "in_flight": report.in_flight,
            "forced": report.forced,
            "seconds": report.seconds,
            "leaks": baseline.leaks(),
        }
    except BaseException:
        fields = {"error": traceback.format_exc()}
    os.write(report_w, json.dumps(fields).encode() + b"\n")


def _become_subreaper() -> None:  # pragma: no cover - in the server process
    """Have the processes that this one's descendants leave orphaned
    reparented to it (Linux), rather than to init, where no test sees them."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass  # then a handler's orphan goes unseen, as it did before


_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def _reap_zombies() -> None:  # pragma: no cover - in the server process
    """Reap the orphans that have ended: a forked handler's child that it
    did not wait for is reaped by init once the handler exits, in a server's
    life as here; one still running is a leak."""
    for pid in _children():
        try:
            with open(f"/proc/{pid}/stat") as f:
                line = f.read()
            if line[line.rindex(")") + 2 :].startswith("Z"):
                os.waitpid(pid, os.WNOHANG)
        except (OSError, ValueError):
            pass  # gone already


# -- Unix socket files ---------------------------------------------------------------

# The Unix socket paths bound while a sockserve_serve fixture is open (one
# list per open fixture), seen by an audit hook on "socket.bind": a file a
# handler leaves at a path of its own is found wherever it is, and another
# process's sockets (another test run's servers) are never mistaken for it.
# A process forked from this one (the fork model's handlers) holds copies of
# the lists: it writes its paths to a pipe that this process reads at
# teardown, made when the first fixture opens, closed when the last closes.
_BINDS: list[list[str]] = []
_bind_pid = -1  # the process that _BINDS and the pipe belong to
_bind_pipe: tuple[int, int, tuple[int, int]] | None = None  # read end, write end, the pipe's (st_dev, st_ino)
_audit_hooked = False


def _record_unix_binds() -> list[str]:
    """Start recording Unix binds for a fixture: its list of paths."""
    global _audit_hooked, _bind_pid, _bind_pipe
    if _bind_pid != os.getpid():  # what a process forked from a test holds belongs to the test's
        _BINDS.clear()
        _bind_pipe = None
        _bind_pid = os.getpid()
    if _bind_pipe is None:
        read_end, write_end = os.pipe()
        for fd in (read_end, write_end):
            os.set_blocking(fd, False)  # a full pipe loses a path rather than block a handler
        pipe = os.fstat(write_end)
        _bind_pipe = (read_end, write_end, (pipe.st_dev, pipe.st_ino))
    if not _audit_hooked:  # once per interpreter: a hook cannot be removed, and it survives a fork
        _audit_hooked = True
        sys.addaudithook(_on_audit)
    binds: list[str] = []
    _BINDS.append(binds)
    return binds


def _stop_recording(binds: list[str]) -> list[str]:
    """Stop recording for a fixture: the paths bound since it started."""
    global _bind_pipe
    late = _read_bind_pipe()
    for other in _BINDS:
        other += late
    for i, other in enumerate(_BINDS):
        if other is binds:
            del _BINDS[i]
            break
    if not _BINDS and _bind_pipe is not None:
        read_end, write_end, _ = _bind_pipe
        _bind_pipe = None
        os.close(read_end)
        os.close(write_end)
    return binds


def _read_bind_pipe() -> list[str]:
    if _bind_pipe is None:
        return []
    data = b""
    while True:
        try:
            chunk = os.read(_bind_pipe[0], 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return [os.fsdecode(path) for path in data.split(b"\0") if path]


def _on_audit(event: str, args: tuple[Any, ...]) -> None:
    """The audit hook: called on every audited event of the process, so it
    returns at once unless a fixture is open and a Unix path is being bound."""
    if event != "socket.bind" or not _BINDS:
        return
    try:
        sock, address = args
        if sock.family != socket.AF_UNIX:
            return
        path = os.fsdecode(bytes(address) if isinstance(address, (bytearray, memoryview)) else address)
        if not path or path[0] == "\0" or os.path.lexists(path):
            return  # autobind, an abstract name, or a bind that fails: the path is someone else's
        path = os.path.abspath(path)
        if os.getpid() == _bind_pid:
            for binds in _BINDS:
                binds.append(path)
        elif _bind_pipe is not None:
            _, write_end, identity = _bind_pipe
            pipe = os.fstat(write_end)
            if (pipe.st_dev, pipe.st_ino) == identity:  # not a file that took the number of a pipe closed since
                os.write(write_end, os.fsencode(path) + b"\0")
    except Exception:  # noqa: S110 - a hook that raises would fail the user's bind
        pass


# -- leaks -----------------------------------------------------------------------------


def _open_fds() -> set[str]:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return set(os.listdir(directory))
        except OSError:
            continue
    return set()


def _children() -> set[int]:
    """This process's children (Linux; elsewhere none are seen)."""
    pids: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            pass  # the thread ended while we looked, or the kernel has no children file
    return pids


def _describe_fd(fd: str) -> str:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"
    if target.startswith("socket:"):
        try:
            with socket.socket(fileno=os.dup(int(fd))) as sock:
                kind = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram"}.get(sock.type, str(sock.type))
                local = sock.getsockname()
                try:
                    return f"fd {fd}: {kind} socket {local!r} connected to {sock.getpeername()!r}"
                except OSError:
                    return f"fd {fd}: {kind} socket {local!r}"
        except OSError:
            pass
    return f"fd {fd}: {target}"


def _describe_child(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state = stat[stat.rindex(")") + 2 :].split()[0]
    except (OSError, ValueError, IndexError):
        return f"pid {pid}"
    return f"pid {pid} ({name}{', a zombie nobody reaped' if state == 'Z' else ', running'})"


class _Baseline:
    """What the process holds before a test's servers start."""

    def __init__(self) -> None:
        gc.collect()
        self.threads = set(threading.enumerate())
        self.fds = _open_fds()
        self.children = _children()

    def leaks(self) -> list[str]:
        """What is there now that was not then: threads, descriptors, child processes."""
        problems: list[str] = []
        deadline = time.monotonic() + _SETTLE
        threads = [t for t in threading.enumerate() if t not in self.threads and t.is_alive()]
        for thread in threads:  # one that is returning right now gets its last moment
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread in threads:
            if thread.is_alive():
                problems.append(f"thread left running: {thread.name!r}{' (daemon)' if thread.daemon else ''}")
        fds = self._new_fds()
        if fds:
            # A socket nobody references any more is closed by its finalizer:
            # not a leak. Collected only now, as a collection costs
            # milliseconds in a large test session.
            gc.collect()
            fds = self._new_fds()
        problems += [_describe_fd(fd) + " left open" for fd in sorted(fds, key=int)]
        problems += [
            f"child process left behind: {_describe_child(pid)}" for pid in sorted(_children() - self.children)
        ]
        return problems

    def _new_fds(self) -> set[str]:
        return {fd for fd in _open_fds() - self.fds - _PROCESS_FDS if _is_open(fd)}


def _is_open(fd: str) -> bool:
    try:
        os.fstat(int(fd))
    except OSError:
        return False  # listing /proc/self/fd opened it for a moment
    return True


# -- the fixtures, the markers -------------------------------------------------------


@pytest.fixture(name="sockserve_model")
def _sockserve_model(request: pytest.FixtureRequest) -> str:
    """The model the test's servers run under: "thread", unless the test is
    parametrized (``@pytest.mark.sockserve_models("thread", "fork")``, or
    ``@pytest.mark.parametrize("sockserve_model", [...])``)."""
    return str(getattr(request, "param", "thread"))


@pytest.fixture(name="sockserve_family")
def _sockserve_family(request: pytest.FixtureRequest) -> str:
    """The address family of the test's servers: "tcp", unless the test is
    parametrized (``@pytest.mark.sockserve_families("tcp", "unix")``)."""
    return str(getattr(request, "param", "tcp"))


@pytest.fixture(name="sockserve_serve")
def _sockserve_serve(sockserve_model: str, sockserve_family: str) -> Iterator[Serve]:
    """A factory: ``sockserve_serve(Handler, model=..., family=..., **attributes)``
    starts a server and returns a ``RunningServer`` (``.address``,
    ``.connect()``, ``.server``, ``.stop()``). At teardown it closes the
    clients, stops every server, and fails the test if threads, descriptors,
    child processes or socket files were left behind."""
    serve = Serve(sockserve_model, sockserve_family)
    try:
        yield serve
    finally:
        serve._teardown()


@pytest.fixture(name="sockserve_handler")
def _sockserve_handler() -> Any:
    """The handler class ``sockserve_server`` serves: define this fixture."""
    pytest.fail(
        "sockserve_server and sockserve_client serve the handler class that a fixture named "
        "sockserve_handler returns: define one (in the test module or a conftest.py)",
        pytrace=False,
    )


@pytest.fixture(name="sockserve_server_attributes")
def _sockserve_server_attributes() -> dict[str, Any]:
    """Server attributes for ``sockserve_server`` (``{"limits": Limits(...)}``):
    none, unless overridden."""
    return {}


@pytest.fixture(name="sockserve_server")
def _sockserve_server(
    sockserve_serve: Serve, sockserve_handler: Any, sockserve_server_attributes: dict[str, Any]
) -> RunningServer:
    """``sockserve_handler`` served under ``sockserve_model`` on ``sockserve_family``."""
    return sockserve_serve(sockserve_handler, **sockserve_server_attributes)


@pytest.fixture(name="sockserve_client")
def _sockserve_client(sockserve_server: RunningServer) -> socket.socket:
    """A client socket connected to ``sockserve_server`` (timeout: 10 s)."""
    return sockserve_server.connect()


_MARKERS = {
    "sockserve_models": ("sockserve_model", MODELS),
    "sockserve_families": ("sockserve_family", FAMILIES),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sockserve_models(*models): run the test once per sockserve model (" + ", ".join(MODELS) + "), "
        "as the sockserve_model fixture that sockserve_serve, sockserve_server and sockserve_client use",
    )
    config.addinivalue_line(
        "markers",
        "sockserve_families(*families): run the test once per address family (" + ", ".join(FAMILIES) + "), "
        "as the sockserve_family fixture",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for marker_name, (fixture, known) in _MARKERS.items():
        if fixture not in metafunc.fixturenames:
            continue
        marker = metafunc.definition.get_closest_marker(marker_name)
        if marker is None:
            continue
        values = list(marker.args)
        unknown = [value for value in values if value not in known]
        if not values or unknown or marker.kwargs:
            pytest.fail(
                f"{metafunc.definition.nodeid}: @pytest.mark.{marker_name}() takes one or more of "
                f"{', '.join(known)}; got {marker.args!r}" + (f" and {marker.kwargs!r}" if marker.kwargs else ""),
                pytrace=False,
            )
        metafunc.parametrize(fixture, values, indirect=True, ids=values)
