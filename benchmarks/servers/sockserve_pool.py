"""sockserve.ThreadPoolTCPServer (bounded pool of reused threads) + StreamRequestHandler.

``--max-workers N`` sets ``pool_max_workers`` (default: the class default,
128); ``--idle-timeout S`` sets ``limits = sockserve.Limits(idle_timeout=S)``
(the slow-client scenarios run it with 30, issue 8's "stock pool").  A
persistent connection holds its worker until the client closes, so the
1000-connection scenario runs with ``--max-workers 1024`` (see
``servers/__init__.py``); with 128 the other connections would wait in the
listen backlog, by design.
"""

from _common import limits_attrs, listen_address, make_line_echo_handler, option, serve_socketserver, skip, with_family

if __name__ == "__main__":
    try:
        import sockserve
    except ImportError as exc:
        skip(f"sockserve is not importable: {exc}")
    if not hasattr(sockserve, "ThreadPoolTCPServer"):
        skip("sockserve has no ThreadPoolTCPServer yet")
    family, _ = listen_address()
    cls = sockserve.ThreadPoolTCPServer
    max_workers = option("--max-workers", cls.pool_max_workers)
    serve_socketserver(
        with_family(cls, family, pool_max_workers=max_workers, **limits_attrs(sockserve)),
        make_line_echo_handler(sockserve.StreamRequestHandler),
    )
