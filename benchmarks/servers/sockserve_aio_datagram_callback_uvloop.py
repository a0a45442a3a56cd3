"""The sockserve_aio_datagram_callback server on uvloop (skipped if uvloop is not importable)."""

from sockserve_aio_datagram_callback import make_callback_datagram_server
from sockserve_aio_streams import run

if __name__ == "__main__":
    run(make_callback_datagram_server, "uvloop")
