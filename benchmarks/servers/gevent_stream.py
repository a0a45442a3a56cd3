"""gevent's StreamServer, echoing lines as gevent's own echo example does.

A greenlet per connection reading lines from ``socket.makefile("rb")`` and
writing each back with ``sendall``: what a user of gevent writes (gevent's
defaults kept: backlog 256, no pool, so no limit on connections).  Skipped
if gevent is not importable (``pip install gevent``).
"""

from __future__ import annotations

import signal
from typing import Any

from _common import listen_address, ready, report_exit, skip


def handle(sock: Any, address: Any) -> None:
    rfile = sock.makefile("rb")
    try:
        while line := rfile.readline():
            sock.sendall(line)
    finally:
        rfile.close()


def main() -> None:
    try:
        import gevent
        from gevent.server import StreamServer
    except ImportError as exc:
        skip(f"gevent is not importable ({exc}); pip install gevent to include it")
    family, address = listen_address()
    server = StreamServer(address, handle)
    if server.family != family:  # a literal "::1" already makes gevent listen on IPv6
        raise SystemExit(f"gevent listens on {server.family!r} for {address!r}, not {family!r}")
    server.start()
    # stop() closes the listener and gives the handlers stop_timeout (1 s) to finish
    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    ready(server.address[1])
    server.serve_forever()
    report_exit(gevent=gevent.__version__)


if __name__ == "__main__":
    main()
