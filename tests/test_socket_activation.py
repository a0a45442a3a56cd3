"""Socket activation: sockets passed exactly as systemd passes them (in a child
process, on descriptors 3, 4, 5..., LISTEN_PID set to the child's own pid
before it execs), the environment rules of sd_listen_fds, ``--bind`` parsing,
and pairing binds with inherited sockets."""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockserve._socket_activation import (
    Bind,
    InheritedSocket,
    SocketActivationError,
    inherited_sockets,
    match_binds,
    parse_bind,
)

from .conftest import requires_ipv6
from .fake_systemd import spawn
from .helpers import connect, wait_until

TIMEOUT = 20.0

# The service: reads its sockets with inherited_sockets(), reports them as one
# JSON line, then (mode "serve") answers one client on each, in descriptor order.
SERVICE = r"""
import json, os, socket, sys
from sockserve._socket_activation import inherited_sockets

def fd_state():
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    return {str(fd): os.get_inheritable(fd) for fd in fds if fd > 2 and os.path.exists(f"/proc/self/fd/{fd}")}

before = fd_state()
try:
    sockets = inherited_sockets()
except Exception as exc:
    report = {"error": str(exc), "exception": type(exc).__name__}
else:
    report = {
        "sockets": [
            {"fd": s.fd, "name": s.name, "family": s.family.name, "type": s.type.name,
             "address": s.address, "listening": s.listening, "fileno": s.socket.fileno()}
            for s in sockets
        ]
    }
report["before"] = before
report["after"] = fd_state()
report["env"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
print(json.dumps(report), flush=True)
if sys.argv[1] == "serve":
    for s in sockets:
        s.socket.settimeout(20)
        if s.type == socket.SOCK_STREAM:
            conn, _ = s.socket.accept()
            with conn:
                conn.sendall(f"{s.name} {os.getpid()}\n".encode())
        else:
            data, peer = s.socket.recvfrom(100)
            s.socket.sendto(data + f" {s.name} {os.getpid()}".encode(), peer)
        s.socket.close()
"""


@contextmanager
def launched(passed: list[int], env: dict[str, str], mode: str = "report") -> Iterator[subprocess.Popen[str]]:
    """Start the service as systemd would (fake_systemd.spawn), with ``passed``
    on descriptors 3... and ``env`` ("{self}" is the service's own pid); kill
    and reap it at the end."""
    argv = [sys.executable, "-c", SERVICE, mode]
    proc = spawn(argv, passed, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


def read_report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(TIMEOUT), "the service reported nothing in time"
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=TIMEOUT)
        pytest.fail(f"the service died without a report: {err}")
    report: dict[str, Any] = json.loads(line)
    return report


def _kill_if_running(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()


def finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err


def listeners(stack: ExitStack, unix_path: str) -> list[socket.socket]:
    """A TCP listener, a Unix stream listener and a UDP socket, as a .socket unit would make them."""
    tcp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    unix = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    unix.bind(unix_path)
    unix.listen()
    udp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    udp.bind(("127.0.0.1", 0))
    return [tcp, unix, udp]


# --- sockets passed as systemd passes them -------------------------------------


def test_service_serves_the_sockets_systemd_passed(unix_path: str) -> None:
    with ExitStack() as stack:
        tcp, unix, udp = listeners(stack, unix_path)
        tcp_address, udp_address = tcp.getsockname(), udp.getsockname()
        fds = [tcp.fileno(), unix.fileno(), udp.fileno()]
        env = {"LISTEN_PID": "{self}", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:local:dns"}
        proc = stack.enter_context(launched(fds, env, mode="serve"))
        for sock in (tcp, unix, udp):  # from now on only the service holds them
            sock.close()
        report = read_report(proc)
        assert "error" not in report, report
        assert report["sockets"] == [
            {"fd": 3, "name": "web", "family": "AF_INET", "type": "SOCK_STREAM", "address": list(tcp_address),
             "listening": True, "fileno": 3},
            {"fd": 4, "name": "local", "family": "AF_UNIX", "type": "SOCK_STREAM", "address": unix_path,
             "listening": True, "fileno": 4},
            {"fd": 5, "name": "dns", "family": "AF_INET", "type": "SOCK_DGRAM", "address": list(udp_address),
             "listening": False, "fileno": 5},
        ]  # fmt: skip
        # Exactly 3, 4, 5 were open and inheritable, as systemd leaves them; read, they are close-on-exec.
        assert report["before"] == {"3": True, "4": True, "5": True}
        assert report["after"] == {"3": False, "4": False, "5": False}
        assert report["env"] == [], "LISTEN_* must be unset once read, or a child would take the sockets"

        # The same sockets: the parent closed its copies, and the service answers on them with its pid.
        with socket.create_connection(tcp_address, timeout=TIMEOUT) as client:
            assert client.makefile("rb").readline() == f"web {proc.pid}\n".encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            client.connect(unix_path)
            assert client.makefile("rb").readline() == f"local {proc.pid}\n".encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.sendto(b"ping", udp_address)
            assert client.recv(100) == f"ping dns {proc.pid}".encode()
        finish(proc)
    assert os.path.exists(unix_path), "the inherited socket's path belongs to the service manager"


def test_names_default_to_unknown(unix_path: str) -> None:
    with ExitStack() as stack:
        fds = [sock.fileno() for sock in listeners(stack, unix_path)]
        proc = stack.enter_context(launched(fds, {"LISTEN_PID": "{self}", "LISTEN_FDS": "3"}))
        report = read_report(proc)
        finish(proc)
    assert [s["name"] for s in report["sockets"]] == ["unknown", "unknown", "unknown"]
    assert report["env"] == []


def test_sockets_passed_to_another_process_are_left_alone(unix_path: str) -> None:
    with ExitStack() as stack:
        fds = [sock.fileno() for sock in listeners(stack, unix_path)]
        # The service inherited its parent's variables: LISTEN_PID is not its pid.
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "3", "LISTEN_FDNAMES": "a:b:c"}
        proc = stack.enter_context(launched(fds, env))
        report = read_report(proc)
        finish(proc)
    assert report["sockets"] == []
    assert report["after"] == {"3": True, "4": True, "5": True}, "descriptors that are not ours are not touched"
    assert report["env"] == [], "sd_listen_fds unsets the variables even when they are not for us"


def test_a_descriptor_that_is_not_open_is_an_error(unix_path: str) -> None:
    with ExitStack() as stack:
        tcp = listeners(stack, unix_path)[0]
        proc = stack.enter_context(launched([tcp.fileno()], {"LISTEN_PID": "{self}", "LISTEN_FDS": "2"}))
        report = read_report(proc)
        finish(proc)
    assert report["exception"] == "SocketActivationError"
    assert report["error"] == "LISTEN_FDS=2 but descriptor 4 cannot be used: Bad file descriptor"
    assert report["env"] == []


def test_a_descriptor_that_is_not_a_socket_is_an_error() -> None:
    read_end, write_end = os.pipe()
    try:
        env = {"LISTEN_PID": "{self}", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "fifo"}
        with launched([read_end], env) as proc:
            report = read_report(proc)
            finish(proc)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert report["error"] == "descriptor 3 'fifo' is not a socket"
    assert report["after"] == {"3": False}, "the descriptor is left open, close-on-exec, as sd_listen_fds leaves it"


SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"


def test_the_real_systemd_socket_activate_passes_sockets_we_accept(short_tmp: str) -> None:
    """systemd's own tool (package systemd) makes the sockets, waits for a
    first connection, then execs the service with the variables set by
    systemd's code rather than ours."""
    if not os.access(SOCKET_ACTIVATE, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SOCKET_ACTIVATE} is missing: the CI image needs the systemd package")
        pytest.skip(f"{SOCKET_ACTIVATE} is not installed (package systemd)")
    web, admin = os.path.join(short_tmp, "web"), os.path.join(short_tmp, "admin")
    argv = [SOCKET_ACTIVATE, "-l", web, "-l", admin, "--fdname=web:admin", sys.executable, "-c", SERVICE, "serve"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with ExitStack() as stack:
        stack.callback(proc.communicate, timeout=TIMEOUT)
        stack.callback(_kill_if_running, proc)
        # The tool binds both paths before it waits: then the first connection makes it exec the service.
        assert wait_until(lambda: os.path.exists(admin) or proc.poll() is not None, TIMEOUT)
        clients = [stack.enter_context(connect(path, TIMEOUT)) for path in (web, admin)]
        report = read_report(proc)
        assert "error" not in report, report
        described = [(s["fd"], s["name"], s["type"], s["address"], s["listening"]) for s in report["sockets"]]
        assert described == [(3, "web", "SOCK_STREAM", web, True), (4, "admin", "SOCK_STREAM", admin, True)]
        assert report["env"] == []
        for client, name in zip(clients, ("web", "admin"), strict=True):
            assert client.makefile("rb").readline() == f"{name} {proc.pid}\n".encode()
        finish(proc)
    assert os.path.exists(web), "the tool owns the socket files"


# --- the environment rules, without descriptors ----------------------------------


def environment(**values: str) -> dict[str, str]:
    return {"PATH": "/bin", **values}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"LISTEN_FDS": ""}, "LISTEN_FDS='' is not a count of descriptors"),
        ({"LISTEN_FDS": "two"}, "LISTEN_FDS='two' is not a count of descriptors"),
        ({"LISTEN_FDS": "+2"}, "LISTEN_FDS='+2' is not a count of descriptors"),
        ({"LISTEN_FDS": " 2"}, "LISTEN_FDS=' 2' is not a count of descriptors"),
        ({"LISTEN_FDS": "-1"}, "LISTEN_FDS='-1' is not a count of descriptors"),
        ({"LISTEN_FDS": "0"}, "LISTEN_FDS='0': the count must be at least 1"),
        ({"LISTEN_FDS": "99999999999"}, "LISTEN_FDS='99999999999': the count must be at least 1"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"}, "LISTEN_FDNAMES='web' has 1 name(s) for LISTEN_FDS=2"),
        ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, "LISTEN_FDNAMES='a:b' has 2 name(s) for LISTEN_FDS=1"),
        ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": ""}, "LISTEN_FDNAMES='' has 0 name(s) for LISTEN_FDS=1"),
        ({"LISTEN_FDS": "1", "LISTEN_PIDFDID": "x"}, "LISTEN_PIDFDID='x' is not a number"),
    ],
)
def test_a_malformed_environment_is_an_error_like_sd_listen_fds(values: dict[str, str], message: str) -> None:
    # Each fault is found before any descriptor is touched, so this runs in the test's own process.
    env = environment(LISTEN_PID=str(os.getpid()), **values)
    with pytest.raises(SocketActivationError) as caught:
        inherited_sockets(env)
    assert str(caught.value).startswith(message)
    assert env == environment(), "the variables are unset on the error path too"


@pytest.mark.parametrize("pid", ["", "0", "-5", "12x", "1.0"])
def test_a_listen_pid_that_is_not_a_pid_is_an_error(pid: str) -> None:
    env = environment(LISTEN_PID=pid, LISTEN_FDS="1")
    with pytest.raises(SocketActivationError, match=r"^LISTEN_PID='.*' is not a process id$"):
        inherited_sockets(env)


@pytest.mark.parametrize(
    "values",
    [
        {},  # not started by a service manager at all
        {"LISTEN_FDS": "2"},  # no LISTEN_PID: sd_listen_fds ignores LISTEN_FDS
        {"LISTEN_PID": "{self}"},  # a pid but no count
        {"LISTEN_PID": "{other}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"},  # another process's sockets
        {"LISTEN_PID": "{other}", "LISTEN_FDS": "junk"},  # not ours: not even checked
    ],
)
def test_nothing_passed_to_us_is_an_empty_list(values: dict[str, str]) -> None:
    pids = {"{self}": str(os.getpid()), "{other}": str(os.getppid())}
    env = environment(**{key: pids.get(value, value) for key, value in values.items()})
    assert inherited_sockets(env) == []
    assert env == environment()


def test_unset_false_keeps_the_variables() -> None:
    values = {"LISTEN_PID": str(os.getppid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}
    env = environment(**values)
    assert inherited_sockets(env, unset=False) == []
    assert env == environment(**values)


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "web")
    assert inherited_sockets() == []
    assert not [key for key in os.environ if key.startswith("LISTEN_")]


# --- parse_bind -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://0.0.0.0:9000", Bind("tcp", host="0.0.0.0", port=9000)),
        ("tcp://localhost:0", Bind("tcp", host="localhost", port=0)),
        ("udp://[::]:5353", Bind("udp", host="::", port=5353)),
        ("tcp://[fe80::1%eth0]:80", Bind("tcp", host="fe80::1%eth0", port=80)),
        ("unix:/run/app.sock", Bind("unix", path="/run/app.sock")),
        ("unix:relative.sock", Bind("unix", path="relative.sock")),
        ("unix:@abstract", Bind("unix", path="@abstract")),
        ("tcp://0.0.0.0:9000?name=web", Bind("tcp", host="0.0.0.0", port=9000, name="web")),
        ("unix:/run/app.sock?name=app.socket", Bind("unix", path="/run/app.sock", name="app.socket")),
        ("unixgram:/run/log.sock", Bind("unixgram", path="/run/log.sock")),
        ("unixgram:@log?name=log", Bind("unixgram", path="@log", name="log")),
        ("unix:/" + "x" * 106, Bind("unix", path="/" + "x" * 106)),  # 107 bytes: the most a path holds
        ("unix:@" + "x" * 106, Bind("unix", path="@" + "x" * 106)),
    ],
)
def test_parse_bind(text: str, expected: Bind) -> None:
    assert parse_bind(text) == expected
    assert str(expected) == text


def test_bind_kind_and_address() -> None:
    assert parse_bind("udp://[::1]:53").address == ("::1", 53)
    assert parse_bind("udp://[::1]:53").type == socket.SOCK_DGRAM
    assert parse_bind("unix:@name").address == "\0name"
    assert parse_bind("unix:/a").families == (socket.AF_UNIX,)
    assert parse_bind("tcp://127.0.0.1:1").families == (socket.AF_INET, socket.AF_INET6)
    assert parse_bind("unixgram:/a").type == socket.SOCK_DGRAM
    assert parse_bind("unixgram:/a").families == (socket.AF_UNIX,)
    assert parse_bind("unixgram:@log").address == "\0log"
    assert parse_bind("unix:/a").type == socket.SOCK_STREAM


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected tcp://HOST:PORT, udp://HOST:PORT, unix:PATH, unix:@NAME or unixgram:PATH"),
        ("0.0.0.0", "expected tcp://HOST:PORT, udp://HOST:PORT, unix:PATH, unix:@NAME or unixgram:PATH"),
        # --help once said @ABSTRACT: the abstract namespace is unix:@NAME.
        ("@abstract", "expected tcp://HOST:PORT, udp://HOST:PORT, unix:PATH, unix:@NAME or unixgram:PATH"),
        ("http://0.0.0.0:80", "unknown scheme 'http' (expected tcp, udp, unix or unixgram)"),
        ("tcp:0.0.0.0:80", "expected tcp://HOST:PORT"),
        ("tcp://0.0.0.0", "no port"),
        ("tcp://:9000", "no host"),
        ("tcp://::1:9000", "write an IPv6 address in brackets"),
        ("tcp://[::1]9000", "expected [IPV6]:PORT"),
        ("tcp://[::1:9000", "expected [IPV6]:PORT"),
        ("tcp://[1.2.3.4]:80", "'1.2.3.4' is not an IPv6 address"),
        ("tcp://bad host:80", "'bad host' is neither an IP address nor a host name"),
        ("tcp://0.0.0.0:65536", "the port must be a number from 0 to 65535"),
        ("tcp://0.0.0.0:-1", "the port must be a number from 0 to 65535"),
        ("tcp://0.0.0.0:http", "the port must be a number from 0 to 65535"),
        ("udp://0.0.0.0:\N{ARABIC-INDIC DIGIT ONE}", "the port must be a number"),
        ("unix:", "the Unix socket path is empty"),
        ("unix:@", "the Unix socket path is empty"),
        ("unix:/a\0b", "holds a NUL"),
        # A newline in a path split the start-up line in two (log injection).
        ("unix:/tmp/new\nline.sock", "the Unix socket path holds a control character '\\n'"),
        ("unixgram:/tmp/a\x1b[31m.sock", "holds a control character '\\x1b'"),
        ("unix:@a\x85b", "holds a control character '\\x85'"),
        # sun_path's 108 bytes, the NUL included: --check passed 108 and more, serving then failed.
        ("unix:/" + "x" * 107, "the Unix socket path is 108 bytes, over the 107 a socket address holds"),
        ("unix:@" + "x" * 107, "the Unix socket path is 108 bytes, over the 107"),
        ("unix:/" + "\N{EURO SIGN}" * 36, "the Unix socket path is 109 bytes"),
        ("unixgram:", "the Unix socket path is empty"),
        ("unixgrams:/a", "unknown scheme 'unixgrams'"),
        ("tcp://0.0.0.0:1?name=", "a name is 1 to 255 printable ASCII characters"),
        ("tcp://0.0.0.0:1?name=a:b", "a name is 1 to 255 printable ASCII characters"),
        ("tcp://0.0.0.0:1?name=" + "x" * 256, "a name is 1 to 255 printable ASCII characters"),
    ],
)
def test_parse_bind_rejects_junk_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^bad bind ") as caught:
        parse_bind(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True),
)
names = st.none() | st.from_regex(r"[\x20-\x39\x3b-\x7e]{1,30}", fullmatch=True)
binds = st.one_of(
    st.builds(Bind, st.sampled_from(["tcp", "udp"]), host=hosts, port=st.integers(0, 65535), name=names),
    st.builds(
        Bind,
        st.sampled_from(["unix", "unixgram"]),
        # At most 26 characters of up to 4 bytes each, "@" included: within sun_path's 107 bytes.
        path=st.from_regex(r"@?[^\x00-\x1f\x7f-\x9f?@][^\x00-\x1f\x7f-\x9f?]{0,24}", fullmatch=True),
        name=names,
    ),
)


@given(binds)
def test_parse_bind_round_trips(bind: Bind) -> None:
    assert parse_bind(str(bind)) == bind


@given(st.text(max_size=60) | st.from_regex(r"(tcp|udp|unix|unixgram):.{0,40}", fullmatch=True))
def test_parse_bind_gives_a_bind_or_a_value_error(text: str) -> None:
    try:
        bind = parse_bind(text)
    except ValueError as exc:
        error = str(exc)
    else:
        assert parse_bind(str(bind)) == bind
        return
    assert error.startswith("bad bind ")
    assert "\n" not in error


# --- match_binds ----------------------------------------------------------------


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as sockets:
        yield sockets


def tcp_listener(stack: ExitStack, name: str = "unknown", host: str = "127.0.0.1") -> InheritedSocket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
    sock.bind((host, 0))
    sock.listen()
    return InheritedSocket.from_socket(sock, name)


def unix_listener(stack: ExitStack, path: str, name: str = "unknown") -> InheritedSocket:
    sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    sock.bind(path)
    sock.listen()
    return InheritedSocket.from_socket(sock, name)


def udp_socket(stack: ExitStack, name: str = "unknown") -> InheritedSocket:
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind(("127.0.0.1", 0))
    return InheritedSocket.from_socket(sock, name)


def test_from_socket_describes_the_socket(stack: ExitStack, unix_path: str) -> None:
    tcp, unix, udp = tcp_listener(stack, "web"), unix_listener(stack, unix_path), udp_socket(stack)
    assert (tcp.family, tcp.type, tcp.listening, tcp.fd) == (
        socket.AF_INET,
        socket.SOCK_STREAM,
        True,
        tcp.socket.fileno(),
    )
    assert (unix.family, unix.address, unix.listening) == (socket.AF_UNIX, unix_path, True)
    assert (udp.type, udp.listening) == (socket.SOCK_DGRAM, False)
    assert tcp.describe() == f"fd {tcp.fd} 'web' (TCP 127.0.0.1:{tcp.address[1]}, listening)"  # type: ignore[index]


def test_match_by_name_whatever_the_order(stack: ExitStack, unix_path: str) -> None:
    web, local, dns = tcp_listener(stack, "web"), unix_listener(stack, unix_path, "local"), udp_socket(stack, "dns")
    wanted = [
        parse_bind("udp://[::]:53?name=dns"),
        parse_bind("unix:/x?name=local"),
        parse_bind("tcp://[::]:1?name=web"),
    ]
    matched = match_binds(wanted, [web, local, dns])
    assert matched == {wanted[0]: dns, wanted[1]: local, wanted[2]: web}
    assert list(matched) == wanted


def test_match_by_order_within_each_kind(stack: ExitStack, unix_path: str) -> None:
    # What ListenStream=80, ListenStream=/run/app.sock, ListenStream=443 give: no names, and
    # IPv6 sockets for plain ports, so no address equals the binds' 0.0.0.0.
    first, local, second = tcp_listener(stack), unix_listener(stack, unix_path), tcp_listener(stack)
    wanted = [parse_bind("unix:/run/app.sock"), parse_bind("tcp://0.0.0.0:80"), parse_bind("tcp://0.0.0.0:443")]
    assert match_binds(wanted, [first, local, second]) == {wanted[0]: local, wanted[1]: first, wanted[2]: second}


def test_unix_stream_and_datagram_binds_take_their_own_kind(stack: ExitStack, short_tmp: str) -> None:
    # ListenDatagram=/run/log.sock before ListenStream=/run/app.sock: each bind its kind, whatever the order.
    datagram = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    datagram.bind(os.path.join(short_tmp, "log"))
    log = InheritedSocket.from_socket(datagram)
    app = unix_listener(stack, os.path.join(short_tmp, "app"))
    wanted = [parse_bind("unix:/run/app.sock"), parse_bind("unixgram:/run/log.sock")]
    assert match_binds(wanted, [log, app]) == {wanted[0]: app, wanted[1]: log}
    with pytest.raises(SocketActivationError, match=r"^bind unixgram:/x: no inherited Unix datagram socket is left"):
        match_binds([parse_bind("unixgram:/x")], [app])


def test_an_exact_address_wins_over_the_order(stack: ExitStack) -> None:
    first, second = tcp_listener(stack), tcp_listener(stack)
    wanted = [parse_bind("tcp://0.0.0.0:1"), parse_bind(f"tcp://127.0.0.1:{first.address[1]}")]  # type: ignore[index]
    assert match_binds(wanted, [first, second]) == {wanted[0]: second, wanted[1]: first}


def test_an_exact_unix_path_wins_over_the_order(stack: ExitStack, short_tmp: str) -> None:
    a, b = (unix_listener(stack, os.path.join(short_tmp, name)) for name in ("a.sock", "b.sock"))
    wanted = [parse_bind(f"unix:{b.address}"), parse_bind(f"unix:{a.address}")]
    assert match_binds(wanted, [a, b]) == {wanted[0]: b, wanted[1]: a}


@requires_ipv6
def test_an_ipv6_socket_serves_an_ipv4_bind(stack: ExitStack) -> None:
    dual = tcp_listener(stack, host="::")
    bind = parse_bind("tcp://0.0.0.0:9000")
    assert match_binds([bind], [dual]) == {bind: dual}


def test_several_sockets_under_one_name(stack: ExitStack) -> None:
    # A .socket unit's sockets all carry its name unless FileDescriptorName= says otherwise.
    first, second = tcp_listener(stack, "app.socket"), tcp_listener(stack, "app.socket")
    wanted = [parse_bind("tcp://0.0.0.0:1?name=app.socket"), parse_bind("tcp://0.0.0.0:2?name=app.socket")]
    assert match_binds(wanted, [first, second]) == {wanted[0]: first, wanted[1]: second}


def test_a_bind_of_the_wrong_kind_is_a_one_line_error(stack: ExitStack) -> None:
    web = tcp_listener(stack)
    with pytest.raises(SocketActivationError) as caught:
        match_binds([parse_bind("udp://[::]:5353")], [web])
    port = web.address[1]  # type: ignore[index]
    assert caught.value.problems == (
        f"bind udp://[::]:5353: no inherited UDP socket is left for it "
        f"(inherited: fd {web.fd} 'unknown' (TCP 127.0.0.1:{port}, listening))",
        f"inherited fd {web.fd} 'unknown' (TCP 127.0.0.1:{port}, listening) is claimed by no bind",
    )
    assert "\n" not in str(caught.value)


def test_a_name_on_a_socket_of_the_wrong_kind(stack: ExitStack) -> None:
    dns = udp_socket(stack, "dns")
    with pytest.raises(SocketActivationError) as caught:
        match_binds([parse_bind("tcp://0.0.0.0:53?name=dns")], [dns])
    assert caught.value.problems[0] == (
        f"bind tcp://0.0.0.0:53?name=dns wants a TCP socket, but the inherited socket(s) named 'dns' are "
        f"fd {dns.fd} 'dns' (UDP 127.0.0.1:{dns.address[1]}, not listening)"  # type: ignore[index]
    )


def test_a_name_no_socket_has(stack: ExitStack) -> None:
    web = tcp_listener(stack, "web")
    with pytest.raises(SocketActivationError) as caught:
        match_binds([parse_bind("tcp://0.0.0.0:80?name=www")], [web])
    assert caught.value.problems[0].startswith("bind tcp://0.0.0.0:80?name=www: no inherited socket is named 'www' ")
    assert caught.value.problems[1].endswith("is claimed by no bind")


def test_more_binds_than_sockets(stack: ExitStack) -> None:
    web = tcp_listener(stack)
    with pytest.raises(SocketActivationError) as caught:
        match_binds([parse_bind("tcp://0.0.0.0:80"), parse_bind("tcp://0.0.0.0:81")], [web])
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("bind tcp://0.0.0.0:81: no inherited TCP socket is left for it")


def test_no_sockets_at_all(stack: ExitStack) -> None:
    with pytest.raises(SocketActivationError, match=r"^bind unix:/a: no inherited Unix stream .* \(none inherited\)$"):
        match_binds([parse_bind("unix:/a")], [])


def test_a_stream_socket_that_is_not_listening_is_refused(stack: ExitStack) -> None:
    # Accept=yes passes one accepted connection per service instance, not a listener.
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.bind(("127.0.0.1", 0))
    connection = InheritedSocket.from_socket(sock, "connection")
    with pytest.raises(SocketActivationError, match=r"is a stream socket that is not listening \(Accept=yes\?\)$"):
        match_binds([parse_bind("tcp://0.0.0.0:80")], [connection])


def test_a_bind_given_twice(stack: ExitStack) -> None:
    with pytest.raises(SocketActivationError, match=r"^bind tcp://0.0.0.0:80 is given twice$"):
        match_binds([parse_bind("tcp://0.0.0.0:80")] * 2, [tcp_listener(stack), tcp_listener(stack)])
