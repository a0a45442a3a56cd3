"""sockserve.aio.AsyncUDPServer with an AsyncDatagramProtocolHandler (callbacks, no task per datagram)."""

from __future__ import annotations

import sys
from typing import Any

from sockserve_aio_streams import run


def make_callback_datagram_server(aio: Any, address: Any) -> Any:
    class DatagramEcho(aio.AsyncDatagramProtocolHandler):  # type: ignore[misc,name-defined]
        def datagram_received(self, data: bytes, client_address: Any) -> None:
            self.sendto(data, client_address)

    return aio.AsyncUDPServer(address, DatagramEcho)


if __name__ == "__main__":
    run(make_callback_datagram_server, sys.argv[2] if len(sys.argv) > 2 else "asyncio")
