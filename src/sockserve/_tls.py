"""TLS for servers: the configuration (``TLSConfig``), the server context built
from it (``build_context``), the current context with reload
(``TLSContextSource``), and what a handshake established (``tls_info``).

This module only makes and swaps contexts; wrapping connections and running
handshakes (with their deadline) is the pipeline's stage, which calls
``TLSContextSource.context()`` once per new connection.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import time
from collections.abc import Iterator, Mapping

from ._errors import SockserveError
from ._frozen import FrozenValue
from ._limits import check_seconds  # the bound every wait shares (epoll's)
from ._log import logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    StrPath = str | os.PathLike[str]

__all__ = [
    "CHECK_INTERVAL",
    "CLIENT_CERT_MODES",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "SERVER_NAME_ATTRIBUTE",
    "TLSConfig",
    "TLSConfigError",
    "TLSContextSource",
    "TLSInfo",
    "build_context",
    "tls_info",
]

# The attribute the SNI callback sets on an SSLSocket or SSLObject: the server
# name the client asked for. Neither class records it on the server side
# (``server_hostname`` is the client's own argument), so we do.
SERVER_NAME_ATTRIBUTE = "_sockserve_server_name"

# A watching source looks at its files at most this often (seconds).
CHECK_INTERVAL = 1.0

# Seconds a client has to complete its handshake, unless configured otherwise.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

CLIENT_CERT_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKER = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
# A DNS name as a client sends it in SNI (A-labels), or "*." before one.
_NAME = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


class TLSConfigError(SockserveError, ValueError):
    """A certificate, key or CA file that cannot be loaded: the message names
    the file and says why."""


class _SNIMap(Mapping[str, "tuple[str, str | None]"]):
    """A read-only dict of SNI entries: hashable and picklable, so that a
    ``TLSConfig`` holding one stays a frozen value."""

    __slots__ = ("_entries",)

    def __init__(self, entries: dict[str, tuple[str, str | None]]) -> None:
        self._entries = entries

    def __getitem__(self, name: str) -> tuple[str, str | None]:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __hash__(self) -> int:
        return hash(frozenset(self._entries.items()))

    def __repr__(self) -> str:
        return repr(self._entries)

    def __reduce__(self) -> tuple[type[_SNIMap], tuple[dict[str, tuple[str, str | None]]]]:
        return (_SNIMap, (dict(self._entries),))


class TLSConfig(FrozenValue):
    """How a server speaks TLS, from certificate files.

    Attributes:
        certfile: the PEM certificate chain presented by default (leaf
            first), with the private key too unless ``keyfile`` is given.
        keyfile: the PEM private key, when not in ``certfile``.
        password: the password of an encrypted private key (all keys of this
            configuration). Without one, an encrypted key is an error: OpenSSL
            would otherwise ask for it on the terminal.
        sni: server name -> ``(certfile, keyfile)``: the certificate presented
            when a client asks for that name (Server Name Indication). A lone
            path stands for ``(path, None)``. Names are compared without case
            and without a trailing dot; ``*.example.com`` matches exactly one
            more label (``a.example.com``, not ``example.com`` nor
            ``a.b.example.com``); an exact entry wins over a wildcard. A name
            that matches nothing gets ``certfile``: the handshake goes on.
        client_ca: the PEM CA certificates that client certificates must chain
            to (mutual TLS).
        client_cert: ``"none"`` (not asked for), ``"optional"`` (verified when
            the client sends one) or ``"required"``. ``"optional"`` and
            ``"required"`` need ``client_ca``; a ``client_ca`` given with
            ``"none"`` becomes ``"required"``, since a CA that verifies nothing
            can only be a mistake, and the safe reading of it is to verify.
        handshake_timeout: seconds a client has to complete its handshake.
        alpn: the application protocols offered, in order of preference.
        watch: reload the files when they change (looked at, at most once a
            second, when a connection arrives).

    A frozen value: equal and hashable by its fields; ``replace(**changes)``
    returns a copy with some fields changed, validated again.
    """

    __slots__ = (
        "alpn",
        "certfile",
        "client_ca",
        "client_cert",
        "handshake_timeout",
        "keyfile",
        "password",
        "sni",
        "watch",
    )
    _fields = (
        "certfile",
        "keyfile",
        "password",
        "sni",
        "client_ca",
        "client_cert",
        "handshake_timeout",
        "alpn",
        "watch",
    )

    certfile: str
    keyfile: str | None
    password: str | None
    sni: Mapping[str, tuple[str, str | None]]
    client_ca: str | None
    client_cert: str
    handshake_timeout: float
    alpn: tuple[str, ...]
    watch: bool

    def __init__(
        self,
        certfile: StrPath,
        keyfile: StrPath | None = None,
        password: str | None = None,
        sni: Mapping[str, StrPath | tuple[StrPath, StrPath | None]] | None = None,
        client_ca: StrPath | None = None,
        client_cert: str = "none",
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        alpn: Iterable[str] = (),
        watch: bool = True,
    ) -> None:
        if password is not None and not isinstance(password, str):
            raise TypeError(f"password must be a str or None, got {type(password).__name__}")
        if not isinstance(watch, bool):
            raise TypeError(f"watch must be a bool, got {type(watch).__name__}")
        self._freeze(
            _path("certfile", certfile),
            None if keyfile is None else _path("keyfile", keyfile),
            password,
            _sni_entries(sni or {}),
            None if client_ca is None else _path("client_ca", client_ca),
            _client_cert_mode(client_cert, client_ca),
            _timeout(handshake_timeout),
            _alpn_protocols(alpn),
            watch,
        )

    def replace(self, **changes: Any) -> TLSConfig:
        """A copy with the fields named in ``changes`` changed, validated again."""
        fields = dict(zip(self._fields, self._values(), strict=True))
        fields.update(changes)
        return TLSConfig(**fields)

    __replace__ = replace

    def files(self) -> tuple[str, ...]:
        """Every file the configuration reads, once each (what a watch looks at)."""
        paths = [self.certfile, self.keyfile, self.client_ca]
        for certfile, keyfile in self.sni.values():
            paths += [certfile, keyfile]
        return tuple(dict.fromkeys(path for path in paths if path is not None))


def _path(field: str, value: object) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{field} must be a path (str or os.PathLike), got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{field} must be a str path, got {type(path).__name__}")
    if not path:
        raise ValueError(f"{field} must not be empty")
    return path


def _client_cert_mode(mode: str, client_ca: object) -> str:
    if mode not in CLIENT_CERT_MODES:
        raise ValueError(f"client_cert must be 'none', 'optional' or 'required', got {mode!r}")
    if client_ca is None and mode != "none":
        raise ValueError(f"client_cert={mode!r} needs client_ca, the CA file to verify client certificates")
    return "required" if client_ca is not None and mode == "none" else mode


def _timeout(value: object) -> float:
    return check_seconds("handshake_timeout", value)


def _sni_entries(sni: Mapping[str, Any]) -> _SNIMap:
    if not isinstance(sni, Mapping):
        raise TypeError(f"sni must be a mapping of server name to (certfile, keyfile), got {type(sni).__name__}")
    entries: dict[str, tuple[str, str | None]] = {}
    given: dict[str, str] = {}  # normalised name -> as given, to name both of a duplicate
    for name, value in sni.items():
        key = _server_name_key(name)
        if not _NAME.fullmatch(key):
            raise ValueError(
                f"sni name {name!r} is not a DNS name (an internationalised name goes in its xn-- form; "
                "a wildcard only as '*.' before the rest)"
            )
        if key in given:
            raise ValueError(f"sni names {given[key]!r} and {name!r} are the same name {key!r}")
        given[key] = name
        certfile, keyfile = (value, None) if isinstance(value, (str, os.PathLike)) else _pair(name, value)
        entries[key] = (
            _path(f"sni[{name!r}] certfile", certfile),
            None if keyfile is None else _path(f"sni[{name!r}] keyfile", keyfile),
        )
    return _SNIMap(entries)


def _pair(name: str, value: object) -> tuple[object, object]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"sni[{name!r}] must be a certfile or a (certfile, keyfile) pair, got {value!r}")
    return value[0], value[1]


def _server_name_key(name: object) -> str:
    """How a server name is compared: without case or a trailing dot."""
    if not isinstance(name, str):
        raise TypeError(f"an sni name must be a str, got {type(name).__name__}")
    return name.lower().removesuffix(".")


def _alpn_protocols(alpn: Iterable[str]) -> tuple[str, ...]:
    if isinstance(alpn, (str, bytes)):  # a lone "h2" would otherwise become ("h", "2")
        raise TypeError(f"alpn must be a sequence of protocol names, got {alpn!r}")
    protocols = tuple(alpn)
    for protocol in protocols:
        if not isinstance(protocol, str) or not protocol.isascii() or not 0 < len(protocol) < 256:
            raise ValueError(f"an alpn protocol must be an ASCII str of 1 to 255 characters, got {protocol!r}")
    return protocols


# --- building a context -------------------------------------------------------


def build_context(config: TLSConfig) -> ssl.SSLContext:
    """A server context for ``config``: the stdlib's secure defaults, TLS 1.2
    at least, its certificates, client verification, ALPN, and an SNI
    callback that switches to the certificate of the name asked for.

    Raises ``TLSConfigError`` naming the file that cannot be loaded and why.
    """
    context = _context_with(config, config.certfile, config.keyfile)
    by_name = {
        name: _context_with(config, certfile, keyfile, f" (the certificate for SNI name {name!r})")
        for name, (certfile, keyfile) in config.sni.items()
    }
    context.sni_callback = _sni_callback(by_name)
    return context


def _context_with(config: TLSConfig, certfile: str, keyfile: str | None, what: str = "") -> ssl.SSLContext:
    """A context presenting ``certfile`` with ``config``'s other settings (the
    same for the default and every SNI context: OpenSSL takes ALPN from the
    context a connection switched to)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        _load_chain(context, certfile, keyfile, config.password)
        if config.client_ca is not None:
            _load_client_ca(context, config.client_ca)
    except TLSConfigError as error:
        if not what:
            raise
        raise TLSConfigError(f"{error}{what}") from error.__cause__
    context.verify_mode = CLIENT_CERT_MODES[config.client_cert]
    if config.alpn:
        context.set_alpn_protocols(list(config.alpn))
    return context


def _load_chain(context: ssl.SSLContext, certfile: str, keyfile: str | None, password: str | None) -> None:
    # Looking at the files first names the one at fault: OpenSSL says "PEM lib"
    # for a missing certificate, a missing key and a wrong password alike.
    if _CERT_MARKER not in _read(certfile):
        raise TLSConfigError(f"{certfile}: no PEM certificate in it ({_CERT_MARKER.decode()})")
    keypath = certfile if keyfile is None else keyfile
    if not _KEY_MARKER.search(_read(keypath)):
        hint = " (give keyfile= when the key is in a file of its own)" if keyfile is None else ""
        raise TLSConfigError(f"{keypath}: no PEM private key in it{hint}")
    asked = False

    def give_password() -> str:
        # Always a callback: without one, OpenSSL asks for the password of an
        # encrypted key on the terminal, and a server would hang there.
        nonlocal asked
        asked = True
        if password is None:
            raise TLSConfigError(f"{keypath}: the private key is encrypted and no password was given")
        return password

    try:
        context.load_cert_chain(certfile, keyfile, password=give_password)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"{keypath}: the private key does not match the certificate in {certfile}") from error
        if asked:
            raise TLSConfigError(f"{keypath}: cannot decrypt the private key: wrong password? ({error})") from error
        raise TLSConfigError(f"{certfile}: cannot load the certificate chain and key {keypath}: {error}") from error
    except OSError as error:  # the file changed between our look and OpenSSL's
        raise TLSConfigError(f"{error.filename or certfile}: cannot read it: {error.strerror}") from error


def _load_client_ca(context: ssl.SSLContext, cafile: str) -> None:
    try:
        context.load_verify_locations(cafile=cafile)
    except ssl.SSLError as error:
        if error.reason == "NO_CERTIFICATE_OR_CRL_FOUND":
            raise TLSConfigError(f"{cafile}: no PEM CA certificate in it") from error
        raise TLSConfigError(f"{cafile}: cannot load the CA certificates: {error}") from error
    except OSError as error:
        raise TLSConfigError(f"{cafile}: cannot read it: {error.strerror}") from error


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise TLSConfigError(f"{path}: cannot read it: {error.strerror}") from error


def _sni_callback(by_name: dict[str, ssl.SSLContext]) -> Callable[[Any, str | None, ssl.SSLContext], None]:
    def choose_certificate(ssl_obj: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
        # Runs inside OpenSSL's handshake: it must not raise (an exception here
        # aborts the handshake and goes to sys.unraisablehook).
        if server_name is None:
            return
        name = _server_name_key(server_name)
        setattr(ssl_obj, SERVER_NAME_ATTRIBUTE, name)
        chosen = _lookup(by_name, name)
        if chosen is not None:
            ssl_obj.context = chosen
        # An unknown name keeps the default certificate: the client decides
        # whether it will talk to that (it verifies the name, we do not).

    return choose_certificate


def _lookup(by_name: dict[str, ssl.SSLContext], name: str) -> ssl.SSLContext | None:
    exact = by_name.get(name)
    if exact is not None:
        return exact
    first, dot, rest = name.partition(".")
    return by_name.get("*." + rest) if first and dot else None


def _record_server_name(ssl_obj: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
    """The SNI callback put on a user's own context: records the name only."""
    if server_name is not None:
        setattr(ssl_obj, SERVER_NAME_ATTRIBUTE, _server_name_key(server_name))


# --- the current context, and reload -------------------------------------------


class TLSContextSource:
    """The context a server wraps its new connections with, reloaded from
    its files on ``reload()`` or, with ``TLSConfig.watch``, when they change.

    ``tls`` is a ``TLSConfig``, or an ``ssl.SSLContext`` used as given and
    never reloaded (it is the user's: we only warn, once, if it allows less
    than TLS 1.2, and give it an SNI callback recording the server name if it
    has none). A ``TLSConfig`` that cannot be loaded raises ``TLSConfigError``
    here, at start; a later reload that fails keeps the previous context.

    ``config`` is the ``TLSConfig``, or None for a user's own context.

    Thread-safe: ``context()`` and ``reload()`` may be called from any thread.
    A reload builds a new context object, so connections already wrapped keep
    the one they were wrapped with. ``clock`` is for tests (monotonic seconds).
    """

    def __init__(self, tls: TLSConfig | ssl.SSLContext, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = tls if isinstance(tls, TLSConfig) else None
        self._clock = clock
        self._lock = threading.Lock()  # one builder at a time; readers take self._context without it
        if isinstance(tls, TLSConfig):
            self._seen = _signatures(tls.files())
            self._context = build_context(tls)
        elif isinstance(tls, ssl.SSLContext):
            _check_user_context(tls)
            self._seen = ()
            self._context = tls
        else:
            raise TypeError(f"tls must be a sockserve.TLSConfig or an ssl.SSLContext, got {type(tls).__name__}")
        self._next_check = clock() + CHECK_INTERVAL
        self._reload_requested = False

    @property
    def handshake_timeout(self) -> float:
        """The configuration's, or its default for a user's own context."""
        return self.config.handshake_timeout if self.config is not None else DEFAULT_HANDSHAKE_TIMEOUT

    def context(self) -> ssl.SSLContext:
        """The context for a new connection; first, when watching and a second
        has passed, reloads it if a file changed (on this thread: no watcher
        thread to stop, and a server that gets no connections does no work)."""
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        elif self.config is not None and self.config.watch and self._clock() >= self._next_check:
            self._check_files(self.config)
        return self._context

    def request_reload(self) -> None:
        """Reload before the next connection is wrapped: what a signal handler
        may call (it only sets a flag; the reload, its file reads and its
        lock happen on the next connection's thread, never inside the
        handler, which could interrupt a thread holding that lock)."""
        self._reload_requested = True

    def reload(self) -> bool:
        """Builds a new context from the files. On success, new connections get
        it (one INFO line); on failure, the previous one is kept (one WARNING
        line saying which file and why). False too for a user's own context,
        which has no files to reload from."""
        if self.config is None:
            logger.info("not reloading TLS: the server was given an ssl.SSLContext, not files")
            return False
        with self._lock:
            return self._reload(self.config, _signatures(self.config.files()))

    def _check_files(self, config: TLSConfig) -> None:
        # Whoever finds the lock taken lets the holder check (or reload) and
        # goes on with the current context rather than wait for it.
        if not self._lock.acquire(blocking=False):
            return
        try:
            now = self._clock()
            if now < self._next_check:
                return  # another thread checked meanwhile
            self._next_check = now + CHECK_INTERVAL
            seen = _signatures(config.files())
            if seen != self._seen:
                self._reload(config, seen)
        finally:
            self._lock.release()

    def _reload(self, config: TLSConfig, seen: tuple[object, ...]) -> bool:
        # The files as they were before reading them: a change made while we
        # read is seen at the next check. A failed attempt remembers them too,
        # so a bad file is reported once, not every second, until it changes.
        self._seen = seen
        try:
            context = build_context(config)
        except TLSConfigError as error:
            logger.warning("keeping the previous TLS certificates: %s", error)
            return False
        self._context = context
        logger.info("reloaded the TLS certificates from %s", config.certfile)
        return True


def _signatures(paths: tuple[str, ...]) -> tuple[object, ...]:
    """What tells a changed file: its inode (a file replaced by a rename, or a
    symlink swapped, as Kubernetes does with secrets), size and mtime."""
    signatures: list[object] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            signatures.append(None)  # missing now: a change, and the reload will say why
        else:
            signatures.append((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(signatures)


def _check_user_context(context: ssl.SSLContext) -> None:
    if context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        # The ssl module refuses such a context for server sockets at every
        # connection; saying so once, at start, is kinder.
        raise TLSConfigError(
            "the ssl.SSLContext given is for clients (PROTOCOL_TLS_CLIENT); "
            "make a server one with ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)"
        )
    # MINIMUM_SUPPORTED is -2: below every real version, as it should compare.
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        logger.warning(
            "the ssl.SSLContext given allows TLS versions older than 1.2 (minimum_version=%s); "
            "sockserve uses it as given",
            context.minimum_version.name,
        )
    if context.sni_callback is None:
        context.sni_callback = _record_server_name


# --- what a handshake established ----------------------------------------------


class TLSInfo(FrozenValue):
    """What the TLS handshake of a connection established.

    Attributes:
        version: the protocol version, e.g. ``"TLSv1.3"``.
        cipher: the cipher suite's name.
        server_name: the name the client asked for (SNI), lower-cased and
            without a trailing dot (names are compared so), or None if it sent
            none (or the server's own ``ssl.SSLContext`` has an SNI callback
            of its own, which does not record it).
        peer_certificate: the client's verified certificate, as
            ``getpeercert()`` gives it, or None if it sent none.
        alpn_protocol: the application protocol agreed on, or None.
    """

    __slots__ = ("alpn_protocol", "cipher", "peer_certificate", "server_name", "version")
    _fields = ("version", "cipher", "server_name", "peer_certificate", "alpn_protocol")

    version: str
    cipher: str
    server_name: str | None
    peer_certificate: dict[str, Any] | None
    alpn_protocol: str | None

    def __init__(
        self,
        version: str,
        cipher: str,
        server_name: str | None = None,
        peer_certificate: dict[str, Any] | None = None,
        alpn_protocol: str | None = None,
    ) -> None:
        self._freeze(version, cipher, server_name, peer_certificate, alpn_protocol)

    def __hash__(self) -> int:
        # getpeercert()'s values are strings, numbers and tuples: hashable.
        certificate = None if self.peer_certificate is None else frozenset(self.peer_certificate.items())
        return hash((self.version, self.cipher, self.server_name, certificate, self.alpn_protocol))


def tls_info(ssl_obj: ssl.SSLSocket | ssl.SSLObject) -> TLSInfo:
    """The ``TLSInfo`` of a connection whose handshake has completed."""
    version = ssl_obj.version()
    cipher = ssl_obj.cipher()
    if version is None or cipher is None:
        raise ValueError("the TLS handshake has not completed")
    return TLSInfo(
        version=version,
        cipher=cipher[0],
        server_name=getattr(ssl_obj, SERVER_NAME_ATTRIBUTE, None),
        peer_certificate=ssl_obj.getpeercert() or None,
        alpn_protocol=ssl_obj.selected_alpn_protocol(),
    )
