"""Registry of the servers under test.

Each entry names a script in this directory (run as
``python3 benchmarks/servers/<module>.py HOST:PORT``, see ``_common.py`` for
the READY/SKIP/EXIT protocol), the transport it speaks, the server its
numbers are compared with (``baseline``), and optionally which scenarios
apply (default: every scenario of its protocol).

To add a server: write ``benchmarks/servers/<module>.py`` (copy
``sockserve_thread.py``) and add one ``ServerSpec`` line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SERVERS_DIR = Path(__file__).resolve().parent

Protocol = Literal["tcp", "udp"]


@dataclass(frozen=True)
class ServerSpec:
    name: str
    module: str
    protocol: Protocol
    baseline: str
    description: str
    scenarios: tuple[str, ...] | None = None  # None: all scenarios of `protocol`
    args: tuple[str, ...] = ()
    # extra arguments for some scenarios only: ((scenario, (arg, ...)), ...)
    scenario_args: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def args_for(self, scenario: str) -> tuple[str, ...]:
        """The server's arguments in ``scenario``: ``args`` plus that scenario's extras."""
        return self.args + dict(self.scenario_args).get(scenario, ())

    @property
    def script(self) -> Path:
        return SERVERS_DIR / f"{self.module}.py"


TCP_BASELINE = "stdlib_thread"
FORK_BASELINE = "stdlib_fork"
# A persistent connection holds a pool worker until the client closes, so for
# the 1000-connection scenario the pools get more workers than connections.
HOLD_POOL_ARGS = (("hold_1000", ("--max-workers", "1024")),)
# Issue 8's "stock pool, idle_timeout=30": the default pool (128 workers) with
# the idle timeout a user would set against idle clients.  A client that sends
# a byte every 5 s is never idle for 30 s, so it keeps its worker.
SLOW_CLIENT_POOL_ARGS = (
    ("slowloris_0", ("--idle-timeout", "30")),
    ("slowloris_1000", ("--idle-timeout", "30")),
)
UDP_BASELINE = "stdlib_thread_udp"

_SPECS = [
    # --- the limit: a C epoll echo server (servers/c_epoll_echo.c), first in every table
    ServerSpec(
        "c_epoll_echo",
        "c_epoll_echo",
        "tcp",
        TCP_BASELINE,
        "C, one thread, epoll, line echo: the physical limit on this machine (reference)",
    ),
    # --- TCP peers that exist today ---------------------------------------
    ServerSpec(
        "stdlib_thread", "stdlib_thread", "tcp", TCP_BASELINE, "socketserver.ThreadingTCPServer + StreamRequestHandler"
    ),
    ServerSpec(
        "stdlib_fork",
        "stdlib_fork",
        "tcp",
        TCP_BASELINE,
        "socketserver.ForkingTCPServer (stdlib defaults: max_children=40)",
    ),
    ServerSpec(
        "asyncio_streams",
        "asyncio_streams",
        "tcp",
        TCP_BASELINE,
        "asyncio.start_server, StreamReader.readline / writer.write",
    ),
    ServerSpec("asyncio_protocol", "asyncio_protocol", "tcp", TCP_BASELINE, "asyncio.Protocol on loop.create_server"),
    ServerSpec("uvloop_streams", "uvloop_streams", "tcp", TCP_BASELINE, "asyncio_streams on uvloop"),
    ServerSpec("uvloop_protocol", "uvloop_protocol", "tcp", TCP_BASELINE, "asyncio_protocol on uvloop"),
    ServerSpec(
        "gevent_stream",
        "gevent_stream",
        "tcp",
        TCP_BASELINE,
        "gevent.server.StreamServer, a greenlet per connection, makefile().readline / sendall",
    ),
    # --- sockserve ---------------------------------------------------------
    ServerSpec(
        "sockserve_thread",
        "sockserve_thread",
        "tcp",
        TCP_BASELINE,
        "sockserve.ThreadingTCPServer + StreamRequestHandler",
    ),
    ServerSpec(
        "sockserve_pool",
        "sockserve_pool",
        "tcp",
        TCP_BASELINE,
        "sockserve.ThreadPoolTCPServer (pool_max_workers 128; 1024 in hold_1000; "
        "Limits(idle_timeout=30) in slowloris_*)",
        scenario_args=HOLD_POOL_ARGS + SLOW_CLIENT_POOL_ARGS,
    ),
    ServerSpec(
        "sockserve_framed",
        "sockserve_framed",
        "tcp",
        TCP_BASELINE,
        "sockserve.ThreadPoolTCPServer + FramedRequestHandler (framed pool, 32 workers in every scenario)",
    ),
    ServerSpec(
        "sockserve_fork",
        "sockserve_fork",
        "tcp",
        FORK_BASELINE,
        "sockserve.ForkingTCPServer + StreamRequestHandler (stdlib defaults: max_children=40)",
    ),
    ServerSpec(
        "sockserve_prefork",
        "sockserve_prefork",
        "tcp",
        FORK_BASELINE,
        "sockserve.prefork.Prefork, 2 workers, sync sockserve.TCPServer in each (one connection per worker)",
    ),
    ServerSpec(
        "sockserve_prefork_pool",
        "sockserve_prefork_pool",
        "tcp",
        FORK_BASELINE,
        "sockserve.prefork.Prefork, 2 workers, ThreadPoolTCPServer in each (128 threads; 1024 in hold_1000)",
        scenario_args=HOLD_POOL_ARGS,
    ),
    # sockserve.aio: each compared with its asyncio peer on the same loop (issue 4's targets)
    ServerSpec(
        "sockserve_aio_streams",
        "sockserve_aio_streams",
        "tcp",
        "asyncio_streams",
        "sockserve.aio.AsyncTCPServer + AsyncStreamRequestHandler (a task per connection)",
    ),
    ServerSpec(
        "sockserve_aio_protocol",
        "sockserve_aio_protocol",
        "tcp",
        "asyncio_protocol",
        "sockserve.aio.AsyncTCPServer + AsyncProtocolHandler (callbacks)",
    ),
    ServerSpec(
        "sockserve_aio_streams_uvloop",
        "sockserve_aio_streams_uvloop",
        "tcp",
        "uvloop_streams",
        "sockserve_aio_streams on uvloop",
    ),
    ServerSpec(
        "sockserve_aio_protocol_uvloop",
        "sockserve_aio_protocol_uvloop",
        "tcp",
        "uvloop_protocol",
        "sockserve_aio_protocol on uvloop",
    ),
    # --- UDP -----------------------------------------------------------------
    ServerSpec(
        "c_epoll_echo_udp",
        "c_epoll_echo",
        "udp",
        UDP_BASELINE,
        "c_epoll_echo --udp: recvfrom/sendto on epoll, the physical limit (reference)",
        args=("--udp",),
    ),
    ServerSpec(
        "stdlib_thread_udp",
        "stdlib_thread_udp",
        "udp",
        UDP_BASELINE,
        "socketserver.ThreadingUDPServer, a thread per datagram",
    ),
    ServerSpec("stdlib_udp", "stdlib_udp", "udp", UDP_BASELINE, "socketserver.UDPServer, synchronous"),
    ServerSpec("sockserve_udp", "sockserve_udp", "udp", UDP_BASELINE, "sockserve.UDPServer, synchronous"),
    ServerSpec(
        "sockserve_pool_udp",
        "sockserve_pool_udp",
        "udp",
        UDP_BASELINE,
        "sockserve.ThreadPoolUDPServer, each datagram on a pool of reused threads",
    ),
    ServerSpec("asyncio_datagram", "asyncio_datagram", "udp", UDP_BASELINE, "asyncio.DatagramProtocol"),
    ServerSpec("uvloop_datagram", "uvloop_datagram", "udp", UDP_BASELINE, "asyncio.DatagramProtocol on uvloop"),
    ServerSpec(
        "sockserve_aio_datagram",
        "sockserve_aio_datagram",
        "udp",
        "asyncio_datagram",
        "sockserve.aio.AsyncUDPServer + AsyncDatagramRequestHandler (a task per datagram)",
    ),
    ServerSpec(
        "sockserve_aio_datagram_uvloop",
        "sockserve_aio_datagram_uvloop",
        "udp",
        "uvloop_datagram",
        "sockserve_aio_datagram on uvloop",
    ),
    ServerSpec(
        "sockserve_aio_datagram_callback",
        "sockserve_aio_datagram_callback",
        "udp",
        "asyncio_datagram",
        "sockserve.aio.AsyncUDPServer + AsyncDatagramProtocolHandler (callbacks, no task)",
    ),
    ServerSpec(
        "sockserve_aio_datagram_callback_uvloop",
        "sockserve_aio_datagram_callback_uvloop",
        "udp",
        "uvloop_datagram",
        "sockserve_aio_datagram_callback on uvloop",
    ),
    ServerSpec(
        "asyncio_datagram_task",
        "asyncio_datagram_task",
        "udp",
        "asyncio_datagram",
        "asyncio.DatagramProtocol starting a task per datagram (create_task, a set, a done callback)",
    ),
    ServerSpec(
        "uvloop_datagram_task",
        "uvloop_datagram_task",
        "udp",
        "uvloop_datagram",
        "asyncio_datagram_task on uvloop",
    ),
]

SERVERS: dict[str, ServerSpec] = {spec.name: spec for spec in _SPECS}

assert all(spec.baseline in SERVERS for spec in _SPECS), "unknown baseline"
