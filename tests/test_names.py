"""sockserve's server classes are subclassed, by users and by the stdlib's own
servers (http.server, xmlrpc.server, wsgiref), which are then mixed with
ours: a name sockserve adds to a server (a private method, an instance
attribute) that one of those also defines silently replaces theirs. That
happened once (``_dispatch``, which broke every XML-RPC call); this test
keeps it from happening again."""

from __future__ import annotations

import http.server
import socketserver
import wsgiref.simple_server
import xmlrpc.server
from typing import Any

import pytest

import sockserve
from sockserve import aio

STDLIB_SERVER_FAMILY = [
    http.server.HTTPServer,
    http.server.ThreadingHTTPServer,
    xmlrpc.server.SimpleXMLRPCServer,
    xmlrpc.server.MultiPathXMLRPCServer,
    xmlrpc.server.DocXMLRPCServer,
    wsgiref.simple_server.WSGIServer,
]


def _socketservers_own_names() -> set[str]:
    """Every name the stdlib's socketserver gives a server, class or instance."""
    names = set(dir(socketserver.ThreadingMixIn)) | set(dir(socketserver.ForkingMixIn))
    names |= set(dir(socketserver.UDPServer)) | {"_threads", "active_children"}
    server = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler, bind_and_activate=False)
    try:
        return names | set(vars(server))
    finally:
        server.server_close()


def _names_of_the_stdlib_family() -> set[str]:
    """What the stdlib's servers define beyond socketserver: class names, and
    the instance attributes their constructors set."""
    base = _socketservers_own_names()
    names: set[str] = set()
    for cls in STDLIB_SERVER_FAMILY:
        names |= set(dir(cls)) - base
        server = cls(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler, bind_and_activate=False)
        try:
            names |= set(vars(server)) - base
        finally:
            server.server_close()
    return names


def _names_sockserve_adds(server: Any) -> set[str]:
    return (set(dir(server)) | set(vars(server))) - _socketservers_own_names()


@pytest.mark.parametrize(
    "make",
    [
        lambda: sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler),
        lambda: sockserve.ThreadingTCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler),
        lambda: sockserve.ForkingTCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler),
        lambda: sockserve.ThreadPoolUDPServer(("127.0.0.1", 0), sockserve.DatagramRequestHandler),
        lambda: aio.AsyncTCPServer(("127.0.0.1", 0), aio.AsyncStreamRequestHandler),
    ],
    ids=["pool", "threads", "fork", "udp-pool", "aio"],
)
def test_no_name_of_ours_shadows_one_of_the_stdlib_servers(make: Any) -> None:
    server = make()
    try:
        server._concurrency_model() if hasattr(server, "_concurrency_model") else server._admission()
        clashes = _names_sockserve_adds(server) & _names_of_the_stdlib_family()
    finally:
        server.server_close()
    assert not clashes, f"sockserve's servers define names that the stdlib's servers use too: {sorted(clashes)}"
