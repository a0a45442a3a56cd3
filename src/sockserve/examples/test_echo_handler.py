"""Testing your own handler with sockserve's pytest plugin, which pytest
loads by itself once sockserve is installed.

Here the handlers are the echo examples' (``echo.py``, ``framed_echo.py``);
yours are imported the same way. Run it with ``pytest examples/test_echo_handler.py``.
Every server is stopped at the end of its test, and the test fails if it left
a thread, a descriptor, a child process or a socket file behind.
"""

from __future__ import annotations

import socket

import pytest

from sockserve.examples.echo import EchoRequestHandler
from sockserve.examples.framed_echo import FramedEchoRequestHandler
from sockserve.pytest_plugin import SYNC_MODELS, Serve


@pytest.fixture
def sockserve_handler() -> type[EchoRequestHandler]:
    """The handler that sockserve_server and sockserve_client serve."""
    return EchoRequestHandler


# Eight runs: each synchronous model (one process, threads, the pool, a
# child process per connection), over TCP and over a Unix socket.
@pytest.mark.sockserve_models(*SYNC_MODELS)
@pytest.mark.sockserve_families("tcp", "unix")
def test_the_echo_sends_back_what_it_got(sockserve_client: socket.socket) -> None:
    sockserve_client.sendall(b"Hello, world")
    assert sockserve_client.recv(1024) == b"Hello, world"


def test_each_client_gets_its_own_echo(sockserve_serve: Serve) -> None:
    server = sockserve_serve(EchoRequestHandler, model="pool", request_queue_size=64)
    clients = [server.connect() for _ in range(5)]  # closed by the fixture
    for number, client in enumerate(clients):
        client.sendall(b"client %d" % number)
    assert [client.recv(1024) for client in clients] == [b"client %d" % n for n in range(5)]


def test_the_framed_echo_answers_each_line_on_a_worker(sockserve_serve: Serve) -> None:
    server = sockserve_serve(FramedEchoRequestHandler, model="framed", family="unix")
    with server.connect().makefile("rwb") as stream:
        for line in (b"one\n", b"two\n"):
            stream.write(line)
            stream.flush()
            worker, echoed = stream.readline().split(b": ", 1)
            assert echoed == line
            assert b"worker" in worker  # a pool thread, "ThreadPoolUnixStreamServer-worker-1"
