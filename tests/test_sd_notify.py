"""The sd_notify protocol against a fake service manager: a Unix datagram
socket in the test that collects what the server sends, as systemd's does."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from sockserve._sd_notify import MAX_MESSAGE, Notifier, Watchdog

from .fake_systemd import FakeManager

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="the protocol needs Unix sockets")


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, short_tmp: str) -> Iterator[FakeManager]:
    # The abstract name is unique per test: the namespace is shared by the whole machine.
    address = os.path.join(short_tmp, "notify") if request.param == "path" else f"@sockserve-test/{uuid.uuid4().hex}"
    fake = FakeManager(address)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def notifier(manager: FakeManager) -> Iterator[Notifier]:
    with Notifier.from_environment({"NOTIFY_SOCKET": manager.address}) as made:
        yield made


def test_ready_with_status_is_one_datagram(manager: FakeManager, notifier: Notifier) -> None:
    assert notifier.enabled
    assert notifier.ready("serving on 127.0.0.1:9000")
    assert manager.receive() == "READY=1\nSTATUS=serving on 127.0.0.1:9000"
    assert notifier.ready()
    assert manager.receive() == "READY=1"


def test_each_message(manager: FakeManager, notifier: Notifier) -> None:
    assert notifier.stopping()
    assert manager.receive() == "STOPPING=1"
    assert notifier.stopping("draining 3 connections")
    assert manager.receive() == "STOPPING=1\nSTATUS=draining 3 connections"
    assert notifier.status("2 workers")
    assert manager.receive() == "STATUS=2 workers"
    assert notifier.main_pid(4242)
    assert manager.receive() == "MAINPID=4242"
    assert notifier.watchdog_ping()
    assert manager.receive() == "WATCHDOG=1"
    assert notifier.send(EXTEND_TIMEOUT_USEC=5_000_000, READY=True)
    assert manager.receive() == "EXTEND_TIMEOUT_USEC=5000000\nREADY=1"


def test_reloading_carries_the_monotonic_clock(manager: FakeManager, notifier: Notifier) -> None:
    before = time.monotonic_ns() // 1000
    assert notifier.reloading("reloading the configuration")
    after = time.monotonic_ns() // 1000
    fields = manager.fields()
    assert list(fields) == ["RELOADING", "MONOTONIC_USEC", "STATUS"]
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert fields["STATUS"] == "reloading the configuration"


def test_no_notify_socket_is_a_no_op() -> None:
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "1000000"}):
        with Notifier.from_environment(environ) as notifier:
            assert not notifier.enabled
            assert notifier.ready("x") is False
            assert notifier.reloading() is False
            assert notifier.stopping() is False
            assert notifier.watchdog_ping() is False
            assert notifier.watchdog_interval() is None


def test_from_environment_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch, manager: FakeManager) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    with Notifier.from_environment() as notifier:
        assert notifier.ready()
    assert manager.receive() == "READY=1"


def test_watchdog_interval_is_half_of_watchdog_usec(manager: FakeManager) -> None:
    base = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environment(base).watchdog_interval() == 15.0
    mine = {**base, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environment(mine).watchdog_interval() == 15.0
    # A watchdog for another process (the environment was inherited): not ours to ping.
    other = {**base, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_environment(other).watchdog_interval() is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": manager.address}).watchdog_interval() is None


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"NOTIFY_SOCKET": "relative/notify"}, "NOTIFY_SOCKET"),
        ({"NOTIFY_SOCKET": "vsock:2:1234"}, "AF_VSOCK"),
        ({"NOTIFY_SOCKET": "/" + "x" * 200}, "longer than"),
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "soon"}, "WATCHDOG_USEC"),
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "0"}, "WATCHDOG_USEC"),
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "me"}, "WATCHDOG_PID"),
    ],
)
def test_unusable_environment_is_a_clear_error(environ: dict[str, str], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        Notifier.from_environment(environ)


UNUSABLE = [
    ({"NOTIFY_SOCKET": "relative/notify"}, "NOTIFY_SOCKET='relative/notify': not an absolute path"),
    ({"NOTIFY_SOCKET": "vsock:2:1234"}, "NOTIFY_SOCKET='vsock:2:1234': AF_VSOCK addresses are not supported"),
    ({"NOTIFY_SOCKET": "/" + "x" * 200}, "longer than a Unix socket address can be"),
]
UNUSABLE_WATCHDOG = [
    ({"WATCHDOG_USEC": "garbage"}, "WATCHDOG_USEC='garbage': not a positive number of microseconds"),
    ({"WATCHDOG_USEC": "0"}, "WATCHDOG_USEC='0': not a positive number of microseconds"),
    ({"WATCHDOG_USEC": "-5"}, "WATCHDOG_USEC='-5': not a positive number of microseconds"),
    ({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "me"}, "WATCHDOG_PID='me': not a process id"),
]


@pytest.mark.parametrize(("environ", "message"), UNUSABLE)
def test_not_strict_a_bad_notify_socket_is_one_warning_and_no_notifications(
    environ: dict[str, str], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sockserve")
    with Notifier.from_environment({**environ, "WATCHDOG_USEC": "20000"}, strict=False) as notifier:
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.watchdog_interval() is None
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert message in caplog.records[0].getMessage()
    assert caplog.records[0].getMessage().endswith(": not telling the service manager anything")


@pytest.mark.parametrize(("environ", "message"), UNUSABLE_WATCHDOG)
def test_not_strict_a_bad_watchdog_is_one_warning_and_notifications_without_it(
    environ: dict[str, str], message: str, manager: FakeManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sockserve")
    with Notifier.from_environment({**environ, "NOTIFY_SOCKET": manager.address}, strict=False) as notifier:
        assert notifier.watchdog_interval() is None
        assert notifier.ready()
        assert manager.receive() == "READY=1"
    assert [record.getMessage() for record in caplog.records] == [f"{message}: running without the systemd watchdog"]


def test_an_absurd_watchdog_interval_is_capped(manager: FakeManager) -> None:
    # 26 digits: the watchdog thread's Event.wait() overflowed ("timestamp too
    # large"). Pinging every MAX_SECONDS still satisfies any such watchdog.
    from sockserve._limits import MAX_SECONDS

    environ = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "9" * 26}
    with Notifier.from_environment(environ) as notifier:
        assert notifier.watchdog_interval() == MAX_SECONDS
        with Watchdog(notifier) as watchdog:
            assert watchdog.interval == MAX_SECONDS
            assert manager.receive() == "WATCHDOG=1"
        assert watchdog._thread is None


@pytest.mark.parametrize(
    "call",
    [
        lambda n: n.status("ok\nREADY=1"),
        lambda n: n.ready("two\nlines"),
        lambda n: n.send(STATUS="a\nb"),
        lambda n: n.send(ready=1),
        lambda n: n.send(**{"READY=1\nX": 1}),
        lambda n: n.send(),
        lambda n: n.status("x" * MAX_MESSAGE),
        lambda n: n.main_pid(0),
    ],
)
def test_what_would_corrupt_a_message_is_refused(
    manager: FakeManager, notifier: Notifier, call: Callable[[Notifier], object]
) -> None:
    with pytest.raises(ValueError, match=r"sd_notify|MAINPID"):
        call(notifier)
    # Nothing went out: the next datagram is the one sent after.
    assert notifier.status("after")
    assert manager.receive() == "STATUS=after"


def test_refused_without_a_manager_too() -> None:
    # The mistake shows in development, not only in production under systemd.
    with pytest.raises(ValueError, match="newline"):
        Notifier().status("a\nb")


def test_a_vanished_manager_is_one_log_line(
    manager: FakeManager, notifier: Notifier, caplog: pytest.LogCaptureFixture
) -> None:
    assert notifier.ready()  # the socket is open, as in a server that started under the manager
    assert manager.receive() == "READY=1"
    manager.close()
    if not manager.address.startswith("@"):
        os.unlink(manager.address)
    caplog.set_level(logging.DEBUG, logger="sockserve")
    assert notifier.watchdog_ping() is False
    assert notifier.watchdog_ping() is False
    assert notifier.stopping() is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "cannot notify the service manager at " + manager.address in warnings[0].getMessage()


def test_a_manager_that_comes_back_is_noticed(short_tmp: str, caplog: pytest.LogCaptureFixture) -> None:
    address = os.path.join(short_tmp, "notify")
    caplog.set_level(logging.INFO, logger="sockserve")
    with Notifier.from_environment({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.ready() is False  # nobody bound yet
        fake = FakeManager(address)  # the manager re-executed and bound its socket anew
        try:
            assert notifier.status("still here")
            assert fake.receive() == "STATUS=still here"
        finally:
            fake.close()
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert "reachable again" in caplog.records[1].getMessage()


def test_closed_notifier_sends_nothing(manager: FakeManager) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": manager.address})
    assert notifier.ready()
    assert manager.receive() == "READY=1"
    notifier.close()
    assert notifier.status("late") is False
    notifier.close()  # twice is fine


def test_watchdog_pings_at_the_interval(manager: FakeManager) -> None:
    environ = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "20000", "WATCHDOG_PID": str(os.getpid())}
    with Notifier.from_environment(environ) as notifier:
        watchdog = Watchdog(notifier)
        assert watchdog.interval == 0.01
        with watchdog:
            assert manager.receive() == "WATCHDOG=1"
            assert manager.receive() == "WATCHDOG=1"
            assert manager.receive() == "WATCHDOG=1"
        assert watchdog._thread is None  # joined: the leak check would see it otherwise


def test_watchdog_pings_only_while_healthy(manager: FakeManager) -> None:
    calls = 0
    asked = threading.Event()

    def healthy() -> bool:
        nonlocal calls
        calls += 1
        if calls >= 3:
            asked.set()
        return calls >= 3  # a stuck loop for the first two turns

    environ = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "20000"}
    with Notifier.from_environment(environ) as notifier, Watchdog(notifier, healthy):
        assert manager.receive() == "WATCHDOG=1"
        assert asked.is_set()  # the first ping went out only once the server was healthy


def test_watchdog_without_a_watchdog_starts_nothing(manager: FakeManager) -> None:
    other = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "20000", "WATCHDOG_PID": str(os.getpid() + 1)}
    for environ in ({"NOTIFY_SOCKET": manager.address}, other, {"WATCHDOG_USEC": "20000"}):
        with Notifier.from_environment(environ) as notifier:
            watchdog = Watchdog(notifier)
            assert watchdog.start() is False
            assert watchdog._thread is None
            watchdog.stop()


def test_watchdog_stops_at_once(manager: FakeManager) -> None:
    # An interval of an hour: stop() must not wait for the next ping.
    environ = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": str(7_200_000_000)}
    with Notifier.from_environment(environ) as notifier:
        watchdog = Watchdog(notifier)
        assert watchdog.start()
        assert manager.receive() == "WATCHDOG=1"
        done = threading.Event()

        def stop() -> None:
            watchdog.stop()
            done.set()

        stopper = threading.Thread(target=stop)
        stopper.start()
        assert done.wait(10)
        stopper.join()
