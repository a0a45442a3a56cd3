#!/usr/bin/env python3
"""Instructions per call of the pieces of the edge stages, in a loop under callgrind.

    python3 benchmarks/edge_micro.py                 # every piece
    python3 benchmarks/edge_micro.py v1 v2 warn      # some of them
    python3 benchmarks/edge_micro.py --run v1 1000   # the loop itself, once (what callgrind runs)

Each piece runs N1 = 1000 and N2 = 6000 times, each count in its own
interpreter under ``valgrind --tool=callgrind``; (total(N2) - total(N1)) /
(N2 - N1) is the cost of one call, start-up and imports cancelled out (as in
``callgrind.py``). The repository's src/ is imported.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n"
V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
    + bytes([203, 0, 113, 7, 127, 0, 0, 1])
    + (40000).to_bytes(2, "big")
    + (443).to_bytes(2, "big")
)
PEER = ("127.0.0.1", 50000)

PIECES = {
    "none": "an empty loop turn (the floor)",
    "ip": 'ipaddress.ip_address("203.0.113.7")',
    "trusts": "ProxyProtocol.trusts(peer)",
    "v1": "parse_proxy_header(a v1 header)",
    "v2": "parse_proxy_header(a v2 header)",
    "stage1": "ProxyProtocol.stage(peer).feed(v1 header + a line)",
    "stage2": "ProxyProtocol.stage(peer).feed(v2 header + a line)",
    "warn": "one logging WARNING through the last-resort handler (asyncio's eof_received() one)",
}


def run(piece: str, n: int) -> None:
    sys.path.insert(0, str(SRC))
    import sockserve
    from sockserve.protocol.proxy import parse_proxy_header

    proxy = sockserve.ProxyProtocol(trusted=["127.0.0.1/32"])
    log = logging.getLogger("asyncio")
    for _ in range(n):
        if piece == "ip":
            ipaddress.ip_address("203.0.113.7")
        elif piece == "trusts":
            proxy.trusts(PEER)
        elif piece == "v1":
            parse_proxy_header(V1)
        elif piece == "v2":
            parse_proxy_header(V2)
        elif piece in ("stage1", "stage2"):
            proxy.stage(PEER).feed((V1 if piece == "stage1" else V2) + b"x\n")
        elif piece == "warn":
            log.warning("returning true from eof_received() has no effect when using ssl")


def instructions(piece: str, n: int) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__, "--run"]
    out = subprocess.run([*cmd, piece, str(n)], capture_output=True, text=True, check=True, timeout=600)
    match = re.search(r"Collected : ([\d,]+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total for {piece} x {n}: {out.stderr[-300:]}")
    return int(match.group(1).replace(",", ""))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--run"]:
        run(argv[1], int(argv[2]))
        return 0
    pieces = argv or list(PIECES)
    unknown = [p for p in pieces if p not in PIECES]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)} (known: {', '.join(PIECES)})")
    n1, n2 = 1000, 6000
    print("| piece | instructions per call |\n|---|---|")
    for piece in pieces:
        per_call = (instructions(piece, n2) - instructions(piece, n1)) / (n2 - n1)
        print(f"| {PIECES[piece]} | {per_call:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
