"""sockserve.prefork.Prefork with the synchronous sockserve.TCPServer in each worker.

``--workers N`` (default 2, the cores of the benchmark machine).  Each worker
serves one connection at a time, so a persistent connection occupies a whole
worker: this model is for short requests (connect_20), and holds only N
connections in the persistent-connection scenarios.  Pinned by the runner,
the supervisor and every worker share the server's one core.
"""

from _common import make_line_echo_handler, option, serve_prefork, skip

if __name__ == "__main__":
    try:
        import sockserve
        import sockserve.prefork
    except ImportError as exc:
        skip(f"sockserve.prefork is not importable: {exc}")
    serve_prefork(
        sockserve.TCPServer,
        make_line_echo_handler(sockserve.StreamRequestHandler),
        workers=option("--workers", 2),
    )
