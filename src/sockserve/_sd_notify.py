"""Tells systemd how the service is doing (the ``sd_notify`` protocol), with no dependency.

The protocol: the service manager puts the address of a Unix datagram socket
in ``NOTIFY_SOCKET`` (a path, or ``@name`` for the Linux abstract namespace);
the service sends it datagrams of newline-separated ``KEY=VALUE`` lines
(``READY=1``, ``STATUS=...``, ``WATCHDOG=1``...), one message per datagram.
No ``NOTIFY_SOCKET`` means the process is not run by a manager that listens,
and every call is a no-op that returns False. ``WATCHDOG_USEC`` (for the
process named by ``WATCHDOG_PID``, when set) asks for ``WATCHDOG=1`` more
often than that; :class:`Watchdog` pings at half of it.

What to send and when (ready after binding, stopping when a drain starts) is
the caller's business: this module only speaks the protocol.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from ._limits import MAX_SECONDS
from ._log import _emit
from ._thread_signals import leave_signals_to_the_main_thread

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["Notifier", "Watchdog"]

_DEBUG, _INFO, _WARNING = 10, 20, 30

# The manager reads each datagram into a buffer of PIPE_BUF (4096 bytes) and
# ignores one that does not fit: refusing a longer message here turns a
# silent loss into an error the caller sees.
MAX_MESSAGE = 4096

# sun_path holds 108 bytes, the terminating NUL included for a path (an
# abstract name spends its first byte on the NUL instead).
_MAX_SUN_PATH = 107

_KEY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _socket_address(value: str) -> str:
    """The ``sendto()`` address for a ``NOTIFY_SOCKET`` value; ValueError if it is not one we can use.

    ``vsock:`` addresses (a manager outside a virtual machine) are refused:
    systemd passes them to a service only in rare set-ups, and a server that
    silently failed to notify would be killed after ``TimeoutStartSec``
    without a word, so a clear error at start-up is better.
    """
    if value.startswith("@"):
        address = "\0" + value[1:]  # the abstract namespace: a leading NUL byte, no file
    elif value.startswith("/"):
        address = value
    elif value.startswith("vsock"):
        raise ValueError(f"NOTIFY_SOCKET={value!r}: AF_VSOCK addresses are not supported (only a path or @name)")
    else:
        # systemd's own client refuses relative paths too: they depend on the working directory.
        raise ValueError(f"NOTIFY_SOCKET={value!r}: not an absolute path nor an @abstract name")
    if len(os.fsencode(address)) > _MAX_SUN_PATH:
        raise ValueError(f"NOTIFY_SOCKET={value!r}: longer than a Unix socket address can be")
    return address


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """``WATCHDOG_USEC`` if it is meant for this process, None if there is no watchdog.

    ``WATCHDOG_PID`` names the process the watchdog watches: when it is
    another one (we are a child that inherited the environment), pinging
    would be wrong, not merely useless.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        raise ValueError(f"WATCHDOG_USEC={usec!r}: not a positive number of microseconds")
    pid = environ.get("WATCHDOG_PID", "")
    if pid:
        if not (pid.isascii() and pid.isdigit()):
            raise ValueError(f"WATCHDOG_PID={pid!r}: not a process id")
        if int(pid) != os.getpid():
            return None
    return int(usec)


def _field(key: str, value: object) -> str:
    """One ``KEY=VALUE`` line; ValueError for what would corrupt the message."""
    if not key or not _KEY_CHARACTERS.issuperset(key):
        # Keys are upper case: a typo such as ready=1 would be ignored by the manager, without a word.
        raise ValueError(f"sd_notify key {key!r}: use upper-case letters, digits and underscores")
    if isinstance(value, bool):
        value = int(value)  # READY=True means READY=1
    text = str(value)
    if "\n" in text:
        # A newline would start another field: STATUS="ok\nREADY=1" must not declare readiness.
        raise ValueError(f"sd_notify {key}: a value cannot hold a newline: {text!r}")
    return f"{key}={text}"


class Notifier:
    """Sends notifications to the service manager named by ``NOTIFY_SOCKET``.

    Made with :meth:`from_environment`. Every method returns True when the
    datagram was sent, False when there is no manager to tell or it could
    not be reached: a manager that went away is worth one log line, never an
    exception that stops the server. The socket is opened at the first send
    and kept until :meth:`close` (or the end of a ``with`` block). Safe to
    use from several threads.
    """

    def __init__(self, notify_socket: str | None = None, *, watchdog_usec: int | None = None) -> None:
        """``notify_socket`` in ``NOTIFY_SOCKET``'s format (None: not run by a manager)."""
        self._address = _socket_address(notify_socket) if notify_socket else None
        self._watchdog_usec = watchdog_usec
        self._lock = threading.Lock()  # one sender at a time, and close() never races a send
        self._socket: socket.socket | None = None
        self._closed = False
        self._failing = False  # the last send failed: the next failures are not logged again

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *, strict: bool = True) -> Notifier:
        """A notifier for what ``environ`` (default ``os.environ``) says.

        ValueError names the variable when ``NOTIFY_SOCKET``,
        ``WATCHDOG_USEC`` or ``WATCHDOG_PID`` holds something unusable. With
        ``strict=False`` such a variable is one WARNING line instead, naming
        it and why, and is left aside: a bad ``NOTIFY_SOCKET`` means no
        notifications, a bad ``WATCHDOG_USEC`` or ``WATCHDOG_PID`` no
        watchdog pings. For a server already serving, which a malformed
        environment should not stop (systemd itself never passes one).
        """
        environ = os.environ if environ is None else environ
        notify_socket = environ.get("NOTIFY_SOCKET") or None
        try:
            usec = _watchdog_usec(environ)
        except ValueError as error:
            if strict:
                raise
            _emit("sd_notify", _WARNING, "%s: running without the systemd watchdog", error)
            usec = None
        try:
            return cls(notify_socket, watchdog_usec=usec)
        except ValueError as error:
            if strict:
                raise
            _emit("sd_notify", _WARNING, "%s: not telling the service manager anything", error)
            return cls(None)

    @property
    def enabled(self) -> bool:
        """Whether there is a manager to notify (False: every call is a no-op)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """How often to send ``WATCHDOG=1``, in seconds: half of ``WATCHDOG_USEC``.

        None without a watchdog, or when it watches another process. Half,
        as systemd advises, so that one late ping is not fatal.
        """
        if self._watchdog_usec is None or self._address is None:
            return None
        # At most MAX_SECONDS: a longer wait cannot be made (epoll.poll() and
        # Event.wait() overflow), and pinging more often than asked is harmless.
        return min(self._watchdog_usec / 2_000_000, MAX_SECONDS)

    def send(self, **fields: object) -> bool:
        """Sends ``fields`` as one message, in order: ``send(READY=1, STATUS="serving")``.

        Values are turned into text (True is 1). ValueError for a value with
        a newline, a key that is not upper case, no field at all, or a
        message longer than the manager reads.
        """
        if not fields:
            raise ValueError("sd_notify: a message needs at least one field")
        message = "\n".join(_field(key, value) for key, value in fields.items()).encode()
        if len(message) > MAX_MESSAGE:
            raise ValueError(
                f"sd_notify: a message of {len(message)} bytes is over the {MAX_MESSAGE} the manager reads"
            )
        if self._address is None:
            return False
        with self._lock:
            if self._closed:
                return False
            try:
                if self._socket is None:
                    # Unconnected, addressed at each send: a manager that re-executes
                    # itself binds its socket anew, which a connected socket would
                    # not follow. CLOEXEC (Python's default, said here for the
                    # reader): a program the server execs must not inherit it.
                    cloexec = getattr(socket, "SOCK_CLOEXEC", 0)
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | cloexec)
                self._socket.sendto(message, self._address)
            except OSError as error:
                self._report(error)
                return False
            if self._failing:
                self._failing = False
                _emit("sd_notify", _INFO, "the service manager at %s is reachable again", self._shown_address())
            return True

    def ready(self, status: str | None = None) -> bool:
        """The service is up: its listeners accept (``READY=1``, with ``STATUS=`` if given)."""
        return self.send(READY=1) if status is None else self.send(READY=1, STATUS=status)

    def reloading(self, status: str | None = None) -> bool:
        """A reload starts (``RELOADING=1``); send :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` goes with it: ``Type=notify-reload`` needs it to
        tell this reload from an older one.
        """
        fields: dict[str, object] = {"RELOADING": 1, "MONOTONIC_USEC": time.monotonic_ns() // 1000}
        if status is not None:
            fields["STATUS"] = status
        return self.send(**fields)

    def stopping(self, status: str | None = None) -> bool:
        """The service is shutting down (``STOPPING=1``): a drain has started."""
        return self.send(STOPPING=1) if status is None else self.send(STOPPING=1, STATUS=status)

    def status(self, text: str) -> bool:
        """A one-line status for ``systemctl status`` (``STATUS=``)."""
        return self.send(STATUS=text)

    def main_pid(self, pid: int) -> bool:
        """The service's main process is ``pid`` (``MAINPID=``), e.g. after re-executing."""
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"MAINPID: not a process id: {pid!r}")
        return self.send(MAINPID=pid)

    def watchdog_ping(self) -> bool:
        """The service is alive (``WATCHDOG=1``)."""
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        """Closes the socket; later calls are no-ops that return False."""
        with self._lock:
            self._closed = True
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Notifier {self._shown_address() if self._address else 'disabled'}>"

    def _shown_address(self) -> str:
        assert self._address is not None
        return "@" + self._address[1:] if self._address.startswith("\0") else self._address

    def _report(self, error: OSError) -> None:
        # Once per outage: a watchdog pinging a manager that is gone would
        # otherwise log a line at every ping for as long as the server runs.
        level = _DEBUG if self._failing else _WARNING
        self._failing = True
        _emit("sd_notify", level, "cannot notify the service manager at %s: %s", self._shown_address(), error)


class Watchdog:
    """Sends ``WATCHDOG=1`` at the notifier's interval, from a thread, while the server is healthy.

    A thread, not a step of the serve loop: the loops sleep until woken
    (selectors, asyncio, a prefork supervisor waiting on its children), so a
    ping due during a quiet spell would need a timer in each of them; one
    small thread serves every model. So that a hung server is still caught,
    the thread pings only while ``healthy()`` says so: pass a check of the
    serve loop's progress (a turn taken recently) and a stuck loop stops the
    pings, and systemd restarts the service, as the watchdog is meant to.
    """

    def __init__(self, notifier: Notifier, healthy: Callable[[], bool] | None = None) -> None:
        self._notifier = notifier
        self._healthy = healthy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float | None:
        """Seconds between pings; None when there is no watchdog to ping."""
        return self._notifier.watchdog_interval()

    def start(self) -> bool:
        """Starts pinging, at once and then every interval; False (nothing started) without a watchdog."""
        interval = self.interval
        if interval is None or self._thread is not None:
            return False
        self._thread = threading.Thread(target=self._run, args=(interval,), name="sockserve sd_notify watchdog")
        self._thread.daemon = True  # a program that forgets stop() still exits
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stops the pings and joins the thread (the next ``STOPPING=1`` is the caller's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self, interval: float) -> None:
        leave_signals_to_the_main_thread()
        # Ping at once: the manager's timer runs from the start of the service,
        # and the caller may start this well after it.
        while True:
            if self._healthy is None or self._healthy():
                self._notifier.watchdog_ping()
            # The wait is the stop signal too: stop() ends it at once. The next
            # ping is an interval after this one, not after a missed deadline:
            # a late ping is followed by a normal spacing, not by a burst.
            if self._stop.wait(interval):
                return
