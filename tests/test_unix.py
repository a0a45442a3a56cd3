"""Unix servers own their socket file: refuse a live one, replace a stale one,
never touch a non-socket, remove their own on close."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import uuid

import pytest

import sockserve
from sockserve.testing import running_server

from .helpers import round_trip


class LineEcho(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class DatagramEcho(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


@pytest.mark.parametrize("server_class", [sockserve.UnixStreamServer, sockserve.UnixDatagramServer])
def test_server_close_removes_the_socket_file(unix_path: str, server_class: type[sockserve.TCPServer]) -> None:
    server = server_class(unix_path, LineEcho)
    assert os.path.exists(unix_path)
    server.server_close()
    assert not os.path.exists(unix_path)


@pytest.mark.parametrize("server_class", [sockserve.UnixStreamServer, sockserve.UnixDatagramServer])
def test_a_live_server_is_not_taken_over(unix_path: str, server_class: type[sockserve.TCPServer]) -> None:
    with server_class(unix_path, LineEcho) as live:
        with pytest.raises(sockserve.SocketPathInUse) as caught:
            server_class(unix_path, LineEcho)
        assert isinstance(caught.value, OSError)
        assert caught.value.errno == errno.EADDRINUSE
        assert unix_path in str(caught.value)
        assert os.path.exists(unix_path), "the refused server must not remove the live one's file"
        if server_class is sockserve.UnixStreamServer:
            with running_server(live):
                assert round_trip(unix_path) == b"hello\n"


@pytest.mark.parametrize(
    ("server_class", "kind"),
    [(sockserve.UnixStreamServer, socket.SOCK_STREAM), (sockserve.UnixDatagramServer, socket.SOCK_DGRAM)],
)
def test_a_stale_socket_file_is_replaced(unix_path: str, server_class: type[sockserve.TCPServer], kind: int) -> None:
    dead = socket.socket(socket.AF_UNIX, kind)
    dead.bind(unix_path)
    if kind == socket.SOCK_STREAM:
        dead.listen()
    dead.close()  # a crashed server: the file stays, nobody answers
    assert os.path.exists(unix_path)
    with server_class(unix_path, LineEcho) as server:
        assert server.server_address == unix_path
        if kind == socket.SOCK_STREAM:
            with running_server(server):
                assert round_trip(unix_path) == b"hello\n"


def test_a_path_that_is_not_a_socket_is_left_alone(unix_path: str) -> None:
    with open(unix_path, "w") as f:
        f.write("precious")
    with pytest.raises(sockserve.SocketPathNotASocket) as caught:
        sockserve.UnixStreamServer(unix_path, LineEcho)
    assert isinstance(caught.value, OSError)
    with open(unix_path) as f:
        assert f.read() == "precious"


def test_a_symlink_to_a_socket_is_not_followed(unix_path: str, short_tmp: str) -> None:
    with sockserve.UnixStreamServer(os.path.join(short_tmp, "real.sock"), LineEcho):
        os.symlink(os.path.join(short_tmp, "real.sock"), unix_path)
        with pytest.raises(sockserve.SocketPathNotASocket):
            sockserve.UnixStreamServer(unix_path, LineEcho)
        assert os.path.islink(unix_path)


def test_a_replaced_file_is_not_removed_by_the_old_server(unix_path: str) -> None:
    old = sockserve.UnixStreamServer(unix_path, LineEcho)
    try:
        os.unlink(unix_path)  # someone removed it and a new server took the path
        with sockserve.UnixStreamServer(unix_path, LineEcho) as new:
            old.server_close()
            assert os.path.exists(unix_path), "the old server removed the new server's file"
            with running_server(new):
                assert round_trip(unix_path) == b"hello\n"
    finally:
        old.server_close()
    assert not os.path.exists(unix_path)


def test_a_forked_child_closing_the_server_keeps_the_file(unix_path: str) -> None:
    with sockserve.UnixStreamServer(unix_path, LineEcho) as server:
        pid = os.fork()
        if pid == 0:  # the child closes its copy, as a prefork worker would
            status = 1
            try:
                server.server_close()
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists(unix_path)


def test_abstract_namespace_addresses_have_no_file() -> None:
    name = f"\0sockserve-test-{uuid.uuid4().hex}"
    with running_server(sockserve.ThreadingUnixStreamServer(name, LineEcho)) as server:
        assert round_trip(server.server_address) == b"hello\n"


MIXTURE = """
import os, sys, threading, http.client, socket
import sockserve
sys.modules["socketserver"] = sockserve
import http.server

calls = []

class RecordingHTTPServer(http.server.HTTPServer):
    def server_bind(self):
        calls.append("HTTPServer.server_bind")  # would run getfqdn() on the socket path
        super().server_bind()

class UnixHTTPServer(sockserve.UnixStreamServer, RecordingHTTPServer):
    # As asyncio's own test helpers write it: the Unix server's bind, by name.
    def server_bind(self):
        sockserve.UnixStreamServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = 80

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello over a unix socket")
    def log_message(self, *args):
        pass

os.chdir(sys.argv[1])
with UnixHTTPServer("relative.sock", Hello) as server:
    threading.Thread(target=server.handle_request, daemon=True).start()
    conn = http.client.HTTPConnection("localhost")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect("relative.sock")
    conn.request("GET", "/")
    print(conn.getresponse().read().decode(), calls)
    conn.close()
print(os.path.exists("relative.sock"))
"""


def test_a_mixture_with_a_stdlib_server_binds_as_the_stdlib_would(short_tmp: str) -> None:
    # UnixStreamServer.server_bind(self) binds the socket, as the stdlib's
    # (TCPServer's) does, whatever else the user's class mixes in: it must not
    # hand over to HTTPServer.server_bind, which resolves the path as a host name.
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", MIXTURE, short_tmp], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hello over a unix socket []", "False"]


DROPS_THEN_CLOSES = """
import logging, os, pwd, sys
import sockserve
from sockserve import aio

class Handler(aio.AsyncStreamRequestHandler):
    async def handle(self): pass

class DatagramHandler(aio.AsyncDatagramRequestHandler):
    async def handle(self): pass

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
classes = {
    "UnixStreamServer": (sockserve.UnixStreamServer, sockserve.BaseRequestHandler),
    "UnixDatagramServer": (sockserve.UnixDatagramServer, sockserve.BaseRequestHandler),
    "AsyncUnixStreamServer": (aio.AsyncUnixStreamServer, Handler),
    "AsyncUnixDatagramServer": (aio.AsyncUnixDatagramServer, DatagramHandler),
}
server_class, handler = classes[sys.argv[2]]
server = server_class(sys.argv[1], handler)
nobody = pwd.getpwnam("nobody")
os.setgroups([])
os.setgid(nobody.pw_gid)
os.setuid(nobody.pw_uid)  # as --user does, after binding: the directory is root's
server.server_close()
print("closed", flush=True)
"""


@pytest.mark.parametrize(
    "server_class", ["UnixStreamServer", "UnixDatagramServer", "AsyncUnixStreamServer", "AsyncUnixDatagramServer"]
)
def test_a_socket_file_it_may_not_remove_is_one_warning(short_tmp: str, server_class: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    directory = os.path.join(short_tmp, "d")
    os.mkdir(directory, 0o755)  # root's: the user nobody may not remove a file in it
    path = os.path.join(directory, "s.sock")
    done = subprocess.run(
        [sys.executable, "-c", DROPS_THEN_CLOSES, path, server_class],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "closed\n"
    assert done.stderr.splitlines() == [f"WARNING could not remove the socket file {path!r}: Permission denied"]
    assert os.path.exists(path)
