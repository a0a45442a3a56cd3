"""The sockserve_aio_protocol server on uvloop (skipped if uvloop is not importable)."""

from sockserve_aio_protocol import make_protocol_server
from sockserve_aio_streams import run

if __name__ == "__main__":
    run(make_protocol_server, "uvloop")
