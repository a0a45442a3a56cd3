"""Fixtures for the async servers: the event loop to run on, and a way to
wait for a log line (the servers log from their own thread)."""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Iterator

import pytest

from sockserve import aio

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs on asyncio's loop and on uvloop."""
    if request.param == "uvloop" and not aio.uvloop_available():
        pytest.skip("uvloop is not installed (pip install 'sockserve[uvloop]')")
    return str(request.param)


def closed_by_server(sock: socket.socket) -> bytes:
    """Read until the server closes; what it sent. A reset counts as closed:
    a server that closes with unread input from us resets the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


class LogWatcher(logging.Handler):
    """Collects the ``sockserve`` logger's records; ``wait_for`` blocks until one matches."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def messages(self) -> list[str]:
        with self._changed:
            return [r.getMessage() for r in self.records]

    def wait_for(self, pattern: str, timeout: float = 10.0) -> logging.LogRecord:
        regex = re.compile(pattern)
        with self._changed:
            found: list[logging.LogRecord] = []

            def match() -> bool:
                found[:] = [r for r in self.records if regex.search(r.getMessage())]
                return bool(found)

            assert self._changed.wait_for(match, timeout), f"no log line matching {pattern!r}: {self.messages()}"
            return found[0]


@pytest.fixture
def logs() -> Iterator[LogWatcher]:
    watcher = LogWatcher()
    logger = logging.getLogger("sockserve")
    old_level = logger.level
    logger.addHandler(watcher)
    logger.setLevel(logging.DEBUG)
    try:
        yield watcher
    finally:
        logger.removeHandler(watcher)
        logger.setLevel(old_level)
