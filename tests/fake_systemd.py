"""A fake service manager for the tests: what systemd does for a service,
without systemd.

* :func:`spawn` starts a command the way systemd starts a socket-activated
  service: the listening sockets moved to descriptors 3, 4, 5... in order,
  nothing else inherited, ``LISTEN_PID`` the service's own pid (set by a small
  shim that runs between fork and exec, as systemd's child does),
  ``LISTEN_FDS`` and ``LISTEN_FDNAMES``.
* :class:`FakeManager` is the manager's end of ``NOTIFY_SOCKET``: a Unix
  datagram socket that collects what the service sends (``READY=1``...), with
  :meth:`FakeManager.wait_for`, and each message's sender (its pid, from the
  kernel's credentials, as systemd checks ``NotifyAccess=main``) and arrival time.
* :class:`ServiceManager` puts the two together, as a ``.socket`` and a
  ``Type=notify`` ``.service`` unit would.

Every wait has a timeout; whoever starts a process reaps it (``stop()``, or
the context managers).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

TIMEOUT = 20.0
_UCRED = struct.Struct("iII")  # struct ucred: the sender's pid, uid, gid (SO_PASSCRED)

# What systemd does between fork() and exec(): move the sockets to 3, 4, 5...
# in order, leave nothing else open (subprocess closes every descriptor but
# pass_fds), set LISTEN_PID to the pid that will run the service, then exec.
# The sockets first go to descriptors above 100, so that moving one onto 3
# cannot overwrite another that the parent happened to pass as 3. Every
# "{self}" in the environment's values becomes the shim's pid, which exec keeps.
# config["base"]: the environment to start from (None: the shim's own), so a
# test can give the service a clean one, as systemd does.
LAUNCHER = r"""
import fcntl, json, os, sys
config = json.loads(sys.argv[1])
staged = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in config["fds"]]
for fd in config["fds"]:
    os.close(fd)
for index, fd in enumerate(staged):
    os.dup2(fd, 3 + index)  # inheritable: it must survive the exec
    os.close(fd)
base = os.environ if config["base"] is None else config["base"]
env = {k: v for k, v in base.items() if not k.startswith("LISTEN_")}
env.update({k: v.replace("{self}", str(os.getpid())) for k, v in config["env"].items()})
os.execve(config["argv"][0], config["argv"], env)
"""


def listen_environment(count: int, names: Sequence[str] | None = None) -> dict[str, str]:
    """The variables systemd sets for ``count`` sockets (``names``: their ``FileDescriptorName=``)."""
    env = {"LISTEN_PID": "{self}", "LISTEN_FDS": str(count)}
    if names is not None:
        env["LISTEN_FDNAMES"] = ":".join(names)
    return env


def spawn(
    argv: Sequence[str],
    fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[Any]:
    """Start ``argv`` (``argv[0]`` a path) with ``fds`` on descriptors 3, 4...
    and ``env`` added to ``environ`` (default: this process's environment),
    without its ``LISTEN_*``;
    "{self}" in a value is the started process's pid. Give ``env`` the
    variables (:func:`listen_environment`), or craft broken ones. ``popen``
    goes to ``subprocess.Popen`` (``stdout=``, ``text=``...)."""
    base = None if environ is None else dict(environ)
    config = {"fds": list(fds), "env": dict(env or {}), "argv": list(argv), "base": base}
    parent_env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, json.dumps(config)], pass_fds=list(fds), env=parent_env, **popen
    )


class FakeManager:
    """The manager's end of ``NOTIFY_SOCKET``: a bound datagram socket, read
    with a timeout. ``address`` is as ``NOTIFY_SOCKET`` says it (``@name``
    for the abstract namespace). Every message read is kept in ``received``;
    its sender's pid in ``senders`` and its ``time.monotonic()`` on arrival in
    ``arrived``, at the same index; ``found`` is the index of the message
    :meth:`wait_for` returned last."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
            if not address.startswith("@"):
                # As systemd's: a service that dropped root to any user may still notify.
                os.chmod(address, 0o777)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(10)
        self.received: list[str] = []
        self.senders: list[int] = []
        self.arrived: list[float] = []
        self.found = -1
        self._seen = 0  # how many of received wait_for() has looked at

    @classmethod
    def unique(cls, directory: str | None = None) -> FakeManager:
        """One in ``directory`` (a path), or with a unique abstract name."""
        if directory is not None:
            return cls(os.path.join(directory, "notify"))
        return cls(f"@sockserve-test/{uuid.uuid4().hex}")  # the namespace is shared by the whole machine

    def receive(self, timeout: float | None = None) -> str:
        """The next message (raises ``TimeoutError`` after ``timeout``, else the socket's 10 s)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(_UCRED.size))
        finally:
            if timeout is not None:
                self.sock.settimeout(10)
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        message = data.decode()
        self.received.append(message)
        self.senders.append(pid)
        self.arrived.append(time.monotonic())
        return message

    def fields(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.receive().split("\n"))

    def wait_for(self, line: str, timeout: float = TIMEOUT) -> str:
        """The next message (after the last one ``wait_for`` returned) that
        holds ``line`` (e.g. ``"READY=1"``) as one of its lines, waiting for
        it at most ``timeout`` seconds. Messages passed over stay in ``received``."""
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.received):
                message = self.received[self._seen]
                self._seen += 1
                if line in message.split("\n"):
                    self.found = self._seen - 1
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {line!r} from the service within {timeout}s; it sent {self.received}")
            try:
                self.receive(timeout=left)
            except TimeoutError:
                pass  # the loop above says what was missing

    def lines(self) -> list[str]:
        """Every line of every message read so far, in order."""
        return [line for message in self.received for line in message.split("\n")]

    def close(self) -> None:
        self.sock.close()  # the file stays, as a vanished manager's does (its directory is the test's)


class ServiceManager:
    """A ``.socket`` plus ``Type=notify`` ``.service`` for one test: it owns
    the listening sockets it is given (closes them on ``close()``), passes
    them to the service it starts, and collects the service's notifications.

    ``with ServiceManager(short_tmp) as manager: proc = manager.start(argv,
    [sock], names=["web"]); manager.notify.wait_for("READY=1")``
    """

    def __init__(self, directory: str | None = None) -> None:
        self.notify = FakeManager.unique(directory)
        self.sockets: list[socket.socket] = []
        self.processes: list[subprocess.Popen[Any]] = []

    def listen(self, family: int, kind: int, address: Any, backlog: int = 16) -> socket.socket:
        """A socket as a ``.socket`` unit makes it: bound, listening if a stream; kept until close()."""
        sock = socket.socket(family, kind)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            if kind == socket.SOCK_STREAM:
                sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        self.sockets.append(sock)
        return sock

    def start(
        self,
        argv: Sequence[str],
        sockets: Sequence[socket.socket] | None = None,
        names: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **popen: Any,
    ) -> subprocess.Popen[Any]:
        """Start the service with ``sockets`` (default: all of ours, in order) and
        ``NOTIFY_SOCKET``, ``env`` added to ``environ`` (default: this process's)."""
        passed = self.sockets if sockets is None else sockets
        variables = {"NOTIFY_SOCKET": self.notify.address}
        if passed:
            variables.update(listen_environment(len(passed), names))
        variables.update(env or {})
        proc = spawn(argv, [s.fileno() for s in passed], variables, environ=environ, **popen)
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        """Send ``sig`` and reap; SIGKILL (and an AssertionError) if it does not exit within ``timeout``."""
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=timeout)
            raise AssertionError(f"the service did not exit within {timeout}s of {signal.Signals(sig).name}") from None
        return proc.returncode

    def close(self) -> None:
        """Kill and reap what is still running, close the sockets and the notify socket."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=TIMEOUT)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()  # (a test may have read and closed them already)
        self.processes.clear()
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        self.notify.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
