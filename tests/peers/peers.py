"""Real peers for the tests: HAProxy, nginx's stream module and ``openssl
s_client``, run as the programs our users put in front of (or against) their
servers.

``HAProxy(body)`` and ``Nginx(body)`` are context managers: each writes its
config into a private temp dir, checks it with the program's own checker
(``haproxy -c``, ``nginx -t``; a refused config fails with the program's
output), starts the program in the foreground, waits (bounded) until it is
ready, and on exit stops it and reaps it, killing it if it does not stop.

Neither program can report back the port of a port-0 bind, so each start
chooses a free port (bind port 0, read it, close) and retries with another
when the program could not bind it (another process took it meanwhile).

Readiness is polled through a side channel, never through the frontend port:
a probe connection there would be forwarded to the backend, and a test that
parses what its backend receives (or counts its connections) would see it.
HAProxy is ready when its stats socket answers (it serves it only once every
listener is bound); nginx, when its pid file names it (written after its
listening sockets are open).

``require_program(name)`` skips a test whose program is missing, except under
``CI=true``, where it fails: CI installs them all (``.ci/run``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

TIMEOUT = 10.0
START_ATTEMPTS = 5
# Debian puts haproxy and nginx in /usr/sbin, which a non-root PATH may lack.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_PACKAGES = {"haproxy": "haproxy", "nginx": "nginx libnginx-mod-stream", "openssl": "openssl"}
NGINX_STREAM_MODULES = (
    "/usr/lib/nginx/modules/ngx_stream_module.so",  # Debian, Ubuntu (libnginx-mod-stream)
    "/usr/lib64/nginx/modules/ngx_stream_module.so",  # Fedora, RHEL (nginx-mod-stream)
)


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI must run the tests against real peers (.ci/run installs them)")
    pytest.skip(what)


def require_program(name: str) -> str:
    """The path of ``name``; a skip (a failure under CI=true) when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))
    if path is None:
        _missing(f"{name} is not installed: apt-get install {_PACKAGES.get(name, name)}")
    assert path is not None
    return path


def require_nginx_stream_module() -> str:
    """The path of nginx's dynamic stream module, as ``require_program``."""
    for path in NGINX_STREAM_MODULES:
        if os.path.exists(path):
            return path
    _missing("nginx's stream module is not installed: apt-get install libnginx-mod-stream")
    raise AssertionError("unreachable")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago: bind port 0, read it, close. Racy by
    nature; the peers retry with another when their bind fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def refusing_address(host: str = "127.0.0.1") -> tuple[socket.socket, tuple[str, int]]:
    """A socket bound but not listening, and its address: a connection there
    is refused for as long as the socket stays open (a backend that is down,
    whose port no other process can take meanwhile). The caller closes it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    return sock, sock.getsockname()[:2]


def host_port(address: Any) -> str:
    """``host:port`` as both programs write it, IPv6 in brackets."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def haproxy_server_address(address: Any) -> str:
    """A backend address as HAProxy's ``server`` line takes it: ``host:port`` or ``unix@path``."""
    return f"unix@{address}" if isinstance(address, str) else host_port(address)


def nginx_upstream(address: Any) -> str:
    """A backend address as nginx's ``proxy_pass`` takes it: ``host:port`` or ``unix:path``."""
    return f"unix:{address}" if isinstance(address, str) else host_port(address)


def _wait(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(interval)
    return True


class _Program:
    """A server program run in the foreground from a config written into a temp dir."""

    name = ""
    config_name = ""

    def __init__(self, body: str, host: str = "127.0.0.1") -> None:
        """``body`` is formatted with ``port`` (the frontend's port, chosen
        free), ``listen`` (``host:port``) and ``dir`` (the temp dir)."""
        self.body = body
        self.host = host
        self.port = 0
        self.dir = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.program = require_program(self.name)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def output_path(self) -> str:
        return os.path.join(self.dir, "output.log")

    def output(self) -> str:
        """What the program wrote to its stdout and stderr (and nginx, to its error log)."""
        try:
            with open(self.output_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # Per program.
    def _config(self) -> str:
        raise NotImplementedError

    def _check_command(self, config: str) -> list[str]:
        raise NotImplementedError

    def _run_command(self, config: str) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _bind_failed(self, output: str) -> bool:
        raise NotImplementedError

    def __enter__(self) -> Any:
        # A short path: the HAProxy stats socket is an AF_UNIX path (~107 bytes at most).
        self.dir = tempfile.mkdtemp(prefix=f"{self.name}-", dir="/tmp")
        try:
            self._start()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._cleanup()

    def _start(self) -> None:
        config = os.path.join(self.dir, self.config_name)
        for _ in range(START_ATTEMPTS):
            self.port = free_port(self.host)
            with open(config, "w") as f:
                f.write(self._config())
            check = subprocess.run(self._check_command(config), capture_output=True, timeout=TIMEOUT, check=False)
            if check.returncode != 0:
                raise AssertionError(
                    f"{self.name} refused its config ({' '.join(self._check_command(config))}):\n"
                    f"{check.stdout.decode(errors='replace')}{check.stderr.decode(errors='replace')}\n"
                    f"the config:\n{self._numbered(config)}"
                )
            open(self.output_path, "wb").close()  # this attempt's output only
            # Appending: nginx writes its error log to the same file.
            with open(self.output_path, "ab") as out:
                self.proc = subprocess.Popen(
                    self._run_command(config),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    start_new_session=True,  # its workers can be killed with it, as a group
                )
            if self._wait_started():
                return
            proc = self.proc
            self._stop()
            if not self._bind_failed(self.output()):
                raise AssertionError(
                    f"{self.name} did not start (exit status {proc.returncode}):\n{self.output()}\n"
                    f"the config:\n{self._numbered(config)}"
                )
        raise AssertionError(f"{self.name} could not bind a free port in {START_ATTEMPTS} attempts:\n{self.output()}")

    def _wait_started(self) -> bool:
        """Wait (bounded) until the program is ready; False if it exits first or never gets ready."""
        proc = self.proc
        assert proc is not None
        return _wait(lambda: proc.poll() is not None or self._ready(), TIMEOUT) and proc.poll() is None

    @staticmethod
    def _numbered(path: str) -> str:
        with open(path) as f:
            return "".join(f"{n:3} {line}" for n, line in enumerate(f, 1))

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # Both programs' fast stop: connections still open are closed, not
            # waited for (HAProxy's SIGUSR1 and nginx's SIGQUIT would wait for
            # them); nginx's master still waits for its worker before it exits.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                # Its whole group (nginx's worker too), while the group is
                # surely its: the leader is not reaped yet, so its id cannot
                # have gone to another process.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(TIMEOUT)

    def _cleanup(self) -> None:
        try:
            self._stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class HAProxy(_Program):
    """HAProxy (``haproxy -db``: foreground, no daemon, one thread) running
    ``body``: its frontends and backends, formatted as ``_Program`` says. A
    ``global`` section (the stats socket at ``{dir}/admin.sock``) and a TCP
    ``defaults`` section with timeouts come first.

    ``HAProxy.tcp(backends, ...)`` writes the usual body: one frontend, one
    backend of servers, options for each.
    """

    name = "haproxy"
    config_name = "haproxy.cfg"

    GLOBAL = """\
global
    nbthread 1
    stats socket {dir}/admin.sock mode 600 level admin
    stats timeout 30s

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout check 2s

"""

    @classmethod
    def tcp(
        cls,
        backends: Sequence[Any],
        server_options: str = "",
        bind_options: str = "",
        host: str = "127.0.0.1",
        frontend_lines: str = "",
    ) -> HAProxy:
        """A frontend on ``host`` forwarding to ``backends`` ((host, port)
        addresses or Unix socket paths, servers ``s0``, ``s1``... of backend ``be``), each with
        ``server_options`` (``send-proxy``, ``check inter 100ms``...);
        ``bind_options`` (``ssl crt /path.pem``) follow the bind address."""
        servers = "".join(
            f"    server s{n} {haproxy_server_address(address)} {server_options}\n"
            for n, address in enumerate(backends)
        )
        body = (
            "frontend fe\n"
            f"    bind {{listen}} {bind_options}\n"
            f"{frontend_lines}"
            "    default_backend be\n\n"
            "backend be\n"
            f"{servers}"
        )
        return cls(body, host=host)

    def _config(self) -> str:
        fields = {"port": self.port, "listen": host_port(self.address), "dir": self.dir}
        return self.GLOBAL.format(**fields) + self.body.format(**fields)

    def _check_command(self, config: str) -> list[str]:
        return [self.program, "-c", "-f", config]

    def _run_command(self, config: str) -> list[str]:
        return [self.program, "-db", "-f", config]

    @property
    def stats_socket(self) -> str:
        return os.path.join(self.dir, "admin.sock")

    def _ready(self) -> bool:
        try:
            return "Pid:" in self.command("show info")
        except OSError:
            return False

    def _bind_failed(self, output: str) -> bool:
        return "cannot bind socket" in output

    def command(self, line: str) -> str:
        """One command on the stats socket (``show info``, ``show servers state``), its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(self.stats_socket)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> list[dict[str, str]]:
        """``show stat``: a row per frontend, server and backend (pxname, svname, status...)."""
        text = self.command("show stat").lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def server_stats(self, server: str, backend: str = "be") -> dict[str, str]:
        """A server's row of ``show stat``: status, check_status ("L4OK", "L4CON"...), chkfail..."""
        for row in self.stats():
            if row["pxname"] == backend and row["svname"] == server:
                return row
        raise AssertionError(f"no server {backend}/{server} in HAProxy's stats")

    def server_status(self, server: str, backend: str = "be") -> str:
        """The status HAProxy gives a server: "UP", "DOWN", "no check", "UP 1/2"..."""
        return self.server_stats(server, backend)["status"]

    def wait_for_status(self, server: str, status: str, backend: str = "be", timeout: float = TIMEOUT) -> None:
        """Wait (bounded) until a server's status is ``status``."""
        seen: list[str] = []

        def reached() -> bool:
            seen.append(self.server_status(server, backend))
            return seen[-1] == status

        assert _wait(reached, timeout, 0.05), f"{backend}/{server} is {seen[-1]!r}, not {status!r}:\n{self.output()}"


class Nginx(_Program):
    """nginx with its stream module (``-g 'daemon off;'``: foreground, one
    worker), running ``body`` inside ``stream { }``, formatted as ``_Program``
    says. Its error log (level info) goes to the output file.

    ``Nginx.proxy(backend, proxy_protocol=True)`` writes the usual body.
    """

    name = "nginx"
    config_name = "nginx.conf"

    def __init__(self, body: str, host: str = "127.0.0.1") -> None:
        super().__init__(body, host)
        self.module = require_nginx_stream_module()

    @classmethod
    def proxy(cls, backend: Any, proxy_protocol: bool = True, host: str = "127.0.0.1", extra: str = "") -> Nginx:
        """One stream server on ``host`` proxying to ``backend`` ((host, port)
        or a Unix socket path), sending it a
        PROXY v1 header when ``proxy_protocol``."""
        body = (
            "server {{\n"
            "    listen {listen};\n"
            f"    proxy_pass {nginx_upstream(backend)};\n"
            f"    proxy_protocol {'on' if proxy_protocol else 'off'};\n"
            "    proxy_connect_timeout 5s;\n"
            f"{extra}"
            "}}\n"
        )
        return cls(body, host=host)

    def _config(self) -> str:
        fields = {"port": self.port, "listen": host_port(self.address), "dir": self.dir}
        # Run as root, nginx starts its workers as "nobody", who cannot
        # connect to a backend's Unix socket in a test's private (0700) temp
        # dir: the workers stay root then. Not as root, the directive would
        # only earn a warning. The pid file is the readiness signal (module docstring).
        user = "user root;\n" if os.geteuid() == 0 else ""
        return (
            f"load_module {self.module};\n"
            f"{user}"
            "worker_processes 1;\n"
            f"pid {self.dir}/nginx.pid;\n"
            f"error_log {self.output_path} info;\n"
            "events {\n    worker_connections 128;\n}\n"
            "stream {\n" + self.body.format(**fields) + "}\n"
        )

    def _prefix_args(self, config: str) -> list[str]:
        # -e: the log nginx writes before it has read its config (Debian's
        # default is /var/log/nginx/error.log, which a non-root user cannot open).
        return [self.program, "-p", self.dir, "-e", self.output_path, "-c", config]

    def _check_command(self, config: str) -> list[str]:
        return [*self._prefix_args(config), "-t", "-q"]

    def _run_command(self, config: str) -> list[str]:
        return [*self._prefix_args(config), "-g", "daemon off;"]

    def _ready(self) -> bool:
        assert self.proc is not None
        try:
            with open(os.path.join(self.dir, "nginx.pid")) as f:
                return f.read().strip() == str(self.proc.pid)
        except FileNotFoundError:
            return False

    def _bind_failed(self, output: str) -> bool:
        return "Address already in use" in output


def openssl_s_client(
    address: Any,
    data: bytes = b"",
    *,
    cafile: str | None = None,
    servername: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    extra: Sequence[str] = (),
    timeout: float = TIMEOUT,
) -> tuple[int, str, str]:
    """Run ``openssl s_client`` against ``address``, send ``data``, and read
    until the server closes (``-ign_eof``: the end of ``data`` does not end
    the session); ``-verify_return_error`` makes a failed verification fail
    the handshake. Returns (returncode, stdout, stderr)."""
    command = [
        require_program("openssl"),
        "s_client",
        "-connect",
        host_port(address),
        "-ign_eof",
        "-verify_return_error",
    ]
    if servername is not None:
        command += ["-servername", servername]
    else:
        command += ["-noservername"]
    if cafile is not None:
        command += ["-CAfile", cafile]
    if cert is not None:
        command += ["-cert", cert]
    if key is not None:
        command += ["-key", key]
    command += list(extra)
    done = subprocess.run(command, input=data, capture_output=True, timeout=timeout, check=False)
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
