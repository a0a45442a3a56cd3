"""sockserve.prefork.Prefork with a sockserve.ThreadPoolTCPServer in each worker.

``--workers N`` (default 2) worker processes, each with its own pool of
``--max-workers M`` threads (default: the class default, 128).
"""

from _common import make_line_echo_handler, option, serve_prefork, skip

if __name__ == "__main__":
    try:
        import sockserve
        import sockserve.prefork
    except ImportError as exc:
        skip(f"sockserve.prefork is not importable: {exc}")
    cls = sockserve.ThreadPoolTCPServer
    max_workers = option("--max-workers", cls.pool_max_workers)
    serve_prefork(
        type(cls.__name__, (cls,), {"pool_max_workers": max_workers}),
        make_line_echo_handler(sockserve.StreamRequestHandler),
        workers=option("--workers", 2),
    )
