"""asyncio.start_server with StreamReader/StreamWriter, a task per connection."""

from __future__ import annotations

import asyncio
import socket

from _common import ready, run_asyncio, wait_for_stop_signal


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(family: socket.AddressFamily, address: tuple[str, int]) -> None:
    server = await asyncio.start_server(handle, address[0], address[1], family=family)
    ready(server.sockets[0].getsockname()[1])
    await wait_for_stop_signal()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    run_asyncio(serve)
