"""sockserve.aio.AsyncTCPServer with an AsyncProtocolHandler (callbacks, no
task per connection), echoing complete lines as asyncio_protocol.py does."""

from __future__ import annotations

import sys
from typing import Any

from sockserve_aio_streams import run


def make_protocol_server(aio: Any, address: Any) -> Any:
    class LineEcho(aio.AsyncProtocolHandler):  # type: ignore[misc,name-defined]
        pending = b""

        def data_received(self, data: bytes) -> None:
            if self.pending:
                data = self.pending + data
            end = data.rfind(b"\n") + 1
            if end:
                self.write(data[:end] if end < len(data) else data)
            self.pending = data[end:]

    return aio.AsyncTCPServer(address, LineEcho)


if __name__ == "__main__":
    run(make_protocol_server, sys.argv[2] if len(sys.argv) > 2 else "asyncio")
