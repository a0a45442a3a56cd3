"""Every way sockserve can run a handler, behind one small interface, so that
the matrix tests run the same case under each: a new model joins the list
below and inherits every test.

A kind starts a server with ``Options`` and returns a ``Running``: its
address, its log (a file every process of the server writes to: the test
process, forked children, a prefork supervisor and its workers), and
``stop()``/``force_stop()``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sockserve
from sockserve import aio
from sockserve.testing import running_server

from . import handlers

TIMEOUT = 10.0
NO_LIMITS = sockserve.Limits()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Options:
    """How a test wants its server."""

    limits: sockserve.Limits = NO_LIMITS
    grace: float | None = 10.0  # for stop(); a prefork kind needs it when it starts
    stages: bool = False  # every connection goes through handlers.HelloStage first
    no_super_close: bool = False  # close_request()/shutdown_request() overridden without super()
    max_requests: int | None = None
    # server.proxy_protocol: None (off), or the trusted networks (Unix peers trusted per proxy_trust_unix)
    proxy_trusted: tuple[str, ...] | None = None
    proxy_trust_unix: bool = True
    proxy_required: bool = True
    proxy_timeout: float = 5.0
    # server.access_list, when either is set
    access_allow: tuple[str, ...] = ()
    access_deny: tuple[str, ...] = ()

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["limits"] = {name: getattr(self.limits, name) for name in sockserve.Limits.__slots__}
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> Options:
        fields = json.loads(text)
        fields["limits"] = sockserve.Limits(**fields["limits"])
        for name in ("proxy_trusted", "access_allow", "access_deny"):
            if fields[name] is not None:
                fields[name] = tuple(fields[name])
        return cls(**fields)

    def edge(self) -> dict[str, Any]:
        """The server attributes these options ask for: proxy_protocol, access_list."""
        attrs: dict[str, Any] = {}
        if self.proxy_trusted is not None:
            attrs["proxy_protocol"] = sockserve.ProxyProtocol(
                trusted=self.proxy_trusted,
                required=self.proxy_required,
                timeout=self.proxy_timeout,
                trust_unix=self.proxy_trust_unix,
            )
        if self.access_allow or self.access_deny:
            attrs["access_list"] = sockserve.AccessList(allow=self.access_allow, deny=self.access_deny)
        return attrs


class WithHelloStage:
    def _stage_factories(self, ticket: Any = None) -> tuple[Any, ...]:
        return (handlers.HelloStage,)


class LegalCloseOverrides:
    """Stdlib-legal overrides that do not call super(): they must not leak slots."""

    def shutdown_request(self, request: Any) -> None:
        request.close()

    def close_request(self, request: Any) -> None:
        request.close()


# kind -> family -> (server class, handler class)
SYNC_STREAM = {
    "sequential": {"tcp": sockserve.TCPServer, "unix": sockserve.UnixStreamServer},
    "threads": {"tcp": sockserve.ThreadingTCPServer, "unix": sockserve.ThreadingUnixStreamServer},
    "pool": {"tcp": sockserve.ThreadPoolTCPServer, "unix": sockserve.ThreadPoolUnixStreamServer},
    "fork": {"tcp": sockserve.ForkingTCPServer, "unix": sockserve.ForkingUnixStreamServer},
    # A prefork worker serves with the production default, the pool.
    "prefork": {"tcp": sockserve.ThreadPoolTCPServer, "unix": sockserve.ThreadPoolUnixStreamServer},
}
SYNC_DATAGRAM = {
    "sequential": sockserve.UDPServer,
    "threads": sockserve.ThreadingUDPServer,
    "pool": sockserve.ThreadPoolUDPServer,
    "fork": sockserve.ForkingUDPServer,
}
ASYNC_STREAM = {"tcp": aio.AsyncTCPServer, "unix": aio.AsyncUnixStreamServer}


def server_class(kind: str, family: str, options: Options) -> tuple[type[Any], type[Any]]:
    """The server class (with the options applied) and the handler class for a kind and family."""
    attrs: dict[str, Any] = {"limits": options.limits, "max_requests": options.max_requests, **options.edge()}
    mixins: list[type[Any]] = []
    if options.stages:
        mixins.append(WithHelloStage)
    if family == "udp":
        if kind.startswith("async"):
            handler = handlers.CallbackDatagramEcho if "callback" in kind else handlers.AsyncDatagramEcho
            base = aio.AsyncUDPServer
            attrs["event_loop"] = "uvloop" if kind.endswith("uvloop") else "asyncio"
        else:
            base, handler = SYNC_DATAGRAM[kind], handlers.SyncDatagramEcho
    elif kind.startswith("async"):
        base = ASYNC_STREAM[family]
        handler = handlers.CallbackEcho if "callback" in kind else handlers.AsyncEcho
        attrs["event_loop"] = "uvloop" if kind.endswith("uvloop") else "asyncio"
    elif kind in ("framed", "prefork_framed"):
        base, handler = SYNC_STREAM["pool"][family], handlers.FramedEcho
    else:
        base, handler = SYNC_STREAM[kind][family], handlers.SyncEcho
        if options.no_super_close:
            mixins.append(LegalCloseOverrides)
    return type(f"{kind.title()}{family.title()}Server", (*mixins, base), attrs), handler


_WORKER_PREFIX = re.compile(r"^(\w+ )worker \d+: ")


class LogFile:
    """The ``sockserve`` log of a server, in a file that every process of it appends to."""

    def __init__(self, path: str) -> None:
        self.path = path
        open(path, "w").close()

    def text(self) -> str:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def lines(self, pattern: str = "") -> list[str]:
        """The lines matching ``pattern``; a prefork worker's ``worker <pid>: ``
        prefix is taken out first, so one pattern fits every kind."""
        regex = re.compile(pattern)
        lines = (_WORKER_PREFIX.sub(r"\1", line) for line in self.text().splitlines())
        return [line for line in lines if regex.search(line)]

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """The first line matching ``pattern``, waiting for it (bounded)."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            found = self.lines(pattern)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no log line matching {pattern!r} in:\n{self.text()}")
            pause.wait(0.02)


class Running:
    """A server of some kind, serving."""

    address: Any
    logs: LogFile
    report: sockserve.DrainReport | None = None

    def stop(self) -> sockserve.DrainReport | None:
        """Graceful stop with the options' grace; the report where the kind has one."""
        raise NotImplementedError

    def force_stop(self) -> None:
        raise NotImplementedError

    def settle(self) -> bool:
        """Wait until no connection is counted in flight any more (a handler
        ends a moment after its client sees the close); False where the kind
        cannot tell (a prefork worker)."""
        raise NotImplementedError

    def stop_in_background(self) -> Callable[[], sockserve.DrainReport | None]:
        """Start stop() in a thread once the drain has begun; returns a function that joins it."""
        result: list[sockserve.DrainReport | None] = []
        thread = threading.Thread(target=lambda: result.append(self.stop()), daemon=True)
        thread.start()

        def join() -> sockserve.DrainReport | None:
            thread.join(TIMEOUT * 3)
            assert not thread.is_alive(), "stop() did not return"
            return result[0]

        return join


class InProcess(Running):
    """A server object in this process, serving on a thread."""

    def __init__(self, server: Any, logs: LogFile) -> None:
        self.server = server
        self.address = server.server_address
        self.logs = logs
        self._lock = threading.Lock()

    def stop(self) -> sockserve.DrainReport | None:
        report: sockserve.DrainReport = self.server.stop(self.grace)
        self.report = report
        return report

    def force_stop(self) -> None:
        self.server.force_stop()

    def settle(self) -> bool:
        from ..helpers import wait_until

        assert wait_until(lambda: not self.server._in_flight_count()), (
            "a finished connection is still counted in flight"
        )
        return True

    grace: float | None = None


class SubprocessRunning(Running):
    """A server in a process of its own (``server_runner``), driven through its stdin."""

    def __init__(self, proc: subprocess.Popen[bytes], address: Any, logs: LogFile) -> None:
        self.proc = proc
        self.address = address
        self.logs = logs
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._stopped = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def _command(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def _answer(self, prefix: bytes) -> bytes:
        line = self._lines.get(timeout=TIMEOUT * 3)
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}\n{self.logs.text()}"
        return line[len(prefix) :]

    def stop(self) -> sockserve.DrainReport | None:
        if not self._stopped:
            self._stopped = True
            self._command("stop")
            self.report = sockserve.DrainReport(**json.loads(self._answer(b"REPORT ")))
        return self.report

    def force_stop(self) -> None:
        self._command("force")

    def settle(self) -> bool:
        self._command("settle")
        self._answer(b"SETTLED")
        return True


class PreforkRunning(Running):
    """A prefork supervisor with one worker, in a subprocess (it installs signal handlers)."""

    def __init__(self, proc: subprocess.Popen[bytes], address: Any, logs: LogFile) -> None:
        self.proc = proc
        self.address = address
        self.logs = logs
        self._stopped = False

    def stop(self) -> sockserve.DrainReport | None:
        if not self._stopped:
            self._stopped = True
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(TIMEOUT * 3) == 0
        return None

    def force_stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)

    def settle(self) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    family: str
    concurrent: bool  # serves several connections at once
    in_process: bool  # the server object lives in this process: stop() gives a report

    @property
    def id(self) -> str:
        return f"{self.name}-{self.family}"

    @property
    def framed(self) -> bool:
        """A framed handler: between requests its connection is not in flight."""
        return self.name in ("framed", "prefork_framed")

    @property
    def is_async(self) -> bool:
        return self.name.startswith("async")

    def address(self, tmp: str) -> Any:
        if self.family == "unix":
            return os.path.join(tmp, f"{self.name}.sock")
        return ("127.0.0.1", 0)

    def start(self, tmp: str, options: Options = Options()) -> Iterator[Running]:
        """A context manager: the server serves inside the block, and is gone after it."""
        return _start(self, tmp, options)


def _start(kind: Kind, tmp: str, options: Options) -> Any:
    import contextlib

    @contextlib.contextmanager
    def started() -> Iterator[Running]:
        logs = LogFile(os.path.join(tmp, f"{kind.id}.log"))
        if kind.name in ("prefork", "prefork_framed"):
            with _prefork(kind, tmp, options, logs) as running:
                yield running
            return
        if kind.name == "fork":
            with _subprocess(kind, tmp, options, logs) as running:
                yield running
            return
        handler = logging.FileHandler(logs.path)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log = logging.getLogger("sockserve")
        level = log.level
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        try:
            cls, handler_class = server_class(kind.name, kind.family, options)
            server = cls(kind.address(tmp), handler_class)
            running = InProcess(server, logs)
            running.grace = options.grace
            with running_server(server, poll_interval=0.05):
                yield running
        finally:
            log.removeHandler(handler)
            log.setLevel(level)
            handler.close()

    return started()


def _prefork(kind: Kind, tmp: str, options: Options, logs: LogFile) -> Any:
    import contextlib

    @contextlib.contextmanager
    def started() -> Iterator[Running]:
        config = {"kind": kind.name, "family": kind.family, "address": kind.address(tmp), "log": logs.path}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.matrix.prefork_runner", json.dumps(config), options.to_json()],
            cwd=REPO,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a stray worker can be killed with its group
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith(b"READY "), f"the supervisor did not start: {line!r}\n{logs.text()}"
            address = json.loads(line[6:])
            if isinstance(address, list):
                address = tuple(address)
            logs.wait_for(r"^INFO serving ")  # the worker's line, its "worker <pid>: " prefix taken out
            yield PreforkRunning(proc, address, logs)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)
                try:
                    proc.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(TIMEOUT)
            assert proc.stdout is not None
            proc.stdout.close()

    return started()


def _subprocess(kind: Kind, tmp: str, options: Options, logs: LogFile) -> Any:
    import contextlib

    @contextlib.contextmanager
    def started() -> Iterator[Running]:
        command = [
            sys.executable,
            "-m",
            "tests.matrix.server_runner",
            kind.name,
            kind.family,
            json.dumps(kind.address(tmp)),
            logs.path,
            options.to_json(),
        ]
        proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith(b"READY "), f"the server did not start: {line!r}\n{logs.text()}"
            address = json.loads(line[6:])
            yield SubprocessRunning(proc, tuple(address) if isinstance(address, list) else address, logs)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()  # the runner stops its server and exits
            try:
                proc.wait(TIMEOUT * 2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(TIMEOUT)
            assert proc.stdout is not None
            proc.stdout.close()

    return started()


def _uvloop() -> bool:
    return aio.uvloop_available()


STREAM_KINDS = [
    Kind(name, family, concurrent=name != "sequential", in_process=name not in ("prefork", "fork", "prefork_framed"))
    for name in ("sequential", "threads", "pool", "framed", "fork", "prefork", "prefork_framed")
    + ("async_stream", "async_callback")
    + (("async_stream_uvloop", "async_callback_uvloop") if _uvloop() else ())
    for family in ("tcp", "unix")
]
DATAGRAM_KINDS = [
    Kind(name, "udp", concurrent=name != "sequential", in_process=name != "fork")
    for name in ("sequential", "threads", "pool", "fork", "async_datagram", "async_datagram_callback")
    + (("async_datagram_uvloop", "async_datagram_callback_uvloop") if _uvloop() else ())
]
