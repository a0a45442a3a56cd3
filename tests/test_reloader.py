"""``--reload``: a tiny server in a temporary directory, run through the
reloader in a subprocess, sockets passed the systemd way; edits restart it
without refusing a connection, and stopping leaves no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockserve._reloader import SourceWatcher, run_with_reload

WAIT = 20.0  # seconds any one expected event may take on a loaded machine

# The reloader's parent: binds, prints the port, and reloads the server script given.
DRIVER = r"""
import json, logging, socket, sys
from sockserve._reloader import run_with_reload
config = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
listener = socket.create_server(("127.0.0.1", 0), backlog=16)
print(listener.getsockname()[1], flush=True)
sys.exit(run_with_reload(config["argv"], config["watch"], sockets=[listener], names=["web"],
                         interval=0.05, stop_timeout=config["stop_timeout"]))
"""

# The server: held back until the gate file exists (so a test can hold a restart
# open), then answers each connection with its handler's VERSION, its pid, and the
# name and descriptor of the socket it inherited.
SERVER = r"""
import os, signal, sys, time
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
while not os.path.exists(os.environ["TEST_GATE"]):
    time.sleep(0.01)
import handler
from sockserve._socket_activation import inherited_sockets
[listener] = inherited_sockets()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with listener.socket as sock:
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(f"{handler.VERSION} {os.getpid()} {listener.name} {listener.fd}\n".encode())
"""

# A server that ignores SIGTERM and has a child of its own that does too.
STUBBORN = r"""
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = os.fork()
if child == 0:
    signal.pause()
    os._exit(0)
print(f"grandchild {child}", file=sys.stderr, flush=True)
signal.pause()
"""

STARTED = r"server started \(pid (\d+)\)"


class Reloader:
    """The driver in a subprocess; its stderr (the reloader's log and the
    servers' own output) read on a thread, one line at a time."""

    def __init__(self, tmp: Path, argv: list[str], watch: list[Path], *, stop_timeout: float = 10.0) -> None:
        config = {"argv": argv, "watch": [str(w) for w in watch], "stop_timeout": stop_timeout}
        env = {**os.environ, "TEST_GATE": str(tmp / "gate")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.servers: list[int] = []
        assert self.proc.stderr is not None
        self.reader = threading.Thread(target=self._read, args=(self.proc.stderr,))
        self.reader.start()
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str) -> re.Match[str]:
        """The next line that matches (lines before it are kept in ``seen``)."""
        deadline = time.monotonic() + WAIT
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                if pattern == STARTED:
                    self.servers.append(int(match[1]))
                return match
        raise AssertionError(f"no line matching {pattern!r}; seen: {self.seen}")

    def lines_so_far(self) -> list[str]:
        found = []
        with contextlib.suppress(queue.Empty):
            while (line := self.lines.get_nowait()) is not None:
                found.append(line)
        self.seen.extend(found)
        return found

    def ask(self) -> list[str]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as client:
            return client.makefile().readline().split()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for pid in self.servers:  # whatever a failed test left: the servers' groups
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.reader.join(WAIT)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "server.py").write_text(SERVER)
    (directory / "handler.py").write_text('VERSION = "v1"\n')
    return directory


@contextlib.contextmanager
def reloader(tmp: Path, argv: list[str], watch: list[Path], **kwargs: float) -> Iterator[Reloader]:
    running = Reloader(tmp, argv, watch, **kwargs)
    try:
        yield running
    finally:
        running.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_exit(pidfd: int) -> bool:
    """Whether the process behind the pidfd exits within WAIT seconds."""
    return bool(select.select([pidfd], [], [], WAIT)[0])


@pytest.mark.slow
def test_an_edit_restarts_the_server_and_no_connection_is_refused(tmp_path: Path, app: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    with reloader(tmp_path, [sys.executable, str(app / "server.py")], [app]) as running:
        first = int(running.expect(STARTED)[1])
        assert running.ask() == ["v1", str(first), "web", "3"]

        gate.unlink()  # the next server waits at its start: the restart stays open until we say
        (app / "handler.py").write_text('VERSION = "v2-edited"\n')
        running.expect(r"/app/handler\.py changed: restarting the server")
        running.expect(rf"server \(pid {first}\) exited with status 0")
        second = int(running.expect(STARTED)[1])
        assert second != first
        assert _gone(first)
        # No server accepts now; the parent's listening socket queues the connection.
        with socket.create_connection(("127.0.0.1", running.port), timeout=WAIT) as client:
            gate.touch()
            assert client.makefile().readline().split() == ["v2-edited", str(second), "web", "3"]

        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(WAIT) == 0
        running.expect(rf"server \(pid {second}\) exited with status 0")
        assert _gone(second)
        with pytest.raises(ProcessLookupError):
            os.killpg(second, 0)  # nothing left of its process group either


@pytest.mark.slow
def test_a_server_that_fails_at_start_waits_for_the_next_change(tmp_path: Path, app: Path) -> None:
    (tmp_path / "gate").touch()
    (app / "handler.py").write_text("VERSION = (\n")  # a syntax error
    with reloader(tmp_path, [sys.executable, str(app / "server.py")], [app]) as running:
        first = int(running.expect(STARTED)[1])
        running.expect(rf"WARNING server \(pid {first}\) exited with status 1; waiting for a change to restart it")
        failed_at = len(running.seen)

        (app / "handler.py").write_text('VERSION = "fixed"\n')
        running.expect(r"handler\.py changed: restarting the server")
        # A restart loop would have started it again before the change was seen.
        assert not [line for line in running.seen[failed_at:] if re.search(STARTED, line)]
        second = int(running.expect(STARTED)[1])
        assert running.ask() == ["fixed", str(second), "web", "3"]

        running.proc.send_signal(signal.SIGINT)
        assert running.proc.wait(WAIT) == 0


@pytest.mark.slow
def test_a_server_that_ignores_sigterm_is_killed_with_its_children(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    with reloader(tmp_path, [sys.executable, str(script)], [tmp_path], stop_timeout=0.5) as running:
        server = int(running.expect(STARTED)[1])
        grandchild = int(running.expect(r"grandchild (\d+)")[1])
        pidfd = os.pidfd_open(grandchild)
        try:
            running.proc.send_signal(signal.SIGTERM)
            running.expect(rf"server \(pid {server}\): not stopped after 0.5 s: killing its process group")
            running.expect(rf"server \(pid {server}\) was killed by SIGKILL")
            assert running.proc.wait(WAIT) == 128 + signal.SIGKILL
            assert _wait_exit(pidfd), "the server's own child outlived it"
        finally:
            os.close(pidfd)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_whose_reloader_is_killed_is_stopped(tmp_path: Path, app: Path) -> None:
    (tmp_path / "gate").touch()
    with reloader(tmp_path, [sys.executable, str(app / "server.py")], [app]) as running:
        server = int(running.expect(STARTED)[1])
        pidfd = os.pidfd_open(server)
        try:
            running.proc.kill()  # no chance to stop the server itself
            assert _wait_exit(pidfd), "the server outlived its reloader"
        finally:
            os.close(pidfd)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_a_command_that_cannot_run_is_one_line(tmp_path: Path, stop: signal.Signals) -> None:
    with reloader(tmp_path, [str(tmp_path / "no-such-command")], [tmp_path]) as running:
        running.expect(
            r"ERROR cannot run .*no-such-command: \[Errno 2\] No such file or directory.*; waiting for a change"
        )
        running.proc.send_signal(stop)
        assert running.proc.wait(WAIT) == 127
        assert not [line for line in running.lines_so_far() if "Traceback" in line]


def test_arguments_are_checked() -> None:
    listener = socket.socket()
    try:
        with pytest.raises(ValueError, match="1 name"):
            run_with_reload(["x"], [], sockets=[listener, listener], names=["a"])
        with pytest.raises(ValueError, match="no command"):
            run_with_reload([], [])
        with pytest.raises(ValueError, match="socket name 'a:b'"):
            run_with_reload(["x"], [], sockets=[listener], names=["a:b"])
    finally:
        listener.close()


# --- the watcher -----------------------------------------------------------------


def test_the_watcher_sees_added_changed_and_removed_sources(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
    watcher = SourceWatcher([tmp_path])
    assert watcher.changes() == []
    (tmp_path / "pkg" / "a.py").write_text("a = 22\n")
    assert watcher.changes() == [str(tmp_path / "pkg" / "a.py")]
    assert watcher.changes() == []  # told once
    (tmp_path / "b.py").write_text("")
    (tmp_path / "pkg" / "a.py").unlink()
    assert watcher.changes() == [str(tmp_path / "b.py"), str(tmp_path / "pkg" / "a.py")]


def test_the_watcher_skips_caches_hidden_directories_and_other_files(tmp_path: Path) -> None:
    for skipped in ("__pycache__", ".venv", ".git", "pkg/__pycache__"):
        (tmp_path / skipped).mkdir(parents=True)
    watcher = SourceWatcher([tmp_path])
    (tmp_path / "__pycache__" / "a.py").write_text("")
    (tmp_path / ".venv" / "site.py").write_text("")
    (tmp_path / ".git" / "hook.py").write_text("")
    (tmp_path / "pkg" / "__pycache__" / "b.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / ".hidden.py").write_text("")
    assert watcher.changes() == []
    (tmp_path / "pkg" / "c.py").write_text("")
    assert watcher.changes() == [str(tmp_path / "pkg" / "c.py")]


def test_the_watcher_watches_a_file_named_on_its_own(tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text("a = 1\n")
    watcher = SourceWatcher([config, tmp_path / "missing"])
    config.write_text("a = 22\n")
    assert watcher.changes() == [str(config)]


# Counts its SIGTERMs, as a sockserve server does: the first starts a drain, the second ends it.
TWO_SIGNALS = r"""
import signal, sys
received = []
def on_term(signum, frame):
    received.append(signum)
    print(f"SIGTERM number {len(received)}", file=sys.stderr, flush=True)
    if len(received) == 2:
        sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
print("serving", file=sys.stderr, flush=True)
while True:
    signal.pause()
"""


@pytest.mark.slow
def test_a_second_signal_is_passed_on_once(tmp_path: Path) -> None:
    script = tmp_path / "drains.py"
    script.write_text(TWO_SIGNALS)
    with reloader(tmp_path, [sys.executable, str(script)], [tmp_path]) as running:
        server = int(running.expect(STARTED)[1])
        running.expect("serving")
        running.proc.send_signal(signal.SIGTERM)
        running.expect("SIGTERM number 1")
        running.proc.send_signal(signal.SIGTERM)
        running.expect(rf"server \(pid {server}\): a second signal: passing it on")
        running.expect("SIGTERM number 2")
        running.expect(rf"server \(pid {server}\) exited with status 3")
        assert running.proc.wait(WAIT) == 3
        assert not [line for line in running.lines_so_far() if "SIGTERM number 3" in line or "killing" in line]


def test_in_process_the_signal_handlers_are_put_back(tmp_path: Path) -> None:
    """The child stops its own reloader (this process) with SIGTERM; afterwards the
    handlers and the wake-up descriptor are what they were, and nothing leaked
    (the no_leaks fixture checks the descriptors and the child)."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    stop_me = (
        "import os, signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
        "os.kill(os.getppid(), signal.SIGTERM); signal.pause()"
    )
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        status = run_with_reload([sys.executable, "-c", stop_me], [tmp_path], sockets=[listener], interval=0.05)
    finally:
        listener.close()
    assert status == 0
    assert {signum: signal.getsignal(signum) for signum in before} == before
    assert signal.set_wakeup_fd(-1) == -1
