"""The C epoll echo server (c_epoll_echo.c), the tables' physical limit.

The runner starts every server as ``python3 servers/<name>.py HOST:PORT``;
this script builds the C server into benchmarks/bin/ if it is missing or
older than its source (run.py has built it already; this covers
callgrind.py and a start by hand) and execs it with the same arguments,
so the process the runner measures, signals and reads READY/EXIT from is
the C server itself.  ``--udp`` makes it a datagram echo.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from _common import skip

BENCH_DIR = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    from harness import BIN_DIR, build_c

    try:
        binary = build_c(Path(__file__).with_suffix(".c"), BIN_DIR / "c_epoll_echo")
    except FileNotFoundError as exc:
        skip(f"gcc is needed to build the C reference server ({exc})")
    os.execv(binary, [str(binary), *sys.argv[1:]])
