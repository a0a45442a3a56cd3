"""What ``sockserve serve`` does with its settings: import the handler, choose
the server class (one table: the handler's kind x the model x the bind's
type), check everything that can be checked without binding, then build the
servers, say where they listen, and run them until a signal stops them.

The settings themselves (reading, one-line errors) are ``_config``'s; the
argument parser is ``cli``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ._address import format_address
from ._bind_errors import why_bind_failed
from ._config import ConfigError, ServeSettings
from ._health import Health
from ._socket_activation import Bind, parse_bind

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import TypeVar

    from ._admin import AdminLoop, AdminServer
    from ._prometheus import MetricsSource
    from ._sd_notify import Notifier
    from ._socket_activation import InheritedSocket

    _Admin = TypeVar("_Admin", AdminServer, AdminLoop)

log = logging.getLogger("sockserve.serve")

# The signals serve_all() handles: stop (SIGTERM, SIGINT, SIGQUIT) and reload (SIGHUP).
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)

# --- the handler's kind -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a kind of handler runs on: its models (the first is the default)
    and the bind types it serves."""

    name: str  # how messages call it: "a StreamRequestHandler"
    models: tuple[str, ...]
    schemes: tuple[str, ...]


_BLOCKING = ("pool", "thread", "fork", "sequential")
# The default model is the first of each kind's list, what a production user should get:
# - a blocking handler runs on the pool: its threads are bounded and reused, where
#   "thread" starts a thread per connection without limit, "fork" a process per
#   connection, and "sequential" serves one client at a time;
# - a FramedRequestHandler runs only on the pool, in its framed mode;
# - an async handler runs only on the event loop.
KINDS = {
    "stream": Kind("a StreamRequestHandler", _BLOCKING, ("tcp", "unix")),
    "datagram": Kind("a DatagramRequestHandler", _BLOCKING, ("udp", "unixgram")),
    "base": Kind("a BaseRequestHandler", _BLOCKING, ("tcp", "unix", "udp", "unixgram")),
    "framed": Kind("a FramedRequestHandler", ("framed", "pool"), ("tcp", "unix")),
    "async_stream": Kind("an AsyncStreamRequestHandler", ("async",), ("tcp", "unix")),
    "async_callback": Kind("an AsyncProtocolHandler", ("async",), ("tcp", "unix")),
    "async_datagram": Kind("an async datagram handler", ("async",), ("udp", "unixgram")),
}

# (model, the bind's scheme) -> the server class, by name in sockserve or sockserve.aio.
# "framed" is the pool: ThreadPool* servers serve a FramedRequestHandler in framed mode.
SERVER_CLASSES = {
    ("sequential", "tcp"): "TCPServer",
    ("sequential", "unix"): "UnixStreamServer",
    ("sequential", "udp"): "UDPServer",
    ("sequential", "unixgram"): "UnixDatagramServer",
    ("thread", "tcp"): "ThreadingTCPServer",
    ("thread", "unix"): "ThreadingUnixStreamServer",
    ("thread", "udp"): "ThreadingUDPServer",
    ("thread", "unixgram"): "ThreadingUnixDatagramServer",
    ("pool", "tcp"): "ThreadPoolTCPServer",
    ("pool", "unix"): "ThreadPoolUnixStreamServer",
    ("pool", "udp"): "ThreadPoolUDPServer",
    ("pool", "unixgram"): "ThreadPoolUnixDatagramServer",
    ("framed", "tcp"): "ThreadPoolTCPServer",
    ("framed", "unix"): "ThreadPoolUnixStreamServer",
    ("fork", "tcp"): "ForkingTCPServer",
    ("fork", "unix"): "ForkingUnixStreamServer",
    ("fork", "udp"): "ForkingUDPServer",
    ("fork", "unixgram"): "ForkingUnixDatagramServer",
    ("async", "tcp"): "aio.AsyncTCPServer",
    ("async", "unix"): "aio.AsyncUnixStreamServer",
    ("async", "udp"): "aio.AsyncUDPServer",
    ("async", "unixgram"): "aio.AsyncUnixDatagramServer",
}

# A stream listener's accept queue: the stdlib's 5 (which the drop-in classes
# keep) overflows behind a load balancer; the pool's own default. The async
# servers keep their larger one.
BACKLOG = 1024


def handler_kind(handler: object) -> str:
    """The key in :data:`KINDS` of a handler class (any other callable is a
    stdlib-style handler, which may serve streams or datagrams)."""
    from ._framed import FramedRequestHandler
    from ._handlers import DatagramRequestHandler, StreamRequestHandler

    if not isinstance(handler, type):
        return "base"
    if issubclass(handler, FramedRequestHandler):
        return "framed"
    # An async handler's module imported sockserve.aio: if it is not loaded,
    # the handler is not async, and a blocking server does not pay for asyncio.
    aio = sys.modules.get("sockserve.aio")
    if aio is not None:
        if issubclass(handler, aio.AsyncStreamRequestHandler):
            return "async_stream"
        if issubclass(handler, aio.AsyncProtocolHandler):
            return "async_callback"
        if issubclass(handler, (aio.AsyncDatagramRequestHandler, aio.AsyncDatagramProtocolHandler)):
            return "async_datagram"
    if issubclass(handler, StreamRequestHandler):
        return "stream"
    if issubclass(handler, DatagramRequestHandler):
        return "datagram"
    return "base"


# --- the plan: what will run, checked without binding ----------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    settings: ServeSettings
    handler: Any
    kind: str
    model: str
    listeners: tuple[tuple[Bind, type[Any]], ...]  # each bind and its server class


def import_handler(settings: ServeSettings) -> Any:
    """The object ``handler`` names; one-line ``ConfigError`` if it cannot be had."""
    if settings.handler is None:
        raise ConfigError("no handler: give MODULE:ATTRIBUTE (e.g. sockserve serve myapp:Echo) or handler= in --config")
    module_name, _, attribute = settings.handler.partition(":")
    # As uvicorn and gunicorn do: the current directory's modules are importable
    # even when the console script (whose sys.path[0] is its own directory) runs.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise settings.error("handler", f"no module named {exc.name!r}") from None
        raise settings.error("handler", f"importing {module_name} failed: {_one_line(exc)}") from None
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        # The user's module failed: one line, where and why. SystemExit too (a
        # module that calls sys.exit(3) when imported exited 3 without a word),
        # and KeyboardInterrupt (a traceback): neither is this command's own.
        raise settings.error("handler", f"importing {module_name} failed: {_one_line(exc)}") from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise settings.error("handler", f"module {module_name} has no attribute {attribute!r}")
        value = getattr(value, part)
    if not _is_handler_class(value):
        # Any callable used to pass (os:system, app:Echo.__init__) and failed
        # at the first connection, or did something else entirely.
        raise settings.error(
            "handler",
            f"{settings.handler} is {_described(value)}, not a handler class (a subclass of sockserve's or "
            "socketserver's BaseRequestHandler, of FramedRequestHandler, or of a sockserve.aio handler)",
        )
    return value


def _is_handler_class(value: object) -> bool:
    """A class of a kind :data:`KINDS` knows: the stdlib's handlers (the
    drop-in servers take them), sockserve's, and the async ones."""
    import socketserver

    from ._framed import FramedRequestHandler
    from ._handlers import BaseRequestHandler

    if not isinstance(value, type):
        return False
    bases: tuple[type, ...] = (BaseRequestHandler, socketserver.BaseRequestHandler, FramedRequestHandler)
    aio = sys.modules.get("sockserve.aio")  # loaded if the handler's module is async
    if aio is not None:
        bases += (
            aio.AsyncStreamRequestHandler,
            aio.AsyncProtocolHandler,
            aio.AsyncDatagramRequestHandler,
            aio.AsyncDatagramProtocolHandler,
        )
    return issubclass(value, bases)


def _described(value: object) -> str:
    """What the handler setting names, in a few words: ``the class Thing``,
    ``the function Echo.__init__``, ``42``."""
    import inspect

    name = getattr(value, "__qualname__", None)
    if isinstance(value, type):
        return f"the class {name}"
    if inspect.isroutine(value) and isinstance(name, str):
        return f"the {'built-in ' if inspect.isbuiltin(value) else ''}function {name}"
    shown = repr(value)
    return shown if len(shown) <= 40 and "\n" not in shown else f"a {type(value).__name__}"


def _one_line(exc: BaseException) -> str:
    """``SyntaxError: invalid syntax (app.py, line 3)``; for other errors the
    innermost frame of the user's code is named too."""
    text = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None and not isinstance(exc, SyntaxError):
        text += f" ({tb.tb_frame.f_code.co_filename}, line {tb.tb_lineno})"
    return text


def make_plan(settings: ServeSettings) -> Plan:
    """Import the handler and choose each bind's server class, or raise a
    one-line ``ConfigError`` for a combination that cannot work."""
    handler = import_handler(settings)
    kind_key = handler_kind(handler)
    kind = KINDS[kind_key]
    name = str(getattr(handler, "__qualname__", settings.handler))
    model = settings.model or kind.models[0]
    if model not in kind.models:
        raise settings.error("model", _wrong_model(name, kind_key, kind, model))
    listeners = []
    for bind in settings.bind:
        if bind.scheme not in kind.schemes:
            serves = "datagrams (udp:// and unixgram:)" if "tcp" not in kind.schemes else "streams (tcp:// and unix:)"
            raise settings.error("bind", f"{bind}: {name} is {kind.name}, which serves {serves}")
        abstract = bind.path is not None and bind.path.startswith("@")
        if abstract and sys.platform != "linux":
            raise settings.error("bind", f"{bind}: abstract Unix socket names exist only on Linux")
        listeners.append((bind, _server_class(model, bind.scheme)))
    if model == "fork" and not hasattr(os, "fork"):
        raise settings.error("model", "fork needs os.fork(), which this platform lacks")
    datagram_binds = [bind for bind in settings.bind if bind.scheme in ("udp", "unixgram")]
    if settings.tls_cert is not None and datagram_binds:
        raise settings.error("tls_cert", f"TLS needs streams: {datagram_binds[0]} is datagrams (DTLS is not supported)")
    return Plan(settings, handler, kind_key, model, tuple(listeners))


def _wrong_model(name: str, kind_key: str, kind: Kind, model: str) -> str:
    if kind_key == "framed":
        return f"{name} is a FramedRequestHandler: it runs on the pool (model framed), not {model}"
    if kind_key.startswith("async"):
        return f"{name} is {kind.name}: it runs with model async, not {model}"
    if model == "framed":
        return f"model framed runs a FramedRequestHandler; {name} is {kind.name} (use model pool)"
    return f"{name} is {kind.name}, a blocking handler: it runs with model {', '.join(kind.models)}, not {model}"


def _server_class(model: str, scheme: str) -> type[Any]:
    """The class for ``model`` and ``scheme``, with the production settings
    the drop-in classes leave at the stdlib's (an accept queue of 5, no
    SO_REUSEADDR: a restart would wait for TIME_WAIT to pass)."""
    name = SERVER_CLASSES[(model, scheme)]
    if name.startswith("aio."):
        from . import aio

        base = getattr(aio, name[4:])
    else:
        import sockserve

        base = getattr(sockserve, name)
    if scheme in ("udp", "unixgram"):
        return base  # type: ignore[no-any-return]
    overrides = {
        "request_queue_size": max(BACKLOG, getattr(base, "request_queue_size", 0)),
        "allow_reuse_address": True,
    }
    return type(base.__name__, (base,), {"__module__": base.__module__, "__qualname__": base.__qualname__, **overrides})


# --- the rest of --check ------------------------------------------------------------


def server_options(settings: ServeSettings) -> dict[str, Any]:
    """The attributes every server gets (limits, TLS, PROXY, access list),
    built from the settings; a bad combination is a one-line ``ConfigError``."""
    from ._limits import Limits

    options: dict[str, Any] = {
        "limits": Limits(
            settings.max_connections,
            settings.max_connections_per_ip,
            settings.idle_timeout,
            settings.connection_timeout,
            settings.max_line,
        )
    }
    if settings.tls_cert is not None:
        options["tls"] = _tls_config(settings)
    elif settings.tls_key is not None or settings.tls_client_ca is not None or settings.tls_alpn:
        given = next(name for name in ("tls_key", "tls_client_ca", "tls_alpn") if getattr(settings, name))
        raise settings.error(given, "needs tls_cert (TLS is on only with a certificate)")
    if settings.proxy_trusted or settings.proxy_trust_unix:
        from ._proxy_stage import ProxyProtocol

        options["proxy_protocol"] = ProxyProtocol(
            settings.proxy_trusted,
            required=settings.proxy_required,
            timeout=settings.proxy_timeout,
            trust_unix=settings.proxy_trust_unix,
        )
    if settings.access_log:
        options["access_log"] = True  # read once, when serving starts
    if settings.access_log or settings.admin is not None:
        # The byte counters of /metrics (and the access log's bytes) come from a
        # TCP_INFO read as each connection closes, which a server makes only
        # when asked (it costs 5-8% of a connect-per-request connection, docs
        # "Metrics"): asked whenever something shows them, so no series reads
        # 0 while traffic flows.
        options["count_bytes"] = True
    if settings.allow or settings.deny:
        from ._access import AccessList

        options["access_list"] = AccessList(settings.allow, settings.deny)
    return options


def _tls_config(settings: ServeSettings) -> Any:
    from ._tls import TLSConfig, TLSConfigError, build_context

    try:
        config = TLSConfig(
            settings.tls_cert,  # type: ignore[arg-type]
            settings.tls_key,
            client_ca=settings.tls_client_ca,
            client_cert=settings.tls_client_cert,
            handshake_timeout=settings.tls_handshake_timeout,
            alpn=settings.tls_alpn,
        )
    except (TypeError, ValueError) as exc:  # client_cert without client_ca, a bad ALPN name
        setting = "tls_client_cert" if "client_cert" in str(exc) else "tls_alpn" if "alpn" in str(exc) else "tls_cert"
        raise settings.error(setting, str(exc)) from None
    try:
        build_context(config)  # loads every file now: a bad one is named before anything binds
    except TLSConfigError as exc:
        failed = "tls_client_ca" if settings.tls_client_ca and str(exc).startswith(settings.tls_client_ca) else None
        failed = failed or ("tls_key" if settings.tls_key and str(exc).startswith(settings.tls_key) else "tls_cert")
        raise settings.error(failed, str(exc)) from None
    return config


def check_principals(settings: ServeSettings) -> None:
    """The user and group exist (a number need not: a container may run ids
    that /etc/passwd does not list)."""
    if settings.user is None and settings.group is None:
        return
    from ._privileges import PrivilegeError, resolve_identity

    try:
        resolve_identity(settings.user, settings.group)
    except PrivilegeError as exc:
        raise settings.error("user" if settings.user is not None else "group", str(exc)) from None


# Settings whose part is not built yet: refusing them is better than starting
# without a privilege drop or a health endpoint the user asked for.
NOT_YET: dict[str, str] = {}


def check_available(settings: ServeSettings) -> None:
    defaults = ServeSettings()
    for name, part in NOT_YET.items():
        if getattr(settings, name) != getattr(defaults, name):
            raise settings.error(name, f"{part} is not available in this version of sockserve yet")


def check(settings: ServeSettings) -> tuple[Plan, dict[str, Any]]:
    """Everything that can be checked without binding; raises ``ConfigError``."""
    check_available(settings)
    plan = make_plan(settings)
    options = server_options(settings)
    check_principals(settings)
    return plan, options


def check_notes(plan: Plan) -> dict[str, str]:
    """The comments ``--check`` prints beside the settings it chose or derived."""
    handler = getattr(plan.handler, "__qualname__", plan.settings.handler)
    notes = {"handler": f"{handler}: {KINDS[plan.kind].name}"}
    if plan.settings.model is None:
        notes["model"] = f"the default for {KINDS[plan.kind].name}"
    notes["bind"] = ", ".join(f"{bind}: {cls.__name__}" for bind, cls in plan.listeners)
    if plan.settings.workers > 1:
        notes["workers"] = "prefork: a supervisor and its workers"
    return notes


# --- running -----------------------------------------------------------------------


def url_of(scheme: str, address: Any) -> str:
    """A listener's address as the URL a --bind would give: tcp://[::1]:9000, unix:/run/app.sock, unix:@name."""
    separator = ":" if scheme in ("unix", "unixgram") else "://"
    return f"{scheme}{separator}{format_address(address)}"


def run(plan: Plan, options: dict[str, Any]) -> int:
    """Bind, write the pid file, drop privileges, serve until a signal, stop;
    the exit status (1: something outside the settings failed, in one line)."""
    settings = plan.settings
    if settings.workers > 1:
        return _run_prefork(plan, options)
    inherited = inherited_for(settings)
    servers = []
    # Blocked from before the start-up lines until serve_all() has its handlers
    # in place (it unblocks them): a SIGTERM sent as soon as a line says
    # "serving" stops the server gracefully instead of killing it.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        for bind, server_class in plan.listeners:
            passed = inherited.get(bind)
            if passed is not None:
                from ._adopt import adopt

                # Never bound nor listened on again; a Unix path stays the manager's.
                server = adopt(server_class, passed.socket, plan.handler)
            else:
                try:
                    server = server_class(bind.address, plan.handler)
                except OSError as exc:
                    _cannot_listen(bind, exc)
                    return 1
            servers.append(server)
            _configure(server, options)
        with contextlib.ExitStack() as stack:
            health = Health()
            admin = None
            if settings.admin is not None:
                from ._admin import AdminServer

                admin = _admin_listener(settings.admin, health, _listener_metrics(plan, servers), AdminServer)
                if admin is None:
                    return 1
                stack.callback(admin.close)
            if not _after_binding(settings, stack):
                return 1
            for (bind, _), server in zip(plan.listeners, servers, strict=True):
                url = url_of(bind.scheme, server.server_address)
                passed = inherited.get(bind)
                log.info(
                    "serving %s (model %s, 1 process, pid %d%s)",
                    url,
                    plan.model,
                    os.getpid(),
                    _inherited_note(passed),
                    extra={"listener": url, "model": plan.model, "workers": 1},
                )
            if admin is not None:
                admin.start()
                log.info("admin listener on %s: /healthz /readyz /metrics", _admin_url(admin.server_address))
            reports = _serve_with_systemd(servers, plan, stack, health)
    finally:
        for server in servers:
            server.server_close()  # serve_all() closed them already, unless binding or the pid file failed
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    in_flight = sum(report.in_flight for report in reports)
    forced = sum(report.forced for report in reports)
    log.info("stopped (%d connection(s) in flight, %d closed early)", in_flight, forced)
    return 0


def _inherited_note(passed: InheritedSocket | None) -> str:
    """The start-up line's note on a socket passed by a service manager (or
    by --reload's parent): its descriptor and its name, unless the name is
    sd_listen_fds' "unknown", meaning it has none (the line names the address)."""
    if passed is None:
        return ""
    return f"; inherited fd {passed.fd}" + ("" if passed.name == "unknown" else f" {passed.name!r}")


def _admin_listener(
    address: str, health: Health, metrics: MetricsSource | None, listener_class: type[_Admin]
) -> _Admin | None:
    """The admin listener, bound (before the privilege drop, as the servers
    are); None if it cannot listen, said in one line. ``listener_class``:
    ``AdminServer`` (threads of its own) or ``AdminLoop`` (served by the
    prefork supervisor's loop)."""
    bind = parse_bind(address if address.startswith("unix:") else f"tcp://{address}")
    try:
        return listener_class(bind.address, health, metrics)
    except OSError as exc:
        _cannot_listen(bind, exc, what="the admin listener")
        return None


def _listener_metrics(plan: Plan, servers: list[Any]) -> MetricsSource:
    """/metrics in one process: each listener's snapshot under its URL, read at each scrape."""
    urls = [
        url_of(bind.scheme, server.server_address) for (bind, _), server in zip(plan.listeners, servers, strict=True)
    ]
    return lambda: {url: server.metrics.snapshot() for url, server in zip(urls, servers, strict=True)}


def _admin_url(address: Any) -> str:
    # An abstract Unix name comes back from the socket as bytes: only a
    # tuple is TCP.
    return "http://" + format_address(address) if isinstance(address, tuple) else "http+unix:" + format_address(address)


def inherited_for(settings: ServeSettings) -> dict[Bind, InheritedSocket]:
    """The sockets a service manager (systemd, or ``--reload``'s parent) passed,
    each paired with the bind it serves (by ``?name=``, by address, then in
    order); empty when none were passed. A mismatch is a one-line ``ConfigError``."""
    from ._socket_activation import SocketActivationError, inherited_sockets, match_binds

    try:
        passed = inherited_sockets()
        return match_binds(settings.bind, passed) if passed else {}
    except SocketActivationError as exc:
        raise ConfigError(f"socket activation: {exc}") from None


def _after_binding(settings: ServeSettings, stack: contextlib.ExitStack) -> bool:
    """What must wait until the sockets are bound: the pid file (so that it
    names a process that serves), then the privilege drop (binding a port
    below 1024 or a path in /run needed the privileges). False: it failed,
    said in one line."""
    if settings.pid_file is not None:
        from ._pidfile import PidFile, PidFileError

        try:
            stack.enter_context(PidFile(settings.pid_file))
        except PidFileError as exc:
            log.error("%s", exc)
            return False
    if settings.user is not None or settings.group is not None or settings.umask is not None:
        from ._privileges import PrivilegeError, drop_privileges

        try:
            drop_privileges(settings.user, settings.group, settings.umask)
        except PrivilegeError as exc:
            log.error("%s", exc)
            return False
    return True


def _serve_with_systemd(servers: list[Any], plan: Plan, stack: contextlib.ExitStack, health: Health) -> list[Any]:
    """serve_all() with the health state and systemd's notifications:
    READY=1 and a STATUS once every listener serves (and after a reload),
    RELOADING=1 on SIGHUP, STOPPING=1 when the stop begins, and WATCHDOG=1
    pings while the process is live, when systemd asks for them."""
    from ._sd_notify import Notifier, Watchdog
    from ._serve import serve_all

    settings = plan.settings
    # strict=False: a malformed NOTIFY_SOCKET or WATCHDOG_USEC is one warning,
    # and the server serves on without notifying (or without the watchdog).
    notifier = stack.enter_context(Notifier.from_environment(strict=False))
    watchdog = stack.enter_context(Watchdog(notifier, healthy=lambda: health.live))
    del watchdog  # stopped when the stack closes
    status = f"serving {len(servers)} listener(s), model {plan.model}"
    has_tls = any(getattr(server, "tls", None) is not None for server in servers)

    def ready() -> None:
        log.info("ready: %s", status)  # /readyz answers 200 from now on
        notifier.ready(status)

    def reloading() -> None:
        # SIGHUP: the servers with TLS reload their certificates right after this;
        # the handler's code is not reloaded in one process (prefork's SIGHUP does that).
        log.info("SIGHUP: %s", "reloading the TLS certificates" if has_tls else "nothing to reload without TLS")
        notifier.reloading()

    def stopping() -> None:
        notifier.stopping()

    return serve_all(
        servers,
        unblock=SIGNALS,
        grace=settings.grace,
        health=health,
        drain_delay=settings.drain_delay,
        on_ready=ready,
        on_stopping=stopping,
        on_reloading=reloading,
    )


def _configure(server: Any, options: dict[str, Any]) -> None:
    for name, value in options.items():
        setattr(server, name, value)


def _run_prefork(plan: Plan, options: dict[str, Any]) -> int:
    """``--workers N``: a prefork supervisor serving every bind (or the sockets
    it inherited) in each worker, telling systemd when the workers serve."""
    # Blocked from the start, as in one process, until the supervisor's
    # handlers are in place (run() unblocks them): a SIGTERM that comes while
    # it binds, drops privileges or forks stops it gracefully instead of
    # killing it with its workers orphaned.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        return _supervise(plan, options)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _supervise(plan: Plan, options: dict[str, Any]) -> int:
    from ._sd_notify import Notifier
    from .prefork import Prefork

    settings = plan.settings
    inherited = inherited_for(settings)
    listeners = [
        (server_class, inherited[bind].socket if bind in inherited else bind.address, plan.handler)
        for bind, server_class in plan.listeners
    ]
    status = f"serving {len(listeners)} listener(s), model {plan.model}, {settings.workers} workers"
    with contextlib.ExitStack() as stack:
        notifier = stack.enter_context(Notifier.from_environment(strict=False))  # bad variables: one warning
        health = Health()

        started: list[bool] = []

        def ready() -> None:  # the first generation serves, or a reload's new one does
            if not started:
                # The start-up lines once the supervisor handles signals (run()
                # installs its handlers): a SIGTERM sent on seeing them stops it
                # gracefully, never with the default action.
                started.append(True)
                for (bind, _), address in zip(plan.listeners, supervisor.server_addresses, strict=True):
                    passed = inherited.get(bind)
                    log.info(
                        "serving %s (model %s, %d workers, supervisor pid %d%s)",
                        url_of(bind.scheme, address),
                        plan.model,
                        settings.workers,
                        os.getpid(),
                        _inherited_note(passed),
                    )
            log.info("ready: %s", status)
            health.set_ready()
            notifier.ready(status)

        def reloading() -> None:
            log.info("SIGHUP: starting a new generation of workers")
            notifier.reloading()

        def stopping() -> None:
            health.start_drain()
            notifier.stopping()

        supervisor = Prefork(
            listeners=listeners,
            workers=settings.workers,
            grace=settings.grace,
            drain_delay=settings.drain_delay,
            configure=lambda server: _configure(server, options),
            on_ready=ready,
            on_reloading=reloading,
            on_stopping=stopping,
        )
        interval = notifier.watchdog_interval()
        if interval is not None:
            # Pinged by the supervisor's loop, not by the Watchdog thread: no
            # thread runs while it forks, and a loop that stops turning stops
            # the pings (the workers have their own checks).
            supervisor.services.append(_WatchdogPings(notifier, interval))
        stack.callback(health.set_stopped)
        try:
            supervisor.bind()
        except OSError as exc:
            supervisor.close()
            _cannot_listen(plan.listeners[supervisor.bind_failed or 0][0], exc)
            return 1
        admin = None
        if settings.admin is not None:
            # In the supervisor, with every worker's counts added up, served
            # by its own loop: no thread runs while it forks the workers (a
            # lock a thread held at a fork would stay held in the worker),
            # and each worker closes its copies of the admin sockets at once.
            from ._admin import AdminLoop

            admin = _admin_listener(settings.admin, health, supervisor.metrics_snapshot, AdminLoop)
            if admin is None:
                supervisor.close()
                return 1
            stack.callback(admin.close)
            supervisor.services.append(admin)
        if not _after_binding(settings, stack):
            supervisor.close()
            return 1
        if admin is not None:
            admin.start()
            log.info("admin listener on %s: /healthz /readyz /metrics", _admin_url(admin.server_address))
        return supervisor.run(unblock=SIGNALS)


class _WatchdogPings:
    """``WATCHDOG=1`` every ``interval`` seconds, from the prefork supervisor's
    loop (a ``LoopService`` with no descriptor): the first at once."""

    def __init__(self, notifier: Notifier, interval: float) -> None:
        self._notifier = notifier
        self._interval = interval
        self._next = 0.0

    def poll_fds(self) -> list[tuple[int, int]]:
        return []

    def timeout(self, now: float) -> float | None:
        return max(0.0, self._next - now)

    def serve(self, now: float) -> None:
        if now >= self._next:
            self._notifier.watchdog_ping()
            # The next one an interval after this one: a late ping is followed by
            # a normal spacing, not by a burst.
            self._next = now + self._interval

    def close_in_child(self) -> None:
        pass  # the notifier is the supervisor's; a worker never sends through it


def _cannot_listen(bind: Bind, exc: OSError, what: str = "") -> None:

    kind = "unix" if bind.scheme in ("unix", "unixgram") else "tcp"
    log.error("cannot listen on %s%s: %s", bind, f" ({what})" if what else "", why_bind_failed(kind, bind.address, exc))


def serve_command(settings: ServeSettings, argv: Sequence[str] = (), *, check_only: bool, out: Any = None) -> int:
    """``sockserve serve`` once its settings are read: check, then print them or run."""
    plan, options = check(settings)
    if check_only:
        from ._config import to_toml

        sources = sorted(set(settings.sources.values()) - {"argument"})
        origin = ", ".join(source for source in sources if not source.startswith("--"))
        header = (
            "# sockserve serve: the effective settings (flags over "
            + (origin or "no config file")
            + " over the defaults); every check passed\n"
        )
        effective = dataclasses.replace(settings, model=plan.model)
        print(header + to_toml(effective, check_notes(plan)), end="", file=out or sys.stdout)
        return 0
    if settings.reload:
        return run_reloading(plan, argv)
    return run(plan, options)


def run_reloading(plan: Plan, argv: Sequence[str]) -> int:
    """``--reload``: bind every listener here, once, and run the server as a
    child process given them as inherited sockets; a new child when a ``.py``
    file under the current directory changes (``_reloader``). Connections
    that come during a restart wait in the accept queue: none is refused."""
    from ._reloader import run_with_reload

    holders = []
    try:
        for bind, _ in plan.listeners:
            # A sequential server only binds (no thread: run_with_reload forks);
            # it gives the same errors as a real start, and removes its Unix file at the end.
            try:
                holders.append(_server_class("sequential", bind.scheme)(bind.address, _bind_only))
            except OSError as exc:
                _cannot_listen(bind, exc)
                return 1
        for (bind, _), holder in zip(plan.listeners, holders, strict=True):
            log.info("reload: holding %s for the server processes", url_of(bind.scheme, holder.server_address))
        child = [sys.executable, "-m", "sockserve", "serve", *argv, "--no-reload"]
        return run_with_reload(
            child,
            [os.getcwd()],
            sockets=[holder.socket for holder in holders],
            names=[bind.name or "unknown" for bind, _ in plan.listeners],
        )
    finally:
        for holder in holders:
            holder.server_close()


def _bind_only(request: Any, client_address: Any, server: Any) -> None:
    raise AssertionError("the --reload parent serves nothing")  # its sockets are the children's


__all__: Sequence[str] = [
    "KINDS",
    "SERVER_CLASSES",
    "Plan",
    "check",
    "handler_kind",
    "make_plan",
    "run",
    "serve_command",
]
