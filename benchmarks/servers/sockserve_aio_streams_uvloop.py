"""The sockserve_aio_streams server on uvloop (skipped if uvloop is not importable)."""

from sockserve_aio_streams import make_stream_server, run

if __name__ == "__main__":
    run(make_stream_server, "uvloop")
