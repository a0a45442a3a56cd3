"""Helpers shared by the benchmark echo servers.

Every server module is run as a script::

    python3 benchmarks/servers/<name>.py HOST:PORT

It listens on HOST:PORT (``[::1]:0`` for IPv6; port 0 picks a free port),
prints ``READY <port>`` on stdout once it is listening, serves until SIGTERM
or SIGINT, then exits cleanly and prints one ``EXIT {json}`` line with its
own resource usage (``getrusage`` of itself and of its reaped children).

A server whose dependencies are missing prints ``SKIP <reason>`` and exits
with status 3 instead; the runner reports the reason and moves on.
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import socketserver
import sys
import threading
from typing import Any, NoReturn

SKIP_EXIT_STATUS = 3


def parse_address(text: str) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """Parse ``HOST:PORT`` or ``[V6HOST]:PORT``."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return socket.AF_INET6, (host, int(port))
    host, _, port = text.rpartition(":")
    if not host:
        raise SystemExit(f"bad listen address {text!r}, expected HOST:PORT")
    return socket.AF_INET, (host, int(port))


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: hold_10000 needs 10,000 sockets
    (the runner raises its own, which servers inherit; this covers a server run by hand)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def listen_address() -> tuple[socket.AddressFamily, tuple[str, int]]:
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: {sys.argv[0]} HOST:PORT")
    raise_nofile_limit()
    return parse_address(sys.argv[1])


def _option_text(name: str) -> str | None:
    args = sys.argv[2:]
    if name not in args:
        return None
    i = args.index(name)
    if i + 1 >= len(args):
        raise SystemExit(f"{name} needs a value")
    return args[i + 1]


def option(name: str, default: int) -> int:
    """An integer option ``--name N`` from the arguments after the address."""
    text = _option_text(name)
    return default if text is None else int(text)


def float_option(name: str, default: float | None) -> float | None:
    """A number option ``--name X`` from the arguments after the address."""
    text = _option_text(name)
    return default if text is None else float(text)


def limits_attrs(sockserve: Any) -> dict[str, Any]:
    """Server class attributes from ``--idle-timeout S`` (``sockserve.Limits(idle_timeout=S)``), if given."""
    idle = float_option("--idle-timeout", None)
    return {} if idle is None else {"limits": sockserve.Limits(idle_timeout=idle)}


def with_family(server_cls: type, family: socket.AddressFamily, **attrs: Any) -> type:
    """``server_cls`` itself, or a subclass with another address family / class attributes."""
    if family != getattr(server_cls, "address_family", family):
        attrs["address_family"] = family
    if not attrs:
        return server_cls
    return type(server_cls.__name__, (server_cls,), attrs)


def ready(port: int) -> None:
    print(f"READY {port}", flush=True)


def skip(reason: str) -> NoReturn:
    print(f"SKIP {reason}", flush=True)
    sys.exit(SKIP_EXIT_STATUS)


def _usage(who: int) -> dict[str, float]:
    ru = resource.getrusage(who)
    return {"utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss_kib": ru.ru_maxrss}


def report_exit(**extra: Any) -> None:
    """Print the server's own rusage (self and reaped children) on exit."""
    info = {
        "self": _usage(resource.RUSAGE_SELF),
        "children": _usage(resource.RUSAGE_CHILDREN),
        **extra,
    }
    print("EXIT " + json.dumps(info), flush=True)


def make_line_echo_handler(base: type[socketserver.StreamRequestHandler]) -> type:
    """A StreamRequestHandler subclass that echoes lines until EOF."""

    class LineEchoHandler(base):  # type: ignore[valid-type,misc]
        def handle(self) -> None:
            readline = self.rfile.readline
            write = self.wfile.write
            while line := readline():
                write(line)

    return LineEchoHandler


def datagram_echo_handler(base: type[socketserver.BaseRequestHandler]) -> type:
    """A BaseRequestHandler subclass that sends each datagram back."""

    class DatagramEchoHandler(base):  # type: ignore[valid-type,misc]
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(data, self.client_address)

    return DatagramEchoHandler


def serve_socketserver(server_cls: type[socketserver.BaseServer], handler_cls: type) -> None:
    """Run a socketserver-style server until SIGTERM/SIGINT, then close it.

    ``shutdown()`` must not be called from the thread running
    ``serve_forever()``, so the signal handler calls it from a helper thread.
    ``server_close()`` then joins handler threads / waits for forked children
    (the stdlib defaults: ``block_on_close = True``).
    """
    family, address = listen_address()
    cls = with_family(server_cls, family)
    server = cls(address, handler_cls)  # type: ignore[call-arg]

    def on_signal(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server:
        ready(server.server_address[1])  # type: ignore[attr-defined]
        server.serve_forever()
    report_exit()


def serve_prefork(server_cls: type, handler_cls: type, workers: int) -> None:
    """Run ``sockserve.prefork.Prefork`` until SIGTERM/SIGINT (its graceful stop).

    READY carries the port read after ``bind()`` (port 0 in, the kernel's
    choice out).  The workers are forked children in the server's process
    group, so the runner counts their CPU and memory and kills them with the
    group if the supervisor does not reap them.  The supervisor prints
    nothing and logs on ``sockserve.prefork`` (warnings and errors reach
    stderr through logging's last-resort handler).
    """
    from sockserve.prefork import Prefork

    family, address = listen_address()
    supervisor = Prefork(with_family(server_cls, family), address, handler_cls, workers=workers, grace=5.0)
    supervisor.bind()
    ready(supervisor.server_address[1])
    supervisor.run()
    report_exit(workers=workers)


async def wait_for_stop_signal() -> None:
    """Return once SIGTERM or SIGINT has been received (asyncio servers)."""
    import asyncio

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def run_asyncio(serve: Any, *, use_uvloop: bool = False) -> None:
    """Run ``serve(family, address)`` on asyncio (or uvloop), then report."""
    import asyncio

    if use_uvloop:
        try:
            import uvloop
        except ImportError as exc:
            skip(f"uvloop is not importable ({exc}); pip install uvloop to include it")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    family, address = listen_address()
    asyncio.run(serve(family, address))
    report_exit(loop="uvloop" if use_uvloop else "asyncio")
