"""adopt(): every kind of server serves a socket it was given, already bound
and listening, without binding or listening on it again, and leaves an
inherited Unix socket file where it found it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

import sockserve
from sockserve import aio
from sockserve._adopt import adopt
from sockserve._socket_activation import SocketActivationError
from sockserve.testing import running_server

from .fake_systemd import ServiceManager
from .helpers import TIMEOUT, connect, recv_all, recv_line
from .matrix import handlers

pytestmark = pytest.mark.timeout(60)


class ManagerSocket(socket.socket):
    """The descriptor a service passed to us, in an object that fails the
    test if the server binds it or changes an option, and records its
    ``listen()`` calls: the server must use the socket as it came."""

    listens: list[int]

    def bind(self, *args: Any) -> None:
        raise AssertionError(f"an inherited socket was bound again: bind{args}")

    def listen(self, *args: Any) -> None:
        ManagerSocket.listens.append(args[0] if args else -1)  # the loop listens on a duplicate, of this class too
        super().listen(*args)

    def setsockopt(self, *args: Any) -> None:
        raise AssertionError(f"an option of an inherited socket was changed: setsockopt{args}")


def inherited_copy(manager: socket.socket) -> ManagerSocket:
    """What a service gets: another descriptor for the manager's socket."""
    ManagerSocket.listens = []
    return ManagerSocket(fileno=os.dup(manager.fileno()))


def tcp_backlog(sock: socket.socket) -> int:
    """A listening TCP socket's backlog as the kernel has it (TCP_INFO's tcpi_sacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    return int.from_bytes(info[28:32], "little")


def manager_socket(stack: ExitStack, family: str, kind: int, path: str) -> socket.socket:
    """The socket a service manager (a .socket unit) makes, binds and listens on."""
    sock = stack.enter_context(socket.socket(socket.AF_UNIX if family == "unix" else socket.AF_INET, kind))
    sock.bind(path if family == "unix" else ("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(7)
    return sock


STREAM_KINDS: list[tuple[type[Any], type[Any], str]] = [
    (sockserve.TCPServer, handlers.SyncEcho, "tcp"),
    (sockserve.UnixStreamServer, handlers.SyncEcho, "unix"),
    (sockserve.ThreadingTCPServer, handlers.SyncEcho, "tcp"),
    (sockserve.ThreadingUnixStreamServer, handlers.SyncEcho, "unix"),
    (sockserve.ThreadPoolTCPServer, handlers.SyncEcho, "tcp"),
    (sockserve.ThreadPoolUnixStreamServer, handlers.SyncEcho, "unix"),
    (sockserve.ThreadPoolTCPServer, handlers.FramedEcho, "tcp"),
    (sockserve.ThreadPoolUnixStreamServer, handlers.FramedEcho, "unix"),
    (sockserve.ForkingTCPServer, handlers.SyncEcho, "tcp"),
    (sockserve.ForkingUnixStreamServer, handlers.SyncEcho, "unix"),
    (aio.AsyncTCPServer, handlers.AsyncEcho, "tcp"),
    (aio.AsyncTCPServer, handlers.CallbackEcho, "tcp"),
    (aio.AsyncUnixStreamServer, handlers.AsyncEcho, "unix"),
    (aio.AsyncUnixStreamServer, handlers.CallbackEcho, "unix"),
]
DATAGRAM_KINDS: list[tuple[type[Any], type[Any], str]] = [
    (sockserve.UDPServer, handlers.SyncDatagramEcho, "udp"),
    (sockserve.UnixDatagramServer, handlers.SyncDatagramEcho, "unix"),
    (sockserve.ThreadingUDPServer, handlers.SyncDatagramEcho, "udp"),
    (sockserve.ThreadingUnixDatagramServer, handlers.SyncDatagramEcho, "unix"),
    (sockserve.ThreadPoolUDPServer, handlers.SyncDatagramEcho, "udp"),
    (sockserve.ThreadPoolUnixDatagramServer, handlers.SyncDatagramEcho, "unix"),
    (sockserve.ForkingUDPServer, handlers.SyncDatagramEcho, "udp"),
    (sockserve.ForkingUnixDatagramServer, handlers.SyncDatagramEcho, "unix"),
    (aio.AsyncUDPServer, handlers.AsyncDatagramEcho, "udp"),
    (aio.AsyncUDPServer, handlers.CallbackDatagramEcho, "udp"),
    (aio.AsyncUnixDatagramServer, handlers.AsyncDatagramEcho, "unix"),
    (aio.AsyncUnixDatagramServer, handlers.CallbackDatagramEcho, "unix"),
]


def kind_id(kind: tuple[type[Any], type[Any], str]) -> str:
    return f"{kind[0].__name__}-{kind[1].__name__}"


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as made:
        yield made


@pytest.mark.parametrize("kind", STREAM_KINDS, ids=kind_id)
def test_every_stream_server_serves_an_adopted_socket(
    kind: tuple[type[Any], type[Any], str], stack: ExitStack, unix_path: str
) -> None:
    server_class, handler_class, family = kind
    manager = manager_socket(stack, family, socket.SOCK_STREAM, unix_path)
    passed = inherited_copy(manager)
    inode = os.fstat(passed.fileno()).st_ino
    server = adopt(server_class, passed, handler_class)
    assert server.socket is passed, "the server serves the very socket it was given"
    assert server.server_address == manager.getsockname()
    assert server._socket_file is None if family == "unix" else True  # claims no file: never unlinks it
    with running_server(server):
        for _ in range(2):
            with connect(server.server_address) as client:
                client.sendall(b"hello\n")
                assert recv_line(client) == b"hello\n"
                client.sendall(b"pid\n")
                pid = int(recv_line(client))
                assert pid == os.getpid() or server_class.__name__.startswith("Forking")
                # A forked child holds a copy of this very descriptor (it was
                # open when the child was forked): only a shutdown ends its read.
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == b""
        assert os.fstat(server.socket.fileno()).st_ino == inode
        if family == "tcp":
            assert tcp_backlog(manager) == 7, "the backlog is the manager's"
    if not server_class.__module__.startswith("sockserve.aio"):
        assert ManagerSocket.listens == [], "a synchronous server never listens on an inherited socket"
    assert passed.fileno() == -1, "server_close() closes the descriptor it was given"
    if family == "unix":
        assert os.path.exists(unix_path), "the inherited socket's file belongs to the manager"
    # The manager's socket was never shut down or re-listened: it still takes connections.
    with connect(manager.getsockname()):
        conn, _ = manager.accept()
        conn.close()


@pytest.mark.parametrize("kind", DATAGRAM_KINDS, ids=kind_id)
def test_every_datagram_server_serves_an_adopted_socket(
    kind: tuple[type[Any], type[Any], str], stack: ExitStack, short_tmp: str
) -> None:
    server_class, handler_class, family = kind
    path = os.path.join(short_tmp, "dgram")
    manager = manager_socket(stack, family, socket.SOCK_DGRAM, path)
    passed = inherited_copy(manager)
    server = adopt(server_class, passed, handler_class)
    assert server.socket is passed
    assert server.server_address == manager.getsockname()
    with running_server(server):
        client = stack.enter_context(socket.socket(manager.family, socket.SOCK_DGRAM))
        client.settimeout(TIMEOUT)
        if family == "unix":
            client.bind(os.path.join(short_tmp, "client"))  # an address of its own, for the reply
        client.sendto(b"ping", server.server_address)
        assert client.recv(100) == b"ping"
    assert passed.fileno() == -1
    if family == "unix":
        assert os.path.exists(path), "the inherited socket's file belongs to the manager"


def test_an_ipv6_socket_serves_a_class_that_kept_af_inet(stack: ExitStack) -> None:
    manager = stack.enter_context(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
    try:
        manager.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    manager.listen()
    server = adopt(sockserve.ThreadPoolTCPServer, inherited_copy(manager), handlers.SyncEcho)
    assert server.address_family == socket.AF_INET6
    with running_server(server), connect(server.server_address) as client:
        client.sendall(b"six\n")
        assert recv_line(client) == b"six\n"


def test_options_are_set_on_the_server(stack: ExitStack) -> None:
    manager = manager_socket(stack, "tcp", socket.SOCK_STREAM, "")
    limits = sockserve.Limits(max_connections=3)
    with adopt(sockserve.ThreadPoolTCPServer, manager.dup(), handlers.SyncEcho, limits=limits) as server:
        assert server.limits is limits
    with pytest.raises(TypeError, match="ThreadPoolTCPServer has no option 'limts'"):
        adopt(sockserve.ThreadPoolTCPServer, manager, handlers.SyncEcho, limts=limits)
    assert manager.fileno() != -1, "a refused adoption leaves the socket to its caller"


@pytest.mark.parametrize(
    ("server_class", "family", "kind", "message"),
    [
        (sockserve.TCPServer, "unix", socket.SOCK_STREAM, "TCPServer serves TCP sockets, not a Unix stream socket"),
        (sockserve.UnixStreamServer, "tcp", socket.SOCK_STREAM, "serves Unix stream sockets, not a TCP socket"),
        (sockserve.TCPServer, "tcp", socket.SOCK_DGRAM, "TCPServer serves TCP sockets, not a UDP socket"),
        (sockserve.UDPServer, "tcp", socket.SOCK_STREAM, "UDPServer serves UDP sockets, not a TCP socket"),
        (aio.AsyncUnixDatagramServer, "unix", socket.SOCK_STREAM, "serves Unix datagram sockets, not a Unix stream"),
    ],
)
def test_a_socket_of_the_wrong_kind_is_a_clear_error(
    server_class: type[Any], family: str, kind: int, message: str, stack: ExitStack, unix_path: str
) -> None:
    manager = manager_socket(stack, family, kind, unix_path)
    with pytest.raises(SocketActivationError, match=message):
        adopt(server_class, manager, handlers.SyncEcho)
    assert manager.fileno() != -1


def test_a_stream_socket_that_is_not_listening_is_refused(stack: ExitStack) -> None:
    bound = stack.enter_context(socket.socket())
    bound.bind(("127.0.0.1", 0))
    with pytest.raises(SocketActivationError, match="not listening"):
        adopt(sockserve.TCPServer, bound, handlers.SyncEcho)


def test_an_unbound_datagram_socket_is_refused(stack: ExitStack) -> None:
    for family in (socket.AF_INET, socket.AF_UNIX):
        unbound = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
        server_class = sockserve.UDPServer if family == socket.AF_INET else sockserve.UnixDatagramServer
        with pytest.raises(SocketActivationError, match="has no address"):
            adopt(server_class, unbound, handlers.SyncDatagramEcho)


def test_a_closed_socket_is_refused() -> None:
    closed = socket.socket()
    closed.close()
    with pytest.raises(SocketActivationError, match="closed socket"):
        adopt(sockserve.TCPServer, closed, handlers.SyncEcho)


# --- under a (fake) service manager, in a process of its own ----------------------

# A service as the CLI builds one: the inherited sockets, each adopted by a
# server, READY=1 once they serve, STOPPING=1 on SIGTERM.
SERVICE = r"""
import signal, sys, threading
import sockserve
from sockserve._adopt import adopt
from sockserve._sd_notify import Notifier
from sockserve._socket_activation import inherited_sockets

class Echo(sockserve.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)

notifier = Notifier.from_environment()
classes = {"web": sockserve.ThreadPoolTCPServer, "local": sockserve.ThreadPoolUnixStreamServer}
servers = [adopt(classes[s.name], s.socket, Echo) for s in inherited_sockets()]
threads = [threading.Thread(target=server.serve_forever) for server in servers]
for thread in threads:
    thread.start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
notifier.ready("serving %d socket(s)" % len(servers))
stop.wait()
notifier.stopping()
for server in servers:
    server.shutdown()
for thread in threads:
    thread.join()
for server in servers:
    server.server_close()
"""


def test_a_service_under_the_fake_manager_serves_its_inherited_sockets(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "app.sock")
    with ServiceManager(short_tmp) as manager:
        tcp = manager.listen(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
        manager.listen(socket.AF_UNIX, socket.SOCK_STREAM, path)
        proc = manager.start([sys.executable, "-c", SERVICE], names=["web", "local"], stderr=subprocess.PIPE)
        assert manager.notify.wait_for("READY=1") == "READY=1\nSTATUS=serving 2 socket(s)"
        for address in (tcp.getsockname(), path):
            with connect(address) as client:
                client.sendall(b"through the manager\n")
                assert recv_line(client) == b"through the manager\n"
        assert manager.stop(proc) == 0
        manager.notify.wait_for("STOPPING=1")
        assert manager.notify.lines() == ["READY=1", "STATUS=serving 2 socket(s)", "STOPPING=1"]
        assert os.path.exists(path), "the manager's socket file outlives the service"
        with connect(path):  # and the manager's socket still listens, for the next start
            pass
