"""Fixtures: address families, short Unix socket paths, and a leak check that
runs around every test (threads, descriptors, child processes)."""

from __future__ import annotations

import gc
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6_loopback()
requires_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this machine has no IPv6 loopback")


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A private directory with a short path: AF_UNIX paths are limited to ~107 bytes."""
    path = tempfile.mkdtemp(prefix="ss-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def unix_path(short_tmp: str) -> str:
    return os.path.join(short_tmp, "server.sock")


@pytest.fixture(params=["ipv4", "ipv6", "unix"])
def family(request: pytest.FixtureRequest) -> str:
    if request.param == "ipv6" and not HAS_IPV6:
        pytest.skip("this machine has no IPv6 loopback")
    return str(request.param)


@pytest.fixture
def address_for(unix_path: str):  # type: ignore[no-untyped-def]
    """Maps a family name to a bind address (port 0: the kernel picks)."""

    def make(name: str) -> object:
        return {"ipv4": ("127.0.0.1", 0), "ipv6": ("::1", 0), "unix": unix_path}[name]

    return make


@pytest.fixture(scope="session", autouse=True)
def _uvloop_process_state() -> None:
    """libuv opens a pipe once per process (its signal lock), on the first
    uvloop loop, and keeps it: open it before the leak check takes its
    baseline, so it is not mistaken for a leak of the first test."""
    if _uvloop_available():
        import uvloop

        loop = uvloop.new_event_loop()
        loop.close()


def _uvloop_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread, a descriptor or a child process behind."""
    gc.collect()
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    yield
    gc.collect()
    leaked_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    for thread in leaked_threads:  # give a thread that is returning right now its last moment
        thread.join(5)
    leaked_threads = [t for t in leaked_threads if t.is_alive()]
    assert not leaked_threads, f"threads left running: {leaked_threads}"
    leaked_fds = {fd for fd in _open_fds() - fds_before if os.path.exists(f"/proc/self/fd/{fd}")}
    details = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked_fds if os.path.lexists(f"/proc/self/fd/{fd}")}
    assert not details, f"descriptors left open: {details}"
    children = _children()
    assert not children, f"child processes left behind (running or zombie): {children}"


def _children() -> set[int]:
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:
            pass  # the thread ended while we looked
    return pids
