"""asyncio.DatagramProtocol that runs each datagram's echo in a task of its own:
the least a task per datagram costs, the floor of AsyncDatagramRequestHandler."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

from _common import ready, run_asyncio, wait_for_stop_signal


class DatagramTaskEcho(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        task = self.loop.create_task(self.echo(data, addr))
        self.tasks.add(task)  # the loop holds its tasks weakly
        task.add_done_callback(self.tasks.discard)

    async def echo(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


async def serve(family: socket.AddressFamily, address: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(DatagramTaskEcho, local_addr=address, family=family)
    ready(transport.get_extra_info("sockname")[1])
    await wait_for_stop_signal()
    transport.close()


if __name__ == "__main__":
    run_asyncio(serve)
