"""sockserve.ThreadPoolTCPServer in framed mode: a FramedRequestHandler.

The server's loop reads every connection and splits lines; only a complete
line goes to a pool worker (``handle_request``), and ``send()`` queues the
reply, which the loop writes without blocking.  So an idle or slow
connection holds no worker, and ``pool_max_workers`` bounds the requests
being handled, not the connections (issue 8).

``--max-workers N`` sets ``pool_max_workers`` (default 32 here, the issue's
target configuration, in every scenario); ``--idle-timeout S`` sets
``limits = sockserve.Limits(idle_timeout=S)``.  Skipped while sockserve has
no ``FramedRequestHandler``.
"""

from _common import limits_attrs, listen_address, option, serve_socketserver, skip, with_family

DEFAULT_MAX_WORKERS = 32

if __name__ == "__main__":
    try:
        import sockserve
    except ImportError as exc:
        skip(f"sockserve is not importable: {exc}")
    missing = [name for name in ("FramedRequestHandler", "ThreadPoolTCPServer") if not hasattr(sockserve, name)]
    if missing:
        skip(f"sockserve has no {', '.join(missing)} yet (the framed pool of issue 8)")

    class Echo(sockserve.FramedRequestHandler):  # type: ignore[misc,name-defined]
        """One instance per connection; each complete line comes back as it was."""

        def handle_request(self, request: bytes) -> None:
            self.send(request)

    family, _ = listen_address()
    serve_socketserver(
        with_family(
            sockserve.ThreadPoolTCPServer,
            family,
            pool_max_workers=option("--max-workers", DEFAULT_MAX_WORKERS),
            **limits_attrs(sockserve),
        ),
        Echo,
    )
