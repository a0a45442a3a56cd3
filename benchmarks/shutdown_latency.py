"""How long shutdown() takes to make serve_forever() return: stdlib vs sockserve.

    python benchmarks/shutdown_latency.py [--rounds 20] [--poll-interval 0.5]

Each round starts a TCPServer serving in a thread, proves the loop is running
with one request, waits a random fraction of the poll interval (so the
shutdown lands anywhere in the stdlib's poll cycle), then times shutdown()
from the call until serve_forever() has returned.
"""

from __future__ import annotations

import argparse
import random
import socket
import socketserver
import statistics
import threading
import time
from typing import Any

import sockserve


def _handler(base: Any) -> Any:
    class Echo(base.StreamRequestHandler):  # type: ignore[misc, name-defined]
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    return Echo


def one_round(module: Any, poll_interval: float, rng: random.Random) -> float:
    server = module.TCPServer(("127.0.0.1", 0), _handler(module))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval})
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=10) as client:
            client.sendall(b"x\n")
            client.recv(16)
        threading.Event().wait(rng.uniform(0, poll_interval))  # land anywhere in the poll cycle
        start = time.perf_counter()
        server.shutdown()
        thread.join()
        return time.perf_counter() - start
    finally:
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"shutdown() latency, serve_forever(poll_interval={args.poll_interval}), {args.rounds} rounds each")
    print(f"{'server':<22} {'median ms':>10} {'p90 ms':>10} {'max ms':>10}")
    for name, module in (("stdlib socketserver", socketserver), ("sockserve", sockserve)):
        samples = sorted(one_round(module, args.poll_interval, rng) * 1000 for _ in range(args.rounds))
        p90 = samples[min(len(samples) - 1, int(0.9 * len(samples)))]
        print(f"{name:<22} {statistics.median(samples):>10.3f} {p90:>10.3f} {samples[-1]:>10.3f}")


if __name__ == "__main__":
    main()
