"""asyncio.DatagramProtocol on loop.create_datagram_endpoint."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from _common import ready, run_asyncio, wait_for_stop_signal


class DatagramEcho(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (on 3.11 the selector transport does not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


async def serve(family: socket.AddressFamily, address: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=address, family=family)
    ready(transport.get_extra_info("sockname")[1])
    await wait_for_stop_signal()
    transport.close()


if __name__ == "__main__":
    run_asyncio(serve)
