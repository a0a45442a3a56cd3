"""sockserve.ThreadingTCPServer with sockserve.StreamRequestHandler.

Same API as the stdlib; skipped (with the reason) while the package is not
importable.  The runner puts the repository's src/ on PYTHONPATH.
"""

from _common import make_line_echo_handler, serve_socketserver, skip

if __name__ == "__main__":
    try:
        import sockserve
    except ImportError as exc:
        skip(f"sockserve is not importable: {exc}")
    missing = [name for name in ("ThreadingTCPServer", "StreamRequestHandler") if not hasattr(sockserve, name)]
    if missing:
        skip(f"sockserve has no {', '.join(missing)} yet")
    serve_socketserver(
        sockserve.ThreadingTCPServer,
        make_line_echo_handler(sockserve.StreamRequestHandler),
    )
