"""The admin listener: ``GET /healthz``, ``/readyz`` and ``/metrics`` over
HTTP/1.1, on a thread of its own, for a load balancer, an orchestrator's
probes and Prometheus.

It is a sockserve server itself: a framed pool (``FramedRequestHandler``),
so a client that trickles its request or never finishes it holds a buffer,
not a thread, and limits close what lingers. The HTTP it speaks is the least
a probe needs: a request head in, one response out, the connection closed.
Reading the head is sans-IO (``HeadFramer``, ``parse_head``, ``respond``),
so it is fuzzed without a socket. It answers anyone who reaches it: bind it
to loopback or a private network.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import threading
from collections.abc import Callable

from ._framed import FramedRequestHandler
from ._health import Health
from ._limits import Limits
from ._log import budget, format_address, logger
from ._pool_servers import ThreadPoolTCPServer, ThreadPoolUnixStreamServer
from ._thread_signals import leave_signals_to_the_main_thread

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


# -- the server ----------------------------------------------------------------------


class _AdminHandler(FramedRequestHandler):
    """One request, one response, then the connection is closed."""

    def make_framer(self) -> HeadFramer:
        return HeadFramer()

    def handle_request(self, request: bytes) -> None:
        admin: AdminServer = self.server.admin
        parsed = parse_head(request)
        if isinstance(parsed, Rejected):
            # Anyone may send garbage: one line, rate-limited with the server's other client lines.
            held = budget.take("admin")
            if held is not None:
                logger.warning(
                    "admin listener: %s from %s: answered %d%s",
                    parsed.reason,
                    format_address(self.client_address),
                    parsed.status,
                    f" ({held} more like it held back)" if held else "",
                )
        try:
            response = respond(parsed, admin.health, admin._render_metrics, admin.metrics_missing)
        except Exception:  # the metrics source failed: its bug, told once, and the scraper gets a 500
            if budget.take("admin-metrics") is not None:
                logger.exception("admin listener: /metrics failed")
            response = _response(500, "metrics failed\n", head_only=False)
        self.send(response)
        self.close()


class _AdminLimits:
    """What keeps a slow or hostile admin client from holding the listener:
    connections are buffers (framed), a few dozen at most, each given a few
    seconds; the pool's threads only run complete requests."""

    limits = Limits(max_connections=64, idle_timeout=5.0, connection_timeout=10.0)
    pool_max_workers = 2
    pool_min_workers = 1
    request_queue_size = 64
    admin: AdminServer


class _AdminTCPServer(_AdminLimits, ThreadPoolTCPServer):
    pass


class _AdminUnixServer(_AdminLimits, ThreadPoolUnixStreamServer):
    pass


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

    Binds in the constructor; ``start()`` serves on a thread of its own;
    ``close()`` stops it, joins the thread and closes the socket. Also a
    context manager (``start()`` on entry, ``close()`` on exit).
    """

    def __init__(self, address: tuple[str, int] | str, health: Health, metrics: MetricsSource | None = None) -> None:
        self.health = health
        self.metrics_missing = False
        self._render_metrics: Callable[[], tuple[str, bytes]] | None = None
        if metrics is not None:
            try:
                from ._prometheus import Exposition  # prometheus_client: only when /metrics is on
            except ImportError:
                self.metrics_missing = True
            else:
                exposition = Exposition(metrics)
                self._render_metrics = lambda: (exposition.content_type, exposition())
        server_class = _AdminUnixServer if isinstance(address, str) else _AdminTCPServer
        self._server: _AdminTCPServer | _AdminUnixServer = server_class(address, _AdminHandler)
        self._server.admin = self
        self.server_address: Any = self._server.server_address
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve on a thread of its own."""
        if self._thread is not None:
            raise RuntimeError("the admin listener is already started")
        if self.metrics_missing:
            logger.warning("admin listener %s: %s", format_address(self.server_address), METRICS_HINT)
        self._thread = threading.Thread(
            target=self._serve, name=f"sockserve admin {format_address(self.server_address)}"
        )
        self._thread.start()

    def _serve(self) -> None:
        leave_signals_to_the_main_thread()
        self._server.serve_forever()

    def close(self) -> None:
        """Stop serving (a request in flight gets a second to finish), join
        the thread, close the socket. Idempotent."""
        self._server.stop(1.0)
        if self._thread is not None:
            self._thread.join()

    def close_in_child(self) -> None:
        """In a process forked from this one (a prefork worker, right after
        ``fork()``): let go of this process's copies of the admin listener's
        sockets, stopping nothing (its threads do not exist in the child).

        The listening socket is closed: a child that kept it would keep the
        admin port accepting (connections queued, never answered) once this
        process is gone. A connection the listener had accepted at the moment
        of the fork (found on Linux by its local address, in
        ``/proc/self/fd``) is replaced by ``/dev/null``: the child's copy
        would hold the connection open after this process closes it, and the
        client would wait for the end of the response until the child exits.
        The descriptor's number stays taken, so a socket object the child
        inherited for it can never close someone else's descriptor.

        Takes no lock (one may have been held by a thread of this process at
        the fork, and would be held for ever in the child).
        """
        listening = self._server.socket
        try:
            family, local = listening.family, listening.getsockname()
        except OSError:  # closed already
            return
        listening.close()
        try:
            names = os.listdir("/proc/self/fd")
        except OSError:  # not Linux: the accepted connections cannot be found
            return
        devnull = -1
        try:
            for name in names:
                fd = int(name)
                if _is_connection_on(fd, family, local):
                    if devnull < 0:
                        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    os.dup2(devnull, fd)
        finally:
            if devnull >= 0:
                os.close(devnull)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _is_connection_on(fd: int, family: int, local: Any) -> bool:
    """Whether ``fd`` is a stream socket of ``family`` whose local address is
    ``local`` (a TCP listener's port, on any address if it listens on all of
    them; a Unix listener's path): a connection that listener accepted."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        sock = socket.socket(fileno=fd)
    except OSError:  # closed meanwhile (the listdir's own descriptor), or not a socket we can look at
        return False
    try:
        if sock.family != family or sock.type != socket.SOCK_STREAM:
            return False
        name = sock.getsockname()
    except OSError:
        return False
    finally:
        sock.detach()  # only looked at: the descriptor stays open
    if family == socket.AF_UNIX:
        return bool(name) and name == local
    host, port = local[0], local[1]
    return bool(name[1] == port and (host in ("0.0.0.0", "::") or name[0] == host))
