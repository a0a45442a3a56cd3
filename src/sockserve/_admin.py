"""The admin listener: ``GET /healthz``, ``/readyz`` and ``/metrics`` over
HTTP/1.1, on a thread of its own, for a load balancer, an orchestrator's
probes and Prometheus.

It is one loop of non-blocking sockets (``AdminLoop``), so a client that
trickles its request or never finishes it holds a buffer, not a thread, and
its limits close what lingers and make room for a probe. The HTTP it speaks is the least
a probe needs: a request head in, one response out, the connection closed.
Reading the head is sans-IO (``HeadFramer``, ``parse_head``, ``respond``),
so it is fuzzed without a socket. It answers anyone who reaches it: bind it
to loopback or a private network.

``AdminServer`` runs that loop on a thread of its own; the prefork
supervisor, which forks workers and must not have threads when it does,
serves an ``AdminLoop`` from its own loop.
"""

from __future__ import annotations

import math
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable

from ._health import Health
from ._inet_servers import TCPServer
from ._log import budget, format_address, logger
from ._thread_signals import leave_signals_to_the_main_thread
from ._unix_servers import UnixStreamServer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    from typing_extensions import Self

    from ._prometheus import MetricsSource

# A probe's request head is a hundred bytes; a browser's, under 2 KiB.
MAX_HEAD = 8192
METRICS_HINT = "/metrics needs prometheus-client: pip install 'sockserve[metrics]'"
PATHS = ("/healthz", "/readyz", "/metrics")

# RFC 9110's token, the characters of a method.
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# An origin-form target: a path from "/", visible ASCII only.
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


# -- sans-IO: bytes in, a request or a rejection out, then the response's bytes ---------


class Request:
    """A request line that parsed: its method and its path (the query dropped)."""

    __slots__ = ("method", "path")

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path = path

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self.path!r})"


class Rejected:
    """A request head that did not parse: the status to answer and why."""

    __slots__ = ("reason", "status")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"Rejected({self.status}, {self.reason!r})"


class HeadFramer:
    """Frames one request head: the bytes up to its first empty line.

    A head longer than ``MAX_HEAD`` is returned as it stands (``MAX_HEAD + 1``
    bytes, no empty line), which ``parse_head`` answers with 431; so is what a
    client sent before it stopped sending (400). Nothing after the first head
    is kept or framed: the response closes the connection.
    """

    __slots__ = ("_buffer", "_done", "_eof")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False  # the client stopped sending
        self._done = False  # a head was returned: nothing more is framed

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            self._eof = True
        elif not self._done:
            # One byte past the cap is enough to know the head is too long.
            self._buffer += data[: MAX_HEAD + 1 - len(self._buffer)]

    def next_request(self) -> bytes | None:
        buffer = self._buffer
        if self._done or not buffer:
            return None
        end = _head_end(buffer)
        if end < 0 and len(buffer) <= MAX_HEAD and not self._eof:
            return None  # more to come
        self._done = True
        self._buffer = bytearray()
        return bytes(buffer if end < 0 else buffer[:end])

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def ended(self) -> bool:
        """The client stopped sending (an empty ``feed()``)."""
        return self._eof


# The empty line that ends a head. A bare LF is taken for CRLF, as RFC 9112 allows.
_HEAD_END = re.compile(rb"\n\r?\n")


def _head_end(buffer: bytes | bytearray) -> int:
    """Where the head ends (just after its empty line, within ``MAX_HEAD``), or -1."""
    start = len(buffer) - len(buffer.lstrip(b"\r\n"))  # empty lines before a request line are ignored (RFC 9112)
    match = _HEAD_END.search(buffer, start)
    return match.end() if match is not None and match.end() <= MAX_HEAD else -1


def parse_head(head: bytes) -> Request | Rejected:
    """The request line of a head ``HeadFramer`` returned (its other lines are ignored)."""
    if _head_end(head) != len(head):
        if len(head) > MAX_HEAD:
            return Rejected(431, f"request head over {MAX_HEAD} bytes")
        return Rejected(400, "incomplete request head")
    line = head.lstrip(b"\r\n").split(b"\n", 1)[0].removesuffix(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3:
        return Rejected(400, "bad request line")
    method, target, version = parts
    match = _VERSION.fullmatch(version)
    if match is None:
        return Rejected(400, "bad HTTP version")
    if match[1] != b"1":
        return Rejected(505, f"HTTP/{match[1].decode()}.{match[2].decode()} is not supported")
    if _METHOD.fullmatch(method) is None:
        return Rejected(400, "bad method")
    if _TARGET.fullmatch(target) is None:
        return Rejected(400, "bad request target")
    return Request(method.decode("ascii"), target.split(b"?", 1)[0].decode("ascii"))


def respond(
    request: Request | Rejected, health: Health, metrics: Callable[[], tuple[str, bytes]] | None, metrics_missing: bool
) -> bytes:
    """The whole response to ``request``.

    ``metrics``: renders ``/metrics`` (its content type and body); None with
    ``metrics_missing``: prometheus-client is not installed (501 and a hint);
    None without: metrics are off (404).
    """
    if isinstance(request, Rejected):
        return _response(request.status, f"{request.reason}\n", head_only=False)
    head_only = request.method == "HEAD"
    if request.path not in PATHS or (request.path == "/metrics" and metrics is None and not metrics_missing):
        return _response(404, "not found\n", head_only=head_only)
    if request.method not in ("GET", "HEAD"):
        return _response(405, "only GET and HEAD\n", head_only=False, extra=("Allow: GET, HEAD",))
    if request.path == "/healthz":
        live = health.live
        return _response(200 if live else 503, "ok\n" if live else f"{health.state}\n", head_only=head_only)
    if request.path == "/readyz":
        state = health.state
        return _response(200 if health.ready else 503, f"{state}\n", head_only=head_only)
    if metrics is None:
        return _response(501, METRICS_HINT + "\n", head_only=head_only)
    content_type, body = metrics()
    return _response(200, body, head_only=head_only, content_type=content_type)


def _response(
    status: int,
    body: str | bytes,
    *,
    head_only: bool,
    content_type: str = "text/plain; charset=utf-8",
    extra: tuple[str, ...] = (),
) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(data)}",
        "Cache-Control: no-store",  # a probe's answer is about now
        "Connection: close",
        *extra,
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + data


# -- answering ---------------------------------------------------------------------


def _answer(
    head: bytes,
    client: Any,
    health: Health,
    render_metrics: Callable[[], tuple[str, bytes]] | None,
    metrics_missing: bool,
) -> bytes:
    """The response to one framed request head, with its log line if it is bad."""
    parsed = parse_head(head)
    if isinstance(parsed, Rejected):
        # Anyone may send garbage: one line, rate-limited with the server's other client lines.
        held = budget.take("admin")
        if held is not None:
            logger.warning(
                "admin listener: %s from %s: answered %d%s",
                parsed.reason,
                format_address(client),
                parsed.status,
                f" ({held} more like it held back)" if held else "",
            )
    try:
        return respond(parsed, health, render_metrics, metrics_missing)
    except Exception:  # the metrics source failed: its bug, told once, and the scraper gets a 500
        if budget.take("admin-metrics") is not None:
            logger.exception("admin listener: /metrics failed")
        return _response(500, "metrics failed\n", head_only=False)


def _metrics_renderer(metrics: MetricsSource | None) -> tuple[Callable[[], tuple[str, bytes]] | None, bool]:
    """What renders ``/metrics`` (None: off, or prometheus-client missing) and whether it is missing."""
    if metrics is None:
        return None, False
    try:
        from ._prometheus import Exposition  # prometheus_client: only when /metrics is on
    except ImportError:
        return None, True
    exposition = Exposition(metrics)
    return (lambda: (exposition.content_type, exposition())), False


# -- the listener: a loop of non-blocking sockets ------------------------------------


class _AdminBindLimits:
    request_queue_size = 64


class _AdminTCPBind(_AdminBindLimits, TCPServer):
    allow_reuse_address = True  # a restart binds again at once


class _AdminUnixBind(_AdminBindLimits, UnixStreamServer):
    pass


class _LoopConnection:
    """One client of an ``AdminLoop``: its head so far, then its response."""

    __slots__ = ("client", "deadline", "framer", "out", "sock", "started")

    def __init__(self, sock: socket.socket, client: Any, started: float, deadline: float) -> None:
        self.sock = sock
        self.client = client
        self.started = started
        self.deadline = deadline
        self.framer = HeadFramer()
        self.out: memoryview | None = None  # the response, once the head is in: what is left to send


class AdminLoop:
    """The admin listener, served by a loop that owns it (``AdminServer`` is
    one on a thread of its own): that loop waits on ``poll_fds()`` for at most
    ``timeout()`` and calls ``serve()`` after each wait; every socket is
    non-blocking, so a slow or silent client never holds that loop.

    A probe must get its answer while others hold connections open (a
    Kubernetes liveness probe times out in a second, and the pod is
    restarted): a connection gets ``head_timeout_seconds`` to send its
    request head, and at ``max_connections`` a new connection takes the place
    of the oldest one still sending its head, which is closed unanswered. A
    well-behaved client sends its head at once and is answered in the turn
    that reads it; to push it out, a flood must open ``max_connections``
    connections between its connect and its head. (Waiting in the backlog
    instead, it waited for the idle ones' deadlines: ~64 idle connections
    starved every probe.) Only when every place is a response being sent
    does a newcomer wait in the backlog.

    For the prefork supervisor, which forks its workers from that loop: a
    thread running at a fork may hold a lock (the logging budget's, a
    stream's) that then stays held for ever in the worker, and Python 3.12
    warns about forking a process with threads. ``close_in_child()`` lets a
    forked worker drop its copies of the sockets (no lock taken).

    Binds in the constructor (``server_address`` read back, port 0 ok);
    ``close()`` closes every socket and removes a Unix socket file it bound.
    """

    max_connections = 64
    head_timeout_seconds = 2.0  # from accept to a complete request head: a probe's is one packet
    timeout_seconds = 10.0  # a whole exchange, from accept to the last byte of the response

    def __init__(self, address: tuple[str, int] | str, health: Health, metrics: MetricsSource | None = None) -> None:
        self.health = health
        self._render_metrics, self.metrics_missing = _metrics_renderer(metrics)
        bind_class = _AdminUnixBind if isinstance(address, str) else _AdminTCPBind
        self._bound: _AdminTCPBind | _AdminUnixBind = bind_class(address, _serves_nothing)
        self._listener = self._bound.socket
        self._listener.setblocking(False)
        self.server_address: Any = self._bound.server_address
        self._connections: dict[int, _LoopConnection] = {}

    def start(self) -> None:
        """Say what is missing (prometheus-client); serving is ``serve()``'s, in the owner's loop."""
        if self.metrics_missing:
            logger.warning("admin listener %s: %s", format_address(self.server_address), METRICS_HINT)

    def poll_fds(self) -> list[tuple[int, int]]:
        """The descriptors to wait on, each with its ``select.poll`` events."""
        fds = [(fd, select.POLLOUT if c.out is not None else select.POLLIN) for fd, c in self._connections.items()]
        if self._listener.fileno() >= 0 and (len(self._connections) < self.max_connections or self._evictable()):
            fds.append((self._listener.fileno(), select.POLLIN))  # else clients wait in the backlog
        return fds

    def timeout(self, now: float) -> float | None:
        """Seconds until a connection's deadline (None: nothing to time out)."""
        if not self._connections:
            return None
        return max(0.0, min(c.deadline for c in self._connections.values()) - now)

    def serve(self, now: float) -> None:
        """Do what can be done without blocking: accept, read, answer, close, expire."""
        self._accept(now)
        for fd, connection in list(self._connections.items()):
            try:
                if connection.out is None:
                    self._read(connection)
                if connection.out is not None:
                    self._write(connection)
            except OSError:  # reset by the client: nothing to answer
                self._drop(fd)
                continue
            if connection.out is not None and not connection.out:
                self._drop(fd)  # answered: Connection: close
            elif now >= connection.deadline:
                self._drop(fd)

    def _evictable(self) -> int | None:
        """The oldest connection still sending its head (the dict keeps accept order)."""
        return next((fd for fd, c in self._connections.items() if c.out is None), None)

    def _accept(self, now: float) -> None:
        for _ in range(self.max_connections):  # bounded: a flood must not hold the owner's loop
            oldest = None
            if len(self._connections) >= self.max_connections:
                oldest = self._evictable()
                if oldest is None:
                    return  # every place is a response being sent: the newcomers wait in the backlog
            try:
                sock, client = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ECONNABORTED: the next turn tries again
                if budget.take("admin-accept") is not None:
                    logger.warning("admin listener: accept failed: %s", exc)
                return
            if len(self._connections) >= self.max_connections and oldest is not None:
                self._drop(oldest)  # its place, to a client that may be a probe
                if budget.take("admin-full") is not None:
                    logger.warning(
                        "admin listener: %d connections open: closed the oldest that had not sent a request",
                        self.max_connections,
                    )
            sock.setblocking(False)
            deadline = now + min(self.head_timeout_seconds, self.timeout_seconds)
            self._connections[sock.fileno()] = _LoopConnection(sock, client, now, deadline)

    def _read(self, connection: _LoopConnection) -> None:
        framer = connection.framer
        while True:
            try:
                data = connection.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            framer.feed(data)
            if not data or framer.buffered > MAX_HEAD:
                break
        head = framer.next_request()
        if head is not None:
            response = _answer(head, connection.client, self.health, self._render_metrics, self.metrics_missing)
            connection.out = memoryview(response)
            connection.deadline = connection.started + self.timeout_seconds  # the head is in: time to send
        elif framer.ended:  # the client stopped sending before a head: nothing to answer
            connection.out = memoryview(b"")

    def _write(self, connection: _LoopConnection) -> None:
        out = connection.out
        assert out is not None
        while out:
            try:
                sent = connection.sock.send(out)
            except (BlockingIOError, InterruptedError):
                break
            out = out[sent:]
        connection.out = out

    def _drop(self, fd: int) -> None:
        connection = self._connections.pop(fd)
        connection.sock.close()

    def close_in_child(self) -> None:
        """In a process forked from the owner's: close this process's copies
        of the sockets (never the Unix socket file: it is the owner's)."""
        self._listener.close()
        for connection in self._connections.values():
            connection.sock.close()
        self._connections.clear()

    def close(self) -> None:
        """Close every socket (a response not yet sent is dropped) and remove a
        Unix socket file this listener bound. Idempotent."""
        for fd in list(self._connections):
            self._drop(fd)
        self._bound.server_close()


class AdminServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``address``: a TCP
    ``(host, port)`` (port 0: any free one, read back from
    ``server_address``) or a Unix socket path.

    ``health``: what ``/healthz`` (200 while ``live``) and ``/readyz`` (200
    while ``ready``, else 503 and the state) answer. ``metrics``: what
    ``/metrics`` exposes, read at each scrape: a ``MetricsSnapshot``, or one
    per listener by name (a ``listener`` label); None: no ``/metrics`` (404).
    Without prometheus-client, ``/metrics`` answers 501 with a hint, and
    ``start()`` logs one warning.

    An ``AdminLoop`` on a thread of its own: one thread, whatever the
    clients do (see ``AdminLoop`` for the limits that keep a probe answered).

    Binds in the constructor; ``start()`` serves on a thread of its own;
    ``close()`` stops it, joins the thread and closes the sockets. Also a
    context manager (``start()`` on entry, ``close()`` on exit).
    """

    def __init__(self, address: tuple[str, int] | str, health: Health, metrics: MetricsSource | None = None) -> None:
        self.health = health
        self.loop = AdminLoop(address, health, metrics)
        self.metrics_missing = self.loop.metrics_missing
        self.server_address: Any = self.loop.server_address
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        """Serve on a thread of its own."""
        if self._thread is not None:
            raise RuntimeError("the admin listener is already started")
        self.loop.start()
        self._thread = threading.Thread(
            target=self._serve, name=f"sockserve admin {format_address(self.server_address)}"
        )
        self._thread.start()

    def _serve(self) -> None:
        leave_signals_to_the_main_thread()
        loop = self.loop
        while True:
            poller = select.poll()
            poller.register(self._stop_r, select.POLLIN)
            for fd, events in loop.poll_fds():
                poller.register(fd, events)
            timeout = loop.timeout(time.monotonic())
            ready = poller.poll(None if timeout is None else math.ceil(timeout * 1000))
            if any(fd == self._stop_r for fd, _ in ready):
                return
            try:
                loop.serve(time.monotonic())
            except Exception:  # its bug: told, and the listener goes on
                if budget.take("admin-loop") is not None:
                    logger.exception("admin listener: serving failed")

    def close(self) -> None:
        """Stop serving (a response not yet sent is dropped), join the
        thread, close the sockets. Idempotent."""
        if self._closed:
            return
        self._closed = True
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join()
        self.loop.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _serves_nothing(request: Any, client_address: Any, server: Any) -> None:
    raise AssertionError("AdminLoop serves its connections itself")  # the bind server only binds
