"""Runs the matrix's prefork kind: a real supervisor with one worker, serving
the matrix's handler with the test's options. Started by ``kinds.py`` as
``python -m tests.matrix.prefork_runner CONFIG OPTIONS`` from the repository.
It prints ``READY <address as JSON>`` once bound, and logs to the test's file.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from sockserve.prefork import Prefork, RestartPolicy

from .kinds import Options, server_class


def main() -> int:
    config = json.loads(sys.argv[1])
    options = Options.from_json(sys.argv[2])
    handler = logging.FileHandler(config["log"])
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("sockserve")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    cls, handler_class = server_class(config["kind"], config["family"], options)
    address = config["address"] if isinstance(config["address"], str) else tuple(config["address"])
    supervisor = Prefork(
        cls,
        address,
        handler_class,
        workers=1,
        grace=options.grace,
        restart_policy=RestartPolicy(initial=0.1, maximum=1.0, stable_after=1.0),
    )
    supervisor.bind()
    os.write(1, b"READY " + json.dumps(supervisor.server_address).encode() + b"\n")
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
