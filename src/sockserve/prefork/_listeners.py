"""What the workers serve: one ``Listener`` per address or inherited socket,
and where its server is made (in the supervisor, shared by every worker, or
in each worker with SO_REUSEPORT).

Three ways a listener gets its socket:

* bound by the supervisor, inherited by every worker through ``fork()``;
* inherited by the supervisor itself (systemd's socket activation, a
  reloader): adopted as it is (``sockserve._adopt``), never bound or listened
  on again, its Unix path never unlinked; the workers inherit it the same way;
* SO_REUSEPORT: each worker binds its own, the supervisor only holds the port
  (``_reserve``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from ._reserve import Endpoint, check_reuse_port, reserve

Configure = Callable[[Any], None]
ListenerSpec = tuple[type[Any], Any, Any]  # (server class, address or socket, handler class)


class Listener:
    """One thing every worker serves: a server class, a handler, and where."""

    def __init__(self, server_class: type[Any], target: Any, handler_class: Any, reuse_port: bool) -> None:
        self.server_class = server_class
        self.handler_class = handler_class
        self.inherited: socket.socket | None = target if isinstance(target, socket.socket) else None
        self.address: Any = None if self.inherited is not None else target
        self.reuse_port = reuse_port
        self.server: Any = None  # made in the supervisor (shared) and inherited by the workers
        self.reserved: socket.socket | None = None  # holds the port (SO_REUSEPORT mode)
        if self.inherited is not None:
            if reuse_port:
                raise ValueError(
                    "reuse_port=True cannot serve an inherited socket: every worker shares the one it was given"
                )
            self.worker_class = server_class  # never binds: the class is used as it is
            return
        endpoint = Endpoint.of(server_class, target)
        if reuse_port:
            check_reuse_port(endpoint)
        self.endpoint = endpoint
        self.worker_class = _worker_server_class(server_class, endpoint, reuse_port)

    @property
    def shared(self) -> bool:
        """The workers share the supervisor's socket (not SO_REUSEPORT)."""
        return not self.reuse_port

    def bind(self, configure: Configure | None) -> None:
        """In the supervisor, before the first fork: bind, adopt or reserve."""
        if self.server is not None or self.reserved is not None:
            return
        if self.inherited is not None:
            from .._adopt import adopt  # here: a supervisor that binds its own sockets never loads it

            self.server = adopt(self.worker_class, self.inherited, self.handler_class)
            self.address = self.server.server_address
            if configure is not None:
                configure(self.server)
        elif self.shared:
            self.server = self.new_server(self.address, configure)
            self.address = self.server.server_address
        else:
            self.reserved, self.address = reserve(Endpoint.of(self.server_class, self.address))

    def new_server(self, address: Any, configure: Configure | None) -> Any:
        server = self.worker_class(address, self.handler_class)
        if configure is not None:
            configure(server)
        return server

    def server_in_worker(self, configure: Configure | None) -> Any:
        """In a worker just forked: the supervisor's server, or one of its own (SO_REUSEPORT)."""
        if self.shared:
            return self.server
        if self.reserved is not None:
            self.reserved.close()
            self.reserved = None
        return self.new_server(self.address, configure)

    def stop_listening(self) -> None:
        """The supervisor refuses new connections from now on (its copy of the socket)."""
        if self.server is not None:
            self.server.socket.close()
        if self.reserved is not None:
            self.reserved.close()

    def close(self) -> None:
        """The supervisor's last word: close the socket, remove a Unix socket
        file it bound (never an inherited one: adopt() claimed no file)."""
        if self.server is not None:
            self.server.server_close()
        elif self.inherited is not None:
            self.inherited.close()  # given to the supervisor, which owns it, and never adopted
        if self.reserved is not None:
            self.reserved.close()


def plan_listeners(
    server_class: type[Any] | None,
    server_address: Any,
    handler_class: Any,
    listeners: Sequence[ListenerSpec] | None,
    sockets: Sequence[socket.socket] | None,
    reuse_port: bool,
) -> list[Listener]:
    """The listeners a ``Prefork`` was asked for, checked (ValueError, TypeError)."""
    if listeners is not None:
        if server_class is not None or server_address is not None or handler_class is not None:
            raise TypeError("Prefork: give either server_class, server_address, handler_class or listeners=, not both")
        if sockets is not None:
            raise TypeError("Prefork: listeners= names each listener's socket itself; sockets= goes with server_class")
        specs = [tuple(spec) for spec in listeners]
        for spec in specs:
            if len(spec) != 3:
                raise TypeError(
                    f"Prefork: a listener is (server_class, address or socket, handler_class), got {spec!r}"
                )
    else:
        if server_class is None or handler_class is None:
            raise TypeError("Prefork needs server_class and handler_class (or listeners=)")
        if sockets is not None:
            # Inherited sockets instead of binding server_address: one listener each.
            specs = [(server_class, sock, handler_class) for sock in sockets]
        elif server_address is None:
            raise TypeError("Prefork needs server_address (or sockets= to serve inherited ones)")
        else:
            specs = [(server_class, server_address, handler_class)]
    if not specs:
        raise ValueError("Prefork: nothing to serve (no listener, or sockets= is empty)")
    return [Listener(cls, target, handler, reuse_port) for cls, target, handler in specs]


def _worker_server_class(server_class: type[Any], endpoint: Endpoint, reuse_port: bool) -> type[Any]:
    """The class the supervisor makes its servers with: ``server_class`` with
    ``allow_reuse_address`` for a stream server (a restarted supervisor binds
    again at once while connections of the previous one are in TIME_WAIT) and
    ``allow_reuse_port`` in SO_REUSEPORT mode. Datagram servers keep the
    class's ``allow_reuse_address``: with SO_REUSEADDR two UDP servers can
    bind the same port and silently split its datagrams. The user's class is
    left as it is."""
    overrides: dict[str, Any] = {}
    if endpoint.is_stream and not getattr(server_class, "allow_reuse_address", False):
        overrides["allow_reuse_address"] = True
    if reuse_port and not getattr(server_class, "allow_reuse_port", False):
        overrides["allow_reuse_port"] = True
    if not overrides:
        return server_class
    names = {"__module__": server_class.__module__, "__qualname__": server_class.__qualname__}
    return type(server_class.__name__, (server_class,), {**names, **overrides})
