"""Prefork under a service manager: sockets passed as systemd passes them
(tests/fake_systemd.py), served by the workers without being bound or
listened on again, and the supervisor's READY/RELOADING/STOPPING callbacks
under real signals."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve.prefork import Prefork

from .fake_systemd import ServiceManager
from .helpers import connect, recv_line
from .test_prefork import REPORTING, Supervisor, ask

pytestmark = [pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()"), pytest.mark.timeout(120)]

# A supervisor as `sockserve serve --workers N` runs one under systemd: the
# inherited sockets by name, sd_notify from the callbacks. Its events go to
# stdout as JSON lines, as test_prefork's supervisor's do.
SYSTEMD_SUPERVISOR = (
    textwrap.dedent(
        """
    import json, logging, os, sys, time
    import sockserve
    from sockserve._sd_notify import Notifier
    from sockserve._socket_activation import inherited_sockets
    from sockserve.prefork import Prefork, RestartPolicy

    config = json.loads(sys.argv[1])
    """
    )
    + REPORTING
    + textwrap.dedent(
        """
    class Handler(sockserve.StreamRequestHandler):
        # "inode": the inode of the listening socket this worker serves.
        def handle(self):
            for line in self.rfile:
                if line == b"inode\\n":
                    line = b"%d\\n" % os.fstat(self.server.socket.fileno()).st_ino
                self.wfile.write(b"%d " % os.getpid() + line)

    notifier = Notifier.from_environment()

    def callback(name, send):
        def call():
            say(callback=name, t=time.monotonic())
            send()
        return call

    classes = {"web": sockserve.ThreadPoolTCPServer, "local": sockserve.ThreadPoolUnixStreamServer}
    supervisor = Prefork(
        listeners=[(classes[s.name], s.socket, Handler) for s in inherited_sockets()],
        workers=config.get("workers", 2),
        grace=10,
        restart_policy=RestartPolicy(initial=0.1, maximum=2.0, stable_after=1.0),
        on_ready=callback("ready", notifier.ready),
        on_reloading=callback("reloading", notifier.reloading),
        on_stopping=callback("stopping", notifier.stopping),
    )
    supervisor.bind()
    say(address=supervisor.server_address, addresses=supervisor.server_addresses, supervisor=os.getpid())
    code = supervisor.run()
    notifier.close()
    sys.exit(code)
    """
    )
)


def tcp_backlog(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    return int.from_bytes(info[28:32], "little")


@pytest.fixture
def manager(short_tmp: str) -> Iterator[ServiceManager]:
    with ServiceManager(short_tmp) as made:
        yield made


def start(tmp_path: Any, manager: ServiceManager, names: list[str], **config: Any) -> Supervisor:
    def launch(argv: list[str], **popen: Any) -> Any:
        return manager.start(argv, names=names, **popen)

    return Supervisor(tmp_path, script=SYSTEMD_SUPERVISOR, launch=launch, **config)


def addresses_of(sup: Supervisor) -> list[Any]:
    """Every listener's address, as the supervisor said them once bound."""
    said = next(event for event in sup.events if "addresses" in event)["addresses"]
    return [tuple(address) if isinstance(address, list) else address for address in said]


def callbacks(sup: Supervisor) -> list[str]:
    return [event["callback"] for event in sup.events if "callback" in event]


def test_workers_serve_the_inherited_sockets_as_they_are(
    tmp_path: Any, manager: ServiceManager, short_tmp: str
) -> None:
    path = os.path.join(short_tmp, "app.sock")
    tcp = manager.listen(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0), backlog=17)
    unix = manager.listen(socket.AF_UNIX, socket.SOCK_STREAM, path)
    sup = start(tmp_path, manager, ["web", "local"], workers=2)
    try:
        addresses = addresses_of(sup)
        assert addresses == [tcp.getsockname(), path]
        assert manager.notify.wait_for("READY=1") == "READY=1"
        sup.wait_workers(2)
        workers = {pid for pid, _ in sup.spawned}
        for address, listener in ((tcp.getsockname(), tcp), (path, unix)):
            pid, _ = ask(address)
            assert pid in workers, "served by a worker, not by the supervisor"
            with connect(address) as client:
                client.sendall(b"inode\n")
                inode = int(recv_line(client).split()[1])
            assert inode == os.fstat(listener.fileno()).st_ino, "the very socket the manager made"
        assert tcp_backlog(tcp) == 17, "never listened on again: the backlog is the manager's"
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0
    manager.notify.wait_for("STOPPING=1")
    assert os.path.exists(path), "an inherited Unix socket's file is the manager's: never unlinked"
    for address in (tcp.getsockname(), path):
        with connect(address):  # the manager's sockets still listen, for the next start
            pass


def test_ready_reloading_and_stopping_under_real_signals(tmp_path: Any, manager: ServiceManager) -> None:
    manager.listen(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
    sup = start(tmp_path, manager, ["web"], workers=2)
    try:
        manager.notify.wait_for("READY=1")
        sup.next("callback", "ready")
        first = [pid for pid, _ in sup.spawned]
        assert callbacks(sup) == ["ready"]
        # Ready only once both workers of the generation said they serve.
        ready_at = sup.events.index(next(e for e in sup.events if e.get("callback") == "ready"))
        serving = [
            i for i, e in enumerate(sup.events) if any(f"worker {pid}: serving" in e.get("log", "") for pid in first)
        ]
        assert len(serving) == 2, sup.logs
        assert max(serving) < ready_at, sup.logs

        sup.signal(signal.SIGHUP)
        reloading = manager.notify.wait_for("RELOADING=1")
        assert reloading.split("\n")[1].startswith("MONOTONIC_USEC=")
        manager.notify.wait_for("READY=1")  # the new generation serves
        sup.next("callback", "ready")
        new = [pid for pid, _ in sup.spawned[2:]]
        assert len(new) == 2
        assert callbacks(sup) == ["ready", "reloading", "ready"]
        events = sup.events
        index = {e.get("callback"): i for i, e in enumerate(events) if "callback" in e}  # the last of each
        spawned_new = [i for i, e in enumerate(events) if e.get("log", "").startswith("spawned worker")][2:]
        serving_new = [
            i for i, e in enumerate(events) if any(f"worker {pid}: serving" in e.get("log", "") for pid in new)
        ]
        assert index["reloading"] < min(spawned_new), "RELOADING=1 before the new generation starts"
        assert max(serving_new) < index["ready"], "READY=1 once every new worker serves"
        sup.saw(f"worker {first[0]} exited")  # the old generation drains away
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0
    manager.notify.wait_for("STOPPING=1")
    sup.read_to_end()
    assert callbacks(sup) == ["ready", "reloading", "ready", "stopping"]
    stopping_at = next(i for i, e in enumerate(sup.events) if e.get("callback") == "stopping")
    exits = [i for i, e in enumerate(sup.events) if "exited" in e.get("log", "") and e.get("pid") == sup.pid]
    assert stopping_at < max(exits), "STOPPING=1 when the stop begins, before the workers are gone"
    assert [line for line in manager.notify.lines() if not line.startswith("MONOTONIC_USEC=")] == [
        "READY=1",
        "RELOADING=1",
        "READY=1",
        "STOPPING=1",
    ]


# --- the arguments ---------------------------------------------------------------------


def test_inherited_sockets_with_reuse_port_are_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(ValueError, match="reuse_port=True cannot serve an inherited socket"):
            Prefork(sockserve.TCPServer, None, sockserve.StreamRequestHandler, sockets=[sock], reuse_port=True)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((), {}, TypeError, "needs server_class and handler_class"),
        ((sockserve.TCPServer, None, sockserve.StreamRequestHandler), {}, TypeError, "needs server_address"),
        ((sockserve.TCPServer, None, sockserve.StreamRequestHandler), {"sockets": []}, ValueError, "nothing to serve"),
        (
            (sockserve.TCPServer, ("127.0.0.1", 0), sockserve.StreamRequestHandler),
            {"listeners": []},
            TypeError,
            "either server_class",
        ),
        ((), {"listeners": [(sockserve.TCPServer, ("127.0.0.1", 0))]}, TypeError, "a listener is"),
    ],
)
def test_bad_arguments_are_refused_at_once(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Prefork(*args, **kwargs)


def test_several_listeners_of_their_own_are_bound_and_served(tmp_path: Any, short_tmp: str) -> None:
    """listeners= without a service manager: each worker serves a TCP and a Unix listener."""
    path = os.path.join(short_tmp, "own.sock")
    with ServiceManager(short_tmp) as manager:
        # The manager binds nothing here: the supervisor binds both itself.
        script = SYSTEMD_SUPERVISOR.replace(
            "listeners=[(classes[s.name], s.socket, Handler) for s in inherited_sockets()],",
            f"listeners=[(classes['web'], ('127.0.0.1', 0), Handler), (classes['local'], {path!r}, Handler)],",
        )
        sup = Supervisor(tmp_path, script=script, launch=manager.start, workers=1)
        try:
            manager.notify.wait_for("READY=1")
            tcp_address, unix_address = addresses_of(sup)
            assert ask(tcp_address)[0] == ask(unix_address)[0], "one worker serves both"
        finally:
            sup.signal(signal.SIGTERM)
            assert sup.finish() == 0
    assert not os.path.exists(path), "a Unix socket file the supervisor bound is its own to remove"
