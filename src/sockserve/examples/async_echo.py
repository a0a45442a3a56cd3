"""The echo server on an event loop: an AsyncTCPServer and a handler whose
``handle()`` is a coroutine. The same program serves on asyncio's loop or on
uvloop (``--loop uvloop``; the default, ``auto``, takes uvloop when it is
installed), then stops gracefully."""

from __future__ import annotations

import argparse
import socket
import threading

from sockserve import aio


class EchoHandler(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:  # one line at a time until the client closes
            await self.writer.write(line)  # waits while the client is not reading


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    loop = parser.parse_args().loop

    server = aio.AsyncTCPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"loop": loop})
    thread.start()
    with socket.create_connection(server.server_address, timeout=10) as sock:
        for message in (b"Hello, world\n", b"Hello again\n"):
            print(f"Sending : {message.decode().strip()!r}")
            sock.sendall(message)
            print(f"Received: {sock.recv(1024).decode().strip()!r}")
    report = server.stop(grace=5)  # stop accepting, let connections finish, close
    thread.join()
    # The client has closed, but the server may not have seen it yet: then
    # its connection is "in flight", and the stop waits for it to end.
    print("Stopped : every connection finished" if report.clean else f"Stopped : {report.forced} closed by force")


if __name__ == "__main__":
    main()
