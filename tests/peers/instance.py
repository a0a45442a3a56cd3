"""One sockserve instance in its own process, as a user deploys it behind a
load balancer: a server (``--model``: ``ThreadPoolTCPServer``, the default,
``ThreadingTCPServer`` or ``sockserve.aio.AsyncTCPServer``) honouring PROXY
headers from 127.0.0.1, run by ``sockserve.serve()``, so SIGTERM drains it.

Each connection is one request: a line in, one line out, then the server
closes. The answer names the instance and the client as the handler saw it::

    <name> <pid> <client host> <client port> <the request line>

after ``--delay`` seconds in the handler, so that some requests are in flight
when a drain starts.

Run as ``python instance.py --name a --port 0``. Once listening it prints
``listening <port>`` on stdout; when ``serve()`` returns, ``drained
<in_flight> <forced>``. sockserve's log goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import sockserve
from sockserve import aio


class Handler(sockserve.StreamRequestHandler):
    name = ""
    delay = 0.0

    def handle(self) -> None:
        line = self.rfile.readline()
        if not line.endswith(b"\n"):
            return  # a health check's connection, or a client that left
        # The handler's work; time.sleep, not an event: this is the workload.
        time.sleep(self.delay)
        host, port = self.client_address[0], self.client_address[1]
        self.wfile.write(f"{self.name} {os.getpid()} {host} {port} ".encode() + line)


class AsyncHandler(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        line = await self.reader.readline()
        if not line.endswith(b"\n"):
            return
        await asyncio.sleep(Handler.delay)
        host, port = self.client_address[0], self.client_address[1]
        await self.writer.write(f"{Handler.name} {os.getpid()} {host} {port} ".encode() + line)


# Each with SO_REUSEADDR (the pool and the async server set it; the drop-in
# ThreadingTCPServer does not): the restarted instance binds its port again
# while the connections it closed are in TIME_WAIT. The threaded one keeps the
# stdlib's listen backlog of 5.
MODELS: dict[str, Callable[[int], Any]] = {
    "pool": lambda port: sockserve.ThreadPoolTCPServer(("127.0.0.1", port), Handler),
    "threads": lambda port: type("Server", (sockserve.ThreadingTCPServer,), {"allow_reuse_address": True})(
        ("127.0.0.1", port), Handler
    ),
    "async": lambda port: aio.AsyncTCPServer(("127.0.0.1", port), AsyncHandler),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--model", choices=sorted(MODELS), default="pool")
    parser.add_argument("--trusted", default="127.0.0.1/32", help="PROXY from these; '' for no PROXY protocol")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    Handler.name, Handler.delay = args.name, args.delay
    # Blocked until serve() has its handlers in place: a SIGTERM sent as soon
    # as "listening" is read must drain the server, not kill the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = MODELS[args.model](args.port)
    if args.trusted:
        server.proxy_protocol = sockserve.ProxyProtocol(trusted=[args.trusted])
    print(f"listening {server.server_address[1]}", flush=True)
    report = sockserve.serve(server, grace=args.grace, unblock=(signal.SIGTERM, signal.SIGINT))
    print(f"drained {report.in_flight} {report.forced}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
