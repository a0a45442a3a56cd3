"""Runs one matrix server in a process of its own, for the kinds that fork:
a forked child inherits every descriptor of its parent, and a child of the
test process would hold the test's own client sockets open, so that its
handler would wait forever for an end of input that only it could give.

``python -m tests.matrix.server_runner KIND FAMILY ADDRESS LOG OPTIONS``
prints ``READY <address as JSON>``, then obeys lines on stdin: ``stop`` (a
graceful stop in the background; prints ``REPORT <json>`` when done),
``force`` (force_stop()), ``settle`` (prints ``SETTLED`` once no connection
is counted in flight, its children reaped).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading

from ..helpers import wait_until
from .kinds import Options, server_class


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main() -> int:
    kind, family, address_json, log_path, options_json = sys.argv[1:6]
    options = Options.from_json(options_json)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("sockserve")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    address = json.loads(address_json)
    cls, handler_class = server_class(kind, family, options)
    server = cls(address if isinstance(address, str) else tuple(address), handler_class)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    say("READY " + json.dumps(server.server_address))
    stopper: threading.Thread | None = None

    def stop() -> None:
        report = server.stop(options.grace)
        say("REPORT " + json.dumps({"in_flight": report.in_flight, "forced": report.forced, "seconds": report.seconds}))

    def settled() -> bool:
        model = getattr(server, "_concurrency", None)
        if model is not None and hasattr(model, "reap"):
            model.reap()
        return not server._in_flight_count()

    for line in sys.stdin:
        command = line.strip()
        if command == "stop" and stopper is None:
            stopper = threading.Thread(target=stop)
            stopper.start()
        elif command == "force":
            server.force_stop()
        elif command == "settle":
            say("SETTLED" if wait_until(settled) else "UNSETTLED")
    if stopper is None:
        server.shutdown()
        server.server_close()
    else:
        stopper.join()
    serving.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
