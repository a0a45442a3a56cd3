"""The log lines' helpers in a forked child, and how addresses are written."""

from __future__ import annotations

import os
import signal
import time

import pytest

from sockserve import _log
from sockserve._address import format_address


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_the_log_budget_is_held_can_log() -> None:
    """The budget's lock held (by another thread, here by this one) at the
    fork: the child's first rate-limited line must not wait for it for ever."""
    with _log.budget._lock:
        pid = os.fork()
        if not pid:  # the child: one budget turn, then out, whatever happens
            status = 1
            try:
                status = 0 if _log.budget.take("forked") == 0 else 2
            finally:
                os._exit(status)
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the child's budget lock was still held: it never logged")
        time.sleep(0.01)  # polling a child that may be deadlocked: nothing to wait on
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize(
    ("address", "written"),
    [
        (b"\0sockserve-abstract", "@sockserve-abstract"),
        ("\0sockserve-abstract", "@sockserve-abstract"),
        (b"/run/app.sock", "/run/app.sock"),
        (b"", "<unnamed>"),
        ("", "<unnamed>"),
        (("127.0.0.1", 80), "127.0.0.1:80"),
        (("::1", 80, 0, 0), "[::1]:80"),
    ],
)
def test_addresses_are_written_as_the_bind_syntax_writes_them(address: object, written: str) -> None:
    assert format_address(address) == written
