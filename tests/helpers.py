"""Client-side helpers shared by the tests: every read has a timeout."""

from __future__ import annotations

import socket
from typing import Any

TIMEOUT = 10.0


def connect(address: Any, timeout: float = TIMEOUT, rcvbuf: int | None = None) -> socket.socket:
    """A connected stream socket to ``address`` (a (host, port) tuple or a Unix
    path); ``rcvbuf`` fixes its receive buffer before it connects (a client
    whose window stays small, whatever the kernel's autotuning would do)."""
    if isinstance(address, (str, bytes)):
        target: Any = address
        family = socket.AF_UNIX
    else:
        host, port = address[0], address[1]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        family, _, _, _, target = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def recv_line(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Read up to and including b'\\n' (or EOF), failing the test on timeout."""
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def recv_all(sock: socket.socket) -> bytes:
    """Read until the peer closes."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def round_trip(address: Any, payload: bytes = b"hello\n") -> bytes:
    with connect(address) as sock:
        sock.sendall(payload)
        return recv_line(sock)


def wait_until(predicate: Any, timeout: float = TIMEOUT, interval: float = 0.01) -> bool:
    """Check ``predicate`` until it holds or ``timeout`` passes, for state that
    offers no event to wait on (a thread pool shrinking). Bounded in time."""
    import threading
    import time

    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(interval)
    return True


class JsonLinesChild:
    """A Python script run as a child process that reports on stdout, one JSON
    object per line; ``next(key)`` reads up to the next message with ``key``."""

    def __init__(self, script: Any, *args: str) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def next(self, key: str) -> Any:
        """The next message that has ``key``, skipping others (bounded by the test timeout)."""
        import json

        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            message = json.loads(line)
            if key in message:
                return message[key]
        raise AssertionError(f"the server exited before saying {key!r}: {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def next_log(self, startswith: str) -> str:
        while not (message := self.next("log")).startswith(startswith):
            pass
        return str(message)

    def close(self) -> int:
        """Its exit status (waiting up to 10 s, then killing it); its pipes closed."""
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
