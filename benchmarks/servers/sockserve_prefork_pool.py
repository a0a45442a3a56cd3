"""sockserve.prefork.Prefork with a sockserve.ThreadPoolTCPServer in each worker.

``--workers N`` (default 2) worker processes, each with its own pool of
``--max-workers M`` threads (default: the class default, 128);
``--idle-timeout S`` sets ``limits = sockserve.Limits(idle_timeout=S)``.
"""

from _common import limits_attrs, make_line_echo_handler, option, serve_prefork, skip

if __name__ == "__main__":
    try:
        import sockserve
        import sockserve.prefork
    except ImportError as exc:
        skip(f"sockserve.prefork is not importable: {exc}")
    cls = sockserve.ThreadPoolTCPServer
    max_workers = option("--max-workers", cls.pool_max_workers)
    serve_prefork(
        type(cls.__name__, (cls,), {"pool_max_workers": max_workers, **limits_attrs(sockserve)}),
        make_line_echo_handler(sockserve.StreamRequestHandler),
        workers=option("--workers", 2),
    )
