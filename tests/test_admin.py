"""The admin listener: /healthz, /readyz, /metrics over real sockets; the
request head's framing and parsing as sans-IO, fuzzed; hostile clients."""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sockserve
from sockserve._admin import MAX_HEAD, AdminLoop, AdminServer, HeadFramer, Rejected, Request, parse_head, respond
from sockserve._health import Health
from sockserve._metrics import MetricsSnapshot
from sockserve.testing import running_server

from .helpers import connect, recv_all, recv_line, wait_until

prometheus_parser = pytest.importorskip("prometheus_client.parser")


def http(address: Any, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request``, read the response until the server closes: (status, headers, body)."""
    with connect(address) as sock:
        sock.sendall(request)
        response = recv_all(sock)
    return split_response(response)


def split_response(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, separator, body = response.partition(b"\r\n\r\n")
    assert separator, f"no complete head in {response!r}"
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, value = line.split(": ", 1)
        headers[name.lower()] = value
    return int(status), headers, body


def get(address: Any, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return http(address, f"{method} {path} HTTP/1.1\r\nHost: probe\r\nUser-Agent: test\r\n\r\n".encode())


@pytest.fixture
def health() -> Health:
    return Health()


class LoopDriver:
    """Turns an ``AdminLoop`` as the prefork supervisor's loop does (poll its
    descriptors for at most its timeout, then ``serve()``), on a thread of the
    test, with a pipe to end it."""

    def __init__(self, loop: AdminLoop) -> None:
        self.loop = loop
        self.server_address = loop.server_address
        self.turns = 0
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="admin loop driver")

    def _run(self) -> None:
        import time

        while True:
            poller = select.poll()
            poller.register(self._stop_r, select.POLLIN)
            for fd, events in self.loop.poll_fds():
                poller.register(fd, events)
            timeout = self.loop.timeout(time.monotonic())
            if any(fd == self._stop_r for fd, _ in poller.poll(None if timeout is None else timeout * 1000)):
                return
            self.loop.serve(time.monotonic())
            self.turns += 1

    def __enter__(self) -> LoopDriver:  # noqa: PYI034 - a final class of the tests
        self.loop.start()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(10)
        assert not self._thread.is_alive()
        os.close(self._stop_r)
        os.close(self._stop_w)
        self.loop.close()


@pytest.fixture(params=["threads", "loop"])
def admin(request: pytest.FixtureRequest, health: Health) -> Iterator[Any]:
    """The admin listener on threads of its own (AdminServer) and served by
    an owner's loop (AdminLoop, the prefork supervisor's): the same answers."""
    if request.param == "threads":
        with AdminServer(("127.0.0.1", 0), health, MetricsSnapshot) as server:
            yield server
    else:
        with LoopDriver(AdminLoop(("127.0.0.1", 0), health, MetricsSnapshot)) as driver:
            yield driver


# -- over a socket ------------------------------------------------------------------


def test_healthz_is_200_while_live(admin: AdminServer, health: Health) -> None:
    assert get(admin.server_address, "/healthz")[::2] == (200, b"ok\n")
    health.start_drain()
    assert get(admin.server_address, "/healthz")[::2] == (200, b"ok\n")  # draining is alive
    health.set_stopped()
    assert get(admin.server_address, "/healthz")[::2] == (503, b"stopped\n")


def test_readyz_follows_the_state(admin: AdminServer, health: Health) -> None:
    assert get(admin.server_address, "/readyz")[::2] == (503, b"starting\n")
    health.set_ready()
    assert get(admin.server_address, "/readyz")[::2] == (200, b"ready\n")
    health.start_drain()
    assert get(admin.server_address, "/readyz")[::2] == (503, b"draining\n")
    assert get(admin.server_address, "/readyz?verbose=1")[::2] == (503, b"draining\n")  # the query is ignored


def test_head_answers_the_headers_of_get_without_the_body(admin: AdminServer, health: Health) -> None:
    health.set_ready()
    for path in ("/healthz", "/readyz", "/metrics"):
        status, headers, body = get(admin.server_address, path, "HEAD")
        get_status, get_headers, get_body = get(admin.server_address, path)
        assert (status, body) == (get_status, b"")
        assert headers["content-type"] == get_headers["content-type"]
        if path != "/metrics":  # the metrics may have moved between the two requests
            assert headers["content-length"] == str(len(get_body))


def test_every_response_closes_the_connection(admin: AdminServer) -> None:
    status, headers, body = http(admin.server_address, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (status, headers["connection"], headers["content-length"], body) == (200, "close", "3", b"ok\n")


def test_unknown_paths_and_methods(admin: AdminServer) -> None:
    assert get(admin.server_address, "/")[0] == 404
    assert get(admin.server_address, "/healthz/")[0] == 404
    status, headers, _ = get(admin.server_address, "/readyz", "POST")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert get(admin.server_address, "/metrics", "DELETE")[0] == 405
    assert get(admin.server_address, "/nowhere", "DELETE")[0] == 404


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET /healthz\r\n\r\n", 400),  # HTTP/0.9
        (b"GET  /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
        (b"G\xc3\x89T /healthz HTTP/1.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS client, by mistake
    ],
)
def test_a_bad_request_gets_an_answer_and_one_log_line(
    admin: AdminServer, caplog: pytest.LogCaptureFixture, request_bytes: bytes, status: int
) -> None:
    with caplog.at_level(logging.WARNING, logger="sockserve"):
        assert http(admin.server_address, request_bytes)[0] == status
        assert get(admin.server_address, "/healthz")[0] == 200  # and the listener serves on
    lines = [r for r in caplog.records if "admin listener" in r.getMessage()]
    assert len(lines) == 1
    assert f"answered {status}" in lines[0].getMessage()
    assert lines[0].exc_info is None  # no traceback
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_head_over_the_cap_is_431(admin: AdminServer) -> None:
    with connect(admin.server_address) as sock:
        sock.sendall(b"GET /" + b"a" * MAX_HEAD)  # no end of line yet: the cap alone decides
        status, _, body = split_response(recv_all(sock))
    assert status == 431
    assert b"8192" in body


def test_a_client_that_stops_mid_head_gets_400(admin: AdminServer) -> None:
    with connect(admin.server_address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert split_response(recv_all(sock))[0] == 400


def test_metrics_parse_as_prometheus_text_with_help(health: Health) -> None:
    snapshot = MetricsSnapshot(
        {"connections_accepted": 7, "bytes_received": 1234, "requests": 9},
        {"max_connections_per_ip": 2, "tls_handshake": 1},
        {"connections_active": 3.0, "last_drain_seconds": 0.25},
    )
    with AdminServer(("127.0.0.1", 0), health, lambda: snapshot) as admin:
        status, headers, body = get(admin.server_address, "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = parse_metrics(body)
    assert samples[("sockserve_connections_accepted_total", ())] == 7
    assert samples[("sockserve_received_bytes_total", ())] == 1234
    assert samples[("sockserve_requests_total", ())] == 9
    assert samples[("sockserve_connections_refused_total", (("reason", "max_connections_per_ip"),))] == 2
    assert samples[("sockserve_connections_refused_total", (("reason", "tls_handshake"),))] == 1
    assert samples[("sockserve_connections_refused_total", (("reason", "emfile"),))] == 0  # every reason present
    assert samples[("sockserve_connections_active", ())] == 3
    assert samples[("sockserve_last_drain_seconds", ())] == 0.25
    families = {f.name: f for f in prometheus_parser.text_string_to_metric_families(body.decode())}
    assert families["sockserve_connections_refused"].type == "counter"
    assert families["sockserve_connections_active"].type == "gauge"
    assert all(family.documentation for family in families.values())


def test_metrics_per_listener_get_a_label(health: Health) -> None:
    snapshots = {
        "tcp": MetricsSnapshot({"connections_accepted": 2}),
        "unix": MetricsSnapshot({"connections_accepted": 5}),
    }
    with AdminServer(("127.0.0.1", 0), health, lambda: snapshots) as admin:
        samples = parse_metrics(get(admin.server_address, "/metrics")[2])
    assert samples[("sockserve_connections_accepted_total", (("listener", "tcp"),))] == 2
    assert samples[("sockserve_connections_accepted_total", (("listener", "unix"),))] == 5
    key = ("sockserve_connections_refused_total", (("listener", "unix"), ("reason", "timeout")))
    assert samples[key] == 0


def parse_metrics(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a real Prometheus text parse, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus_parser.text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:  # until the client finishes sending
            self.wfile.write(line)


def test_metrics_count_a_real_servers_traffic(health: Health) -> None:
    server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo)
    if not hasattr(server, "metrics"):
        server.server_close()
        pytest.skip("server.metrics is not there yet (helper M)")
    server.limits = sockserve.Limits(max_connections_per_ip=1)
    server.count_bytes = True  # bytes are counted only when asked for (reading TCP_INFO costs)

    def settled() -> bool:
        # A connection is counted out just after its socket is closed (the
        # client sees the close first); the next one from 127.0.0.1 would be
        # over the cap until then.
        return wait_until(lambda: server.metrics.snapshot().gauges["connections_active"] == 0)

    with running_server(server), AdminServer(("127.0.0.1", 0), health, server.metrics.snapshot) as admin:
        with connect(server.server_address) as held:
            held.sendall(b"one\n")
            assert recv_line(held) == b"one\n"
            with connect(server.server_address) as refused:  # a second one from 127.0.0.1: over the cap
                assert recv_all(refused) == b""
            with_held = parse_metrics(get(admin.server_address, "/metrics")[2])
        assert settled()
        for word in (b"two\n", b"three\n"):
            with connect(server.server_address) as sock:
                sock.sendall(word)
                assert recv_line(sock) == word
                sock.shutdown(socket.SHUT_WR)
                assert recv_all(sock) == b""
            assert settled()
        samples = parse_metrics(get(admin.server_address, "/metrics")[2])
    assert with_held[("sockserve_connections_active", ())] == 1
    assert with_held[("sockserve_connections_refused_total", (("reason", "max_connections_per_ip"),))] == 1
    assert samples[("sockserve_connections_accepted_total", ())] == 3
    assert samples[("sockserve_requests_total", ())] == 3
    assert samples[("sockserve_connections_refused_total", (("reason", "max_connections_per_ip"),))] == 1
    assert samples[("sockserve_connections_active", ())] == 0
    assert samples[("sockserve_received_bytes_total", ())] == len(b"one\ntwo\nthree\n")


def test_without_prometheus_client_metrics_answers_501_and_start_warns(
    health: Health, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in [n for n in sys.modules if n == "prometheus_client" or n.startswith("prometheus_client.")]:
        monkeypatch.setitem(sys.modules, name, None)  # an import of it fails, as if not installed
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "sockserve._prometheus", raising=False)
    with (
        caplog.at_level(logging.WARNING, logger="sockserve"),
        AdminServer(("127.0.0.1", 0), health, MetricsSnapshot) as admin,
    ):
        status, _, body = get(admin.server_address, "/metrics")
        assert get(admin.server_address, "/healthz")[0] == 200
    assert status == 501
    assert b"pip install 'sockserve[metrics]'" in body
    assert body.count(b"\n") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "pip install 'sockserve[metrics]'" in warnings[0]


def test_without_a_metrics_source_there_is_no_metrics_path(health: Health) -> None:
    with AdminServer(("127.0.0.1", 0), health) as admin:
        assert get(admin.server_address, "/metrics")[0] == 404
        assert get(admin.server_address, "/readyz")[0] == 503


def test_on_a_unix_socket(health: Health, unix_path: str) -> None:
    health.set_ready()
    with AdminServer(unix_path, health, MetricsSnapshot) as admin:
        assert admin.server_address == unix_path
        assert get(unix_path, "/readyz")[::2] == (200, b"ready\n")
        assert get(unix_path, "/metrics")[0] == 200
    assert not os.path.exists(unix_path)  # its socket file goes with it


def test_close_joins_the_thread_and_closes_the_socket(health: Health) -> None:
    admin = AdminServer(("127.0.0.1", 0), health)
    admin.start()
    assert get(admin.server_address, "/healthz")[0] == 200
    admin.close()
    admin.close()  # idempotent
    assert not [t for t in threading.enumerate() if t.name.startswith("sockserve admin")]
    with pytest.raises(ConnectionRefusedError):
        connect(admin.server_address).close()


def test_close_without_start_closes_the_socket(health: Health) -> None:
    admin = AdminServer(("127.0.0.1", 0), health)
    admin.close()
    with pytest.raises(ConnectionRefusedError):
        connect(admin.server_address).close()


def test_hostile_clients_do_not_block_healthz_for_others(admin: AdminServer) -> None:
    # Slowloris: heads begun and never finished, more of them than the pool
    # has workers (a thread per connection would be stuck on each).
    slow = [connect(admin.server_address) for _ in range(8)]
    try:
        for sock in slow:
            sock.sendall(b"GET /heal")
        garbage = connect(admin.server_address)
        garbage.sendall(os.urandom(3000))
        huge = connect(admin.server_address)
        huge.setblocking(False)
        try:
            huge.send(b"GET /" + b"x" * (1 << 20))  # as much of a huge line as the socket takes
        except BlockingIOError:
            pass
        for _ in range(5):
            assert get(admin.server_address, "/healthz")[::2] == (200, b"ok\n")
        huge.setblocking(True)
        huge.settimeout(10)
        try:
            assert split_response(recv_all(huge))[0] == 431
        except ConnectionResetError:
            pass  # the server closed with the rest of the line unread: a reset may overtake the reply
        garbage.close()
        huge.close()
    finally:
        for sock in slow:
            sock.close()


def closed_unanswered(sock: socket.socket) -> bool:
    """The server closed ``sock`` without a reply (a reset if it had not read what was sent)."""
    try:
        return recv_all(sock) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_past_the_limit_make_room_for_a_probe(admin: Any) -> None:
    # More idle connections than the listener takes, none of them ever timed
    # out here: a probe is answered because it takes the place of the oldest
    # one still sending its head (it used to wait in the backlog for their
    # deadlines: a liveness probe with a 1 s timeout failed, H4 finding 4).
    loop: AdminLoop = admin.loop
    loop.max_connections = 8
    loop.head_timeout_seconds = loop.timeout_seconds = 3600.0
    idle = [connect(admin.server_address) for _ in range(12)]
    try:
        for sock in idle:
            sock.sendall(b"GET /heal")  # a head begun, never finished
        for _ in range(3):
            assert get(admin.server_address, "/healthz")[::2] == (200, b"ok\n")
        assert closed_unanswered(idle[0])  # the oldest made room
        assert len(loop._connections) <= loop.max_connections
    finally:
        for sock in idle:
            sock.close()


def test_a_head_not_sent_in_time_is_closed(admin: Any) -> None:
    loop: AdminLoop = admin.loop
    loop.head_timeout_seconds = 0.2
    loop.timeout_seconds = 3600.0
    with connect(admin.server_address) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
        assert recv_all(slow) == b""  # closed at the head's deadline, unanswered
    assert get(admin.server_address, "/healthz")[0] == 200


# -- sans-IO: the framer and the parser -------------------------------------------------


def frame(chunks: list[bytes], eof: bool = False) -> list[bytes]:
    framer = HeadFramer()
    heads = []
    for chunk in chunks:
        framer.feed(chunk)
        while (head := framer.next_request()) is not None:
            heads.append(head)
    if eof:
        framer.feed(b"")
        while (head := framer.next_request()) is not None:
            heads.append(head)
    return heads


def test_framer_waits_for_the_empty_line_and_frames_one_head() -> None:
    data = b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"
    assert frame([data[:10]]) == []
    assert frame([data[i : i + 1] for i in range(len(data))]) == [b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n"]
    assert frame([b"GET / HTTP/1.1\n\n"]) == [b"GET / HTTP/1.1\n\n"]  # bare LFs


def test_framer_gives_a_too_long_head_as_it_stands() -> None:
    heads = frame([b"GET /" + b"a" * (2 * MAX_HEAD)])
    assert len(heads) == 1
    assert len(heads[0]) == MAX_HEAD + 1
    assert isinstance(parse_head(heads[0]), Rejected)
    assert parse_head(heads[0]).status == 431  # type: ignore[union-attr]


def test_framer_at_end_of_input() -> None:
    assert frame([b"GET / HTT"], eof=True) == [b"GET / HTT"]
    assert frame([], eof=True) == []


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\n", ("GET", "/healthz")),
        (b"\r\nHEAD /readyz?x=1 HTTP/1.0\r\nHost: a\r\n\r\n", ("HEAD", "/readyz")),
        (b"PROPFIND /metrics HTTP/1.1\n\n", ("PROPFIND", "/metrics")),
    ],
)
def test_parse_head_good(head: bytes, expected: tuple[str, str]) -> None:
    request = parse_head(head)
    assert isinstance(request, Request)
    assert (request.method, request.path) == expected


request_lines = st.builds(
    lambda method, path, minor: f"{method} {path} HTTP/1.{minor}".encode(),
    st.from_regex(r"[A-Z]{1,10}", fullmatch=True),
    st.from_regex(r"/[!-~]{0,40}", fullmatch=True),
    st.sampled_from("01"),
)


@settings(max_examples=300, deadline=None)
@given(
    line=request_lines,
    headers=st.lists(st.from_regex(r"[A-Za-z-]{1,10}: [ -~]{0,20}", fullmatch=True), max_size=5),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_fuzz_a_valid_request_in_any_chunks_parses_to_its_line(
    line: bytes, headers: list[str], cuts: list[int]
) -> None:
    data = b"\r\n".join([line, *(h.encode() for h in headers)]) + b"\r\n\r\n"
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    heads = frame([c for c in chunks if c])  # b"" would mean the end of input
    assert heads == [data]
    request = parse_head(heads[0])
    assert isinstance(request, Request)
    method, target, _ = line.decode().split(" ")
    assert (request.method, request.path) == (method, target.split("?", 1)[0])


@settings(max_examples=500, deadline=None)
@given(
    data=st.binary(max_size=MAX_HEAD + 200),
    cuts=st.lists(st.integers(0, MAX_HEAD + 200), max_size=6),
    eof=st.booleans(),
)
@example(data=b"\n\n", cuts=[], eof=True)
@example(data=b"\r\n" * 5000, cuts=[], eof=False)
def test_fuzz_any_bytes_give_at_most_one_head_and_a_well_formed_response(
    data: bytes, cuts: list[int], eof: bool
) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    heads = frame([c for c in chunks if c], eof=eof)
    assert len(heads) <= 1
    for head in heads:
        assert len(head) <= MAX_HEAD + 1
        assert data.startswith(head)
        parsed = parse_head(head)
        assert isinstance(parsed, (Request, Rejected))
        health = Health()
        response = respond(parsed, health, lambda: ("text/plain", b"m"), metrics_missing=False)
        status, headers, body = split_response(response)
        assert status in (200, 400, 404, 405, 431, 503, 505)
        if not (isinstance(parsed, Request) and parsed.method == "HEAD"):
            assert int(headers["content-length"]) == len(body)


def test_a_failing_metrics_source_is_a_500_and_one_logged_traceback(
    health: Health, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> MetricsSnapshot:
        raise KeyError("no such server")

    with caplog.at_level(logging.WARNING, logger="sockserve"), AdminServer(("127.0.0.1", 0), health, broken) as admin:
        assert get(admin.server_address, "/metrics")[::2] == (500, b"metrics failed\n")
        assert get(admin.server_address, "/healthz")[0] == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["admin listener: /metrics failed"]
    assert errors[0].exc_info is not None


# -- AdminLoop: what only the loop has -------------------------------------------------


def test_loop_on_a_unix_socket_and_close_removes_the_file(health: Health, unix_path: str) -> None:
    with LoopDriver(AdminLoop(unix_path, health, MetricsSnapshot)) as driver:
        health.set_ready()
        assert get(driver.server_address, "/readyz")[::2] == (200, b"ready\n")
    assert not os.path.exists(unix_path)


def test_loop_drops_a_silent_client_at_its_deadline(health: Health) -> None:
    loop = AdminLoop(("127.0.0.1", 0), health)
    loop.timeout_seconds = 0.2
    with LoopDriver(loop) as driver, connect(driver.server_address) as silent:
        silent.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
        assert recv_all(silent) == b""  # closed by the loop, unanswered
        assert get(driver.server_address, "/healthz")[0] == 200


def test_loop_over_its_connection_limit_closes_the_oldest_still_sending_its_head(health: Health) -> None:
    loop = AdminLoop(("127.0.0.1", 0), health)
    loop.max_connections = 2
    with LoopDriver(loop) as driver:
        held = [connect(driver.server_address) for _ in range(2)]
        try:
            for sock in held:
                sock.sendall(b"GET /heal")
            assert wait_until(lambda: len(loop._connections) == 2)
            with connect(driver.server_address) as newcomer:
                newcomer.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
                assert split_response(recv_all(newcomer))[::2] == (200, b"ok\n")
            assert closed_unanswered(held[0])  # the oldest made room
            held[1].sendall(b"thz HTTP/1.1\r\n\r\n")  # the other one keeps its place
            assert split_response(recv_all(held[1]))[::2] == (200, b"ok\n")
        finally:
            for sock in held:
                sock.close()


def test_loop_close_in_child_closes_its_sockets_but_leaves_the_unix_file(health: Health, unix_path: str) -> None:
    loop = AdminLoop(unix_path, health)
    client = connect(unix_path)
    try:

        def accepted() -> bool:
            loop.serve(0.0)
            return len(loop.poll_fds()) == 2

        assert wait_until(accepted)
        loop.close_in_child()
        assert loop.poll_fds() == []
        assert recv_all(client) == b""  # its connection closed (the only copy here)
        assert os.path.exists(unix_path)  # the owner's to remove
    finally:
        client.close()
        loop.close()
    assert not os.path.exists(unix_path)
