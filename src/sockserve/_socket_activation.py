"""systemd socket activation without libsystemd: read the sockets a service
manager passed (``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``), parse the
``--bind`` texts a user wrote, and pair each bind with the socket that serves it.

The protocol (sd_listen_fds(3)): descriptors start at 3 (``SD_LISTEN_FDS_START``)
and are ``LISTEN_FDS`` in number; they are ours only if ``LISTEN_PID`` is our
pid (a child that inherited the environment must leave them alone);
``LISTEN_FDNAMES`` holds one name per descriptor, colon-separated, and without
it every name is ``"unknown"``. The variables are removed once read, so that a
child we start does not take the sockets for its own, and the descriptors are
made close-on-exec. Errors follow sd_listen_fds: no ``LISTEN_PID``, another
process's pid, or no ``LISTEN_FDS`` mean "nothing was passed" (an empty list);
a ``LISTEN_PID`` or ``LISTEN_FDS`` that is not a number, a count below 1, a
descriptor that is not open or not a socket, and a name count that differs from
the descriptor count raise :class:`SocketActivationError` (sd_listen_fds
returns ``-EINVAL`` or ``-EBADF`` there; a service that starts anyway would
serve the wrong sockets or none).

What a server must do with an inherited socket: **use it as it is.** It is
already bound and (for a stream socket) listening, possibly on an address this
process could not bind itself (a port below 1024, a path in a directory it may
not write): never ``bind()`` or ``listen()`` it again, never change its
options, and never unlink an inherited Unix socket's path, neither at start-up
(it is not stale: it is the live socket) nor at shutdown (the service manager
owns the file, and keeps listening on it to start us again). Closing our copy
of the descriptor is fine: the manager keeps its own. The descriptors are
close-on-exec but stay open across ``fork()``, which is how prefork workers
share them; a worker started with ``exec`` needs them passed explicitly.

This module opens no socket of its own and binds nothing; the server classes
and the CLI decide what to do with its answers.
"""

from __future__ import annotations

import os
import re
import socket
import stat

from ._address import format_address
from ._errors import SockserveError
from ._frozen import FrozenValue

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, MutableMapping
    from socket import AddressFamily, SocketKind
    from socket import socket as Socket  # noqa: N812  (InheritedSocket's field "socket" hides the module)
    from typing import Literal

    Scheme = Literal["tcp", "udp", "unix", "unixgram"]

__all__ = [
    "SD_LISTEN_FDS_START",
    "Bind",
    "InheritedSocket",
    "SocketActivationError",
    "inherited_sockets",
    "listen_fds_with_names",
    "match_binds",
    "parse_bind",
]

SD_LISTEN_FDS_START = 3
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDS", "LISTEN_FDNAMES")
_NUMBER = re.compile(r"[0-9]{1,19}")  # ASCII digits only: int() would also take "+3", " 3" and "3_0"
# systemd's fdname_is_valid(): printable ASCII but the colon (the separator), at most 255 characters.
_FDNAME = re.compile(r"[\x20-\x39\x3b-\x7e]{1,255}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_INT_MAX = 2**31 - 1
# C0 controls, DEL and C1 controls: a path holding one splits the start-up log
# line (or forges another), and a NUL cannot reach the kernel.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# sun_path holds 108 bytes: a path's terminating NUL included, and an
# abstract name's leading NUL (written @) likewise (Linux's unix(7); CPython
# refuses a 108-byte path with "AF_UNIX path too long").
_MAX_UNIX_PATH = 107


class SocketActivationError(SockserveError, ValueError):
    """The environment a service manager left is malformed, or the sockets it
    passed do not fit the binds asked for. ``problems`` holds one line per fault."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


# --- reading what systemd passed ---------------------------------------------


def _parse_listen_environment(environ: Mapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The (descriptor, name) pairs the environment passes to process ``pid``,
    without touching a descriptor: the sans-IO half of :func:`listen_fds_with_names`."""
    listen_pid = environ.get("LISTEN_PID")
    if listen_pid is None:
        return []
    if not _NUMBER.fullmatch(listen_pid) or int(listen_pid) <= 0:
        raise SocketActivationError(f"LISTEN_PID={listen_pid!r} is not a process id")
    if int(listen_pid) != pid:
        return []  # passed to our parent (or to an earlier process we exec'd from): not ours
    # LISTEN_PIDFDID (systemd 257) names the process more exactly than the pid. Checking
    # it needs fstatfs() to know the pidfd is on pidfs, which Python lacks; systemd skips
    # the check too where it cannot make it, so validate its form and go by the pid.
    pidfd_id = environ.get("LISTEN_PIDFDID")
    if pidfd_id is not None and not _NUMBER.fullmatch(pidfd_id):
        raise SocketActivationError(f"LISTEN_PIDFDID={pidfd_id!r} is not a number")
    listen_fds = environ.get("LISTEN_FDS")
    if listen_fds is None:
        return []
    if not _NUMBER.fullmatch(listen_fds):
        raise SocketActivationError(f"LISTEN_FDS={listen_fds!r} is not a count of descriptors")
    count = int(listen_fds)
    if count <= 0 or count > _INT_MAX - SD_LISTEN_FDS_START:
        raise SocketActivationError(f"LISTEN_FDS={listen_fds!r}: the count must be at least 1")
    fdnames = environ.get("LISTEN_FDNAMES")
    if fdnames is None:
        names = ["unknown"] * count
    else:
        # systemd splits without merging separators ("a::b" is three names, one empty), and
        # an empty value is no name at all.
        names = fdnames.split(":") if fdnames else []
        if len(names) != count:
            raise SocketActivationError(
                f"LISTEN_FDNAMES={fdnames!r} has {len(names)} name(s) for LISTEN_FDS={count} descriptor(s)"
            )
    return [(SD_LISTEN_FDS_START + index, name) for index, name in enumerate(names)]


def listen_fds_with_names(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[tuple[int, str]]:
    """sd_listen_fds_with_names(3): the descriptors passed to this process and their names.

    Marks each descriptor close-on-exec. With ``unset`` (the default, as systemd
    services use it) the ``LISTEN_*`` variables are removed from ``environ``
    (``os.environ`` by default, which also unsets them in the process
    environment) whatever the outcome, so that no child takes them.
    Raises :class:`SocketActivationError` for a malformed environment or a
    descriptor that is not open.
    """
    env = os.environ if environ is None else environ
    try:
        passed = _parse_listen_environment(env, os.getpid())
        for fd, _name in passed:
            try:
                os.set_inheritable(fd, False)
            except OSError as exc:
                raise SocketActivationError(
                    f"LISTEN_FDS={len(passed)} but descriptor {fd} cannot be used: {exc.strerror}"
                ) from None
        return passed
    finally:
        if unset:
            for variable in _LISTEN_VARIABLES:
                env.pop(variable, None)


class InheritedSocket(FrozenValue):
    """A socket passed by the service manager: its descriptor, its name
    (``FileDescriptorName=``, or ``"unknown"``), a ``socket.socket`` that owns
    the descriptor, and what the kernel says about it. Use it as it is (see the
    module's docstring): it is already bound, and listening if ``listening``."""

    __slots__ = ("address", "family", "fd", "listening", "name", "socket", "type")
    _fields = ("fd", "name", "socket", "family", "type", "address", "listening")

    fd: int
    name: str
    socket: Socket
    family: AddressFamily
    type: SocketKind
    address: object
    listening: bool

    def __init__(
        self,
        fd: int,
        name: str,
        socket: Socket,
        family: AddressFamily,
        type: SocketKind,
        address: object,
        listening: bool,
    ) -> None:
        self._freeze(fd, name, socket, family, type, address, listening)

    @classmethod
    def from_socket(cls, sock: Socket, name: str = "unknown") -> InheritedSocket:
        """Describe ``sock`` (family, type, ``getsockname()``, ``SO_ACCEPTCONN``); it stays the caller's."""
        listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        return cls(sock.fileno(), name, sock, sock.family, sock.type, sock.getsockname(), listening)

    def describe(self) -> str:
        """One line for messages: ``fd 3 'web' (TCP [::]:9000, listening)``."""
        state = "listening" if self.listening else "not listening"
        kind = _kind_label(self.family, self.type)
        return f"fd {self.fd} {self.name!r} ({kind} {format_address(self.address)}, {state})"


def inherited_sockets(environ: MutableMapping[str, str] | None = None, *, unset: bool = True) -> list[InheritedSocket]:
    """The sockets systemd (or any manager speaking its protocol) passed to this
    process, in descriptor order; an empty list when none were passed to us.

    ``environ`` defaults to ``os.environ``; ``unset`` removes the ``LISTEN_*``
    variables from it, as sd_listen_fds does. Each ``InheritedSocket.socket``
    owns its descriptor (closing it closes the descriptor). Raises
    :class:`SocketActivationError` for a malformed environment or a passed
    descriptor that is not a socket (systemd can pass FIFOs and other files too;
    a socket server has no use for them).
    """
    passed = listen_fds_with_names(environ, unset=unset)
    not_sockets = [f"descriptor {fd} {name!r} is not a socket" for fd, name in passed if not _is_socket(fd)]
    if not_sockets:
        raise SocketActivationError(*not_sockets)
    result: list[InheritedSocket] = []
    try:
        for fd, name in passed:
            # fileno= asks the kernel for the family, type and protocol (SO_DOMAIN, SO_TYPE, SO_PROTOCOL).
            sock = socket.socket(fileno=fd)
            try:
                result.append(InheritedSocket.from_socket(sock, name))
            except BaseException:
                sock.detach()
                raise
    except BaseException:
        for made in result:  # leave the descriptors as they came, owned by no object
            made.socket.detach()
        raise
    return result


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


# --- binds: what the user asked for ----------------------------------------------


class Bind(FrozenValue):
    """A parsed ``--bind``: ``tcp://HOST:PORT``, ``udp://HOST:PORT`` (an IPv6
    host in brackets), ``unix:PATH`` (a Unix stream socket; ``unix:@NAME``
    for Linux's abstract namespace) or ``unixgram:PATH`` (a Unix datagram
    socket, ``ListenDatagram=/path``), each optionally followed by
    ``?name=NAME`` to match the socket's ``FileDescriptorName=``.
    ``str(bind)`` gives the text back."""

    __slots__ = ("host", "name", "path", "port", "scheme")
    _fields = ("scheme", "host", "port", "path", "name")

    scheme: Scheme
    host: str | None
    port: int | None
    path: str | None
    name: str | None

    def __init__(
        self,
        scheme: Scheme,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
        name: str | None = None,
    ) -> None:
        self._freeze(scheme, host, port, path, name)

    @property
    def type(self) -> socket.SocketKind:
        """``SOCK_STREAM`` for tcp and unix, ``SOCK_DGRAM`` for udp and unixgram."""
        return socket.SOCK_DGRAM if self.scheme in ("udp", "unixgram") else socket.SOCK_STREAM

    @property
    def families(self) -> tuple[socket.AddressFamily, ...]:
        """The families a socket serving this bind may have. Both IP families
        for tcp and udp, whatever the host: ``ListenStream=9000`` gives an IPv6
        socket that takes IPv4 too, and it serves ``tcp://0.0.0.0:9000``."""
        if self.is_unix:
            return (socket.AF_UNIX,)
        return (socket.AF_INET, socket.AF_INET6)

    @property
    def is_unix(self) -> bool:
        """A Unix socket (unix or unixgram): an address that is a path."""
        return self.scheme in ("unix", "unixgram")

    @property
    def address(self) -> tuple[str, int] | str:
        """What ``bind()`` takes: ``(host, port)``, or the path (abstract: a leading NUL)."""
        if self.is_unix:
            assert self.path is not None
            return "\0" + self.path[1:] if self.path.startswith("@") else self.path
        assert self.host is not None
        assert self.port is not None
        return (self.host, self.port)

    def __str__(self) -> str:
        if self.is_unix:
            text = f"{self.scheme}:{self.path}"
        else:
            host = f"[{self.host}]" if self.host is not None and ":" in self.host else self.host
            text = f"{self.scheme}://{host}:{self.port}"
        return text if self.name is None else f"{text}?name={self.name}"


def parse_bind(text: str) -> Bind:
    """Parse a ``--bind`` text into a :class:`Bind`; a ``ValueError`` says what is wrong."""
    rest, separator, name = text.partition("?name=")
    if separator and not _FDNAME.fullmatch(name):
        raise ValueError(f"bad bind {text!r}: a name is 1 to 255 printable ASCII characters without ':' (got {name!r})")
    scheme, colon, target = rest.partition(":")
    if not colon:
        raise ValueError(
            f"bad bind {text!r}: expected tcp://HOST:PORT, udp://HOST:PORT, unix:PATH, unix:@NAME or unixgram:PATH"
        )
    if scheme in ("unix", "unixgram"):
        if not target or target == "@":
            raise ValueError(f"bad bind {text!r}: the Unix socket path is empty")
        if "\0" in target:
            raise ValueError(f"bad bind {text!r}: the Unix socket path holds a NUL (write an abstract name as @NAME)")
        control = _CONTROL.search(target)
        if control:
            raise ValueError(f"bad bind {text!r}: the Unix socket path holds a control character {control[0]!r}")
        size = len(os.fsencode(target))
        if size > _MAX_UNIX_PATH:
            # Found here, by --check, rather than when binding fails.
            raise ValueError(
                f"bad bind {text!r}: the Unix socket path is {size} bytes, "
                f"over the {_MAX_UNIX_PATH} a socket address holds"
            )
        return Bind("unix" if scheme == "unix" else "unixgram", path=target, name=name if separator else None)
    if scheme not in ("tcp", "udp"):
        raise ValueError(f"bad bind {text!r}: unknown scheme {scheme!r} (expected tcp, udp, unix or unixgram)")
    if not target.startswith("//"):
        raise ValueError(f"bad bind {text!r}: expected {scheme}://HOST:PORT")
    host, port = _parse_host_port(text, target[2:])
    return Bind("tcp" if scheme == "tcp" else "udp", host=host, port=port, name=name if separator else None)


def _parse_host_port(text: str, hostport: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, port_text = hostport[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ValueError(f"bad bind {text!r}: expected [IPV6]:PORT")
        import ipaddress

        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad bind {text!r}: {host!r} is not an IPv6 address") from None
        port_text = port_text[1:]
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            raise ValueError(f"bad bind {text!r}: no port (expected HOST:PORT)")
        if ":" in host:
            raise ValueError(f"bad bind {text!r}: write an IPv6 address in brackets, [{host}]:{port_text}")
        if not host:
            raise ValueError(f"bad bind {text!r}: no host (0.0.0.0 or [::] for every interface)")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"bad bind {text!r}: {host!r} is neither an IP address nor a host name")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        raise ValueError(f"bad bind {text!r}: the port must be a number from 0 to 65535 (got {port_text!r})")
    return host, int(port_text)


# --- pairing binds with inherited sockets --------------------------------------


def match_binds(binds: Iterable[Bind], inherited: Iterable[InheritedSocket]) -> dict[Bind, InheritedSocket]:
    """Pair each bind with the inherited socket that serves it.

    In three passes, each taking only sockets of the bind's kind (tcp: an IP
    stream socket, udp: an IP datagram socket, unix: a Unix stream socket,
    unixgram: a Unix datagram socket) that no earlier pass took: a bind with a name takes a socket of that name; then a
    bind takes a socket bound to exactly its address; then each bind left takes
    the first socket left, in descriptor order (systemd passes them in the order
    of the ``Listen*=`` lines). Call it only when :func:`inherited_sockets`
    returned sockets: with none, a server binds as usual.

    Raises :class:`SocketActivationError`, its ``problems`` one line per fault,
    for a bind given twice, a bind no inherited socket serves, an
    inherited socket no bind claims, and a stream socket that is not listening
    (``Accept=yes`` passes one connection, not a listener).
    """
    binds = list(binds)
    inherited = list(inherited)
    left = list(inherited)
    problems: list[str] = []
    seen: set[Bind] = set()
    for bind in binds:
        if bind in seen:
            problems.append(f"bind {bind} is given twice")
        seen.add(bind)
    for candidate in left:
        if candidate.type == socket.SOCK_STREAM and not candidate.listening:
            problems.append(f"inherited {candidate.describe()} is a stream socket that is not listening (Accept=yes?)")
    if problems:
        raise SocketActivationError(*problems)

    matched: dict[Bind, InheritedSocket] = {}

    def take(bind: Bind, candidate: InheritedSocket) -> None:
        matched[bind] = candidate
        left.remove(candidate)

    for bind in binds:
        if bind.name is not None:
            named = [c for c in left if c.name == bind.name]
            fitting = [c for c in named if _fits(bind, c)]
            exact = [c for c in fitting if _same_address(bind, c)]
            if exact or fitting:
                take(bind, (exact or fitting)[0])
            elif named:
                problems.append(
                    f"bind {bind} wants a {_bind_label(bind)} socket, but the inherited socket(s) named "
                    f"{bind.name!r} are {', '.join(c.describe() for c in named)}"
                )
            else:
                problems.append(f"bind {bind}: no inherited socket is named {bind.name!r} ({_listing(inherited)})")
    unnamed = [bind for bind in binds if bind.name is None]
    for bind in unnamed:
        exact = [c for c in left if _fits(bind, c) and _same_address(bind, c)]
        if exact:
            take(bind, exact[0])
    for bind in unnamed:
        if bind in matched:
            continue
        fitting = [c for c in left if _fits(bind, c)]
        if fitting:
            take(bind, fitting[0])
        else:
            problems.append(
                f"bind {bind}: no inherited {_bind_label(bind)} socket is left for it ({_listing(inherited)})"
            )
    for candidate in left:
        problems.append(f"inherited {candidate.describe()} is claimed by no bind")
    if problems:
        raise SocketActivationError(*problems)
    return {bind: matched[bind] for bind in binds}  # in the order the binds were given


def _fits(bind: Bind, candidate: InheritedSocket) -> bool:
    return candidate.type == bind.type and candidate.family in bind.families


def _same_address(bind: Bind, candidate: InheritedSocket) -> bool:
    address = candidate.address
    if bind.is_unix:
        if isinstance(address, bytes):  # an abstract name comes back as bytes
            address = address.decode("utf-8", "surrogateescape")
        return address == bind.address
    if not isinstance(address, tuple) or len(address) < 2 or address[1] != bind.port:
        return False
    import ipaddress

    try:
        return ipaddress.ip_address(address[0]) == ipaddress.ip_address(bind.host or "")
    except ValueError:
        return False  # a host name: the port alone is no proof, leave it to the order


def _kind_label(family: int, kind: int) -> str:
    if family == socket.AF_UNIX:
        return "Unix stream" if kind == socket.SOCK_STREAM else "Unix datagram" if kind == socket.SOCK_DGRAM else "Unix"
    if family in (socket.AF_INET, socket.AF_INET6):
        return "TCP" if kind == socket.SOCK_STREAM else "UDP" if kind == socket.SOCK_DGRAM else "IP"
    return f"family {family} type {kind}"


def _bind_label(bind: Bind) -> str:
    return {"tcp": "TCP", "udp": "UDP", "unix": "Unix stream", "unixgram": "Unix datagram"}[bind.scheme]


def _listing(inherited: Iterable[InheritedSocket]) -> str:
    described = [c.describe() for c in inherited]
    return "inherited: " + ", ".join(described) if described else "none inherited"
