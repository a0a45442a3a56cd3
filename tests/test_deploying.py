"""docs/deploying.md's configurations, run as the page writes them.

The test reads the page's fenced blocks (the ones whose first line is a
comment naming a file: the systemd units, the Kubernetes manifest, the
HAProxy config, the handler module) and changes only what names a place on a
real machine, as the page's last section lists: the paths under /opt/myapp
(the test's own ``sockserve`` and a temporary application directory holding
the page's handler module), the ports 9000 and 9100 (free ones), the backend
addresses (127.0.0.1) and the user ``myapp`` (``nobody``).

systemd is played by the tests' shared fake service manager
(tests/fake_systemd.py): the test binds the socket unit's socket, and the
manager starts the service unit's ``ExecStart=`` the way systemd does (in
``WorkingDirectory=``, the socket on descriptor 3 with ``LISTEN_FDS``,
``LISTEN_PID``, ``LISTEN_FDNAMES``, a notification socket in
``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` from ``WatchdogSec=``, a clean
environment), and collects the notifications with the sender's pid
(``SO_PASSCRED``), as systemd checks ``NotifyAccess=main``. The kubelet is
played by plain HTTP GETs on the probes' paths and named ports. HAProxy is the
real one (tests/peers/peers.py).

Every process started here runs in its own session and is killed with its
group if a test ends early; every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .conftest import HAS_IPV6
from .fake_systemd import ServiceManager
from .helpers import connect, recv_line
from .peers.peers import HAProxy, free_port, require_program

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "deploying.md"
WAIT = 20.0  # seconds: a start or a stop on a loaded machine

# The files the page shows, by the name in their first line.
SOCKET_UNIT = "/etc/systemd/system/myapp.socket"
SERVICE_UNIT = "/etc/systemd/system/myapp.service"
HANDLERS = "myapp/handlers.py"
MANIFEST = "kubernetes/myapp.yaml"
HAPROXY_CONFIG = "/etc/haproxy/haproxy.cfg"

# What the page's configurations name that this machine does not have.
PAGE_SOCKSERVE = "/opt/myapp/venv/bin/sockserve"
PAGE_APP_DIR = "/opt/myapp"
SERVICE_PORT = 9000
ADMIN_PORT = 9100
SERVICE_USER = "nobody"  # for the page's user myapp; its group: nobody's own


def page_files() -> dict[str, str]:
    """The page's fenced blocks whose first line is a comment naming a file
    (``# /etc/systemd/system/myapp.socket``), by that name; the text as the
    reader sees it, comment included."""
    files: dict[str, str] = {}
    block: list[str] | None = None
    for line in PAGE.read_text(encoding="utf-8").splitlines(keepends=True):
        if block is None:
            if line.startswith("```"):
                block = []
        elif line.startswith("```"):
            first = block[0].split() if block else []
            if len(first) >= 2 and first[0] == "#" and "/" in first[1]:
                assert first[1] not in files, f"{PAGE}: two blocks named {first[1]}"
                files[first[1]] = "".join(block)
            block = None
        else:
            block.append(line)
    return files


def sockserve_program() -> str:
    """The ``sockserve`` command of the Python running the tests (its venv's bin)."""
    path = Path(sys.executable).parent / "sockserve"
    if not path.exists():
        found = shutil.which("sockserve")
        assert found is not None, f"no sockserve command beside {sys.executable} nor on PATH"
        return found
    return str(path)


def localize(text: str, app_dir: str, ports: Mapping[int, int] | None = None) -> str:
    """The page's text with this machine's paths and the ``ports`` given ({9000: 41234})."""
    text = text.replace(PAGE_SOCKSERVE, sockserve_program()).replace(PAGE_APP_DIR, app_dir)
    group = grp.getgrgid(pwd.getpwnam(SERVICE_USER).pw_gid).gr_name
    text = text.replace("--user myapp", f"--user {SERVICE_USER}").replace("--group myapp", f"--group {group}")
    for old, new in (ports or {}).items():
        text = re.sub(rf"(?<![\w.]){old}(?!\d)", str(new), text)
    return text


@pytest.fixture
def app_dir() -> Iterator[str]:
    """/opt/myapp: the page's handler module, readable by ``nobody``; a
    directory with a short path (notification sockets go under it)."""
    path = tempfile.mkdtemp(prefix="myapp-", dir="/tmp")
    try:
        os.chmod(path, 0o755)  # mkdtemp's 0700 would keep the service's user out
        module = Path(path, HANDLERS)
        module.parent.mkdir(mode=0o755)
        module.write_text(page_files()[HANDLERS], encoding="utf-8")
        os.chmod(module, 0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def echo(address: Any, payload: bytes = b"hello\n") -> bytes:
    """One request to the page's Echo handler: connect, send a line, read it back, close."""
    with connect(address) as sock:
        sock.sendall(payload)
        return recv_line(sock)


# --- systemd -----------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections and their settings (a key given twice: two values),
    lines ending in a backslash joined with the next, as systemd reads them."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, separator, value = line.partition("=")
        assert separator, f"not a setting: {raw!r}"
        assert current is not None, f"a setting before the first section: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def setting(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    """The one value of ``key``."""
    values = unit[section][key]
    assert len(values) == 1, f"[{section}] {key}= is given {len(values)} times"
    return values[0]


def command_line(value: str, mainpid: int | None = None) -> list[str]:
    """An ``Exec*=`` value split as systemd splits it, for the lines the page
    writes: no specifiers (``%``), no prefixes (``-``, ``@``...), ``$MAINPID`` only."""
    assert "%" not in value, f"a specifier the test cannot expand: {value!r}"
    assert value[:1] not in "-@:+!", f"a prefix the test does not apply: {value!r}"
    if mainpid is not None:
        value = value.replace("$MAINPID", str(mainpid))
    assert "$" not in value, f"a variable the test cannot expand: {value!r}"
    return shlex.split(value)


def seconds(value: str) -> float:
    """A systemd time span, in the forms the page uses: ``10``, ``10s``."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:s|sec)?", value)
    assert found, f"a time span the test cannot read: {value!r}"
    return float(found[1])


class Service:
    """A service's main process, started by :func:`start_service`; its
    output (the journal's) in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, unit: dict[str, dict[str, list[str]]]) -> None:
        self.proc = proc
        self.log = log
        self.unit = unit

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def kill_signal(self) -> signal.Signals:
        return signal.Signals[setting(self.unit, "Service", "KillSignal")]

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the service did not exit within {timeout}s:\n{self.output()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            # Its whole group, while it surely is its: the leader is not reaped yet.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(WAIT)


def unit_socket(socket_unit: dict[str, dict[str, list[str]]]) -> tuple[str, socket.socket]:
    """The socket unit's socket, bound to a free port, and its name. The page's
    ``ListenStream=PORT``: as systemd, IPv6 taking IPv4 too (IPv4 without IPv6).
    The caller closes it (systemd's own copy, open while the service restarts)."""
    listen = setting(socket_unit, "Socket", "ListenStream")
    assert listen.isdigit(), f"ListenStream={listen}: the test binds a port alone"
    name = setting(socket_unit, "Socket", "FileDescriptorName")
    if HAS_IPV6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        host = "::"
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        host = "0.0.0.0"
    try:
        sock.bind((host, 0))
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return name, sock


def start_service(
    manager: ServiceManager,
    service_unit: dict[str, dict[str, list[str]]],
    sockets: list[tuple[str, socket.socket]],
    log: Path,
) -> Service:
    """Run the unit's ``ExecStart=`` as systemd would, with ``sockets`` passed
    (on 3, 4... with ``LISTEN_*`` naming them), ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``
    from ``WatchdogSec=``, in ``WorkingDirectory=``, in a clean environment and
    a session of its own, as root (no ``User=`` in the page's unit)."""
    section = service_unit["Service"]
    assert "User" not in section, "the service is started as the test runs: root"
    assert "Group" not in section, "the service is started as the test runs: root"
    assert os.geteuid() == 0, "a service without User= runs as root"
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "INVOCATION_ID": os.urandom(16).hex(),
    }
    if "WatchdogSec" in section:
        env["WATCHDOG_USEC"] = str(int(seconds(setting(service_unit, "Service", "WatchdogSec")) * 1_000_000))
        env["WATCHDOG_PID"] = "{self}"
    with open(log, "ab") as out:
        proc = manager.start(
            command_line(setting(service_unit, "Service", "ExecStart")),
            [sock for _, sock in sockets],
            names=[name for name, _ in sockets],
            env=env,
            environ={},
            cwd=setting(service_unit, "Service", "WorkingDirectory"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(proc, log, service_unit)


def wait_for(manager: ServiceManager, line: str, service: Service, timeout: float = WAIT) -> int:
    """The index (in ``manager.notify.received``, ``.senders``, ``.arrived``)
    of the next notification from ``service`` on that holds ``line``
    (``READY=1``), waiting up to ``timeout``; failing at once, with its
    output, if the service ends first."""
    deadline = time.monotonic() + timeout
    while True:
        # In short slices, so a service that exited is seen at once.
        try:
            manager.notify.wait_for(line, timeout=max(0.0, min(0.1, deadline - time.monotonic())))
        except AssertionError:
            ended = service.proc.poll() is not None
            if ended or time.monotonic() >= deadline:
                why = "the service ended" if ended else f"nothing within {timeout}s"
                raise AssertionError(
                    f"no {line} ({why}); received {manager.notify.received}\nthe service's output:\n{service.output()}"
                ) from None
            continue
        return manager.notify.found


def fields(message: str) -> dict[str, str]:
    """A notification's ``KEY=value`` lines."""
    return dict(line.split("=", 1) for line in message.split("\n") if "=" in line)


def units(app_dir: str, ports: Mapping[int, int] | None = None) -> tuple[str, str]:
    """The page's socket and service units, as this machine runs them."""
    files = page_files()
    return localize(files[SOCKET_UNIT], app_dir, ports), localize(files[SERVICE_UNIT], app_dir, ports)


def systemd_version() -> int:
    out = subprocess.run(
        [require_program("systemd-analyze"), "--version"], capture_output=True, text=True, timeout=WAIT, check=True
    )
    found = re.match(r"systemd (\d+)", out.stdout)
    assert found, out.stdout
    return int(found[1])


def verify(directory: Path, socket_text: str, service_text: str) -> str:
    """``systemd-analyze verify`` on the two units; what it says (nothing when all is well)."""
    program = require_program("systemd-analyze")
    (directory / "myapp.socket").write_text(socket_text, encoding="utf-8")
    (directory / "myapp.service").write_text(service_text, encoding="utf-8")
    result = subprocess.run(
        [program, "verify", str(directory / "myapp.socket"), str(directory / "myapp.service")],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        cwd=directory,
    )
    return f"{result.stdout}{result.stderr}" + (f"(exit status {result.returncode})" if result.returncode else "")


def test_systemd_units_pass_systemd_analyze_verify(app_dir: str, tmp_path: Path) -> None:
    socket_text, service_text = units(app_dir)
    assert verify(tmp_path, socket_text, service_text) == ""


def test_notify_reload_is_for_systemd_253_and_later(app_dir: str, tmp_path: Path) -> None:
    # The page says: on systemd >= 253, Type=notify-reload without ExecReload=;
    # 252 refuses the type. The variant, checked by the systemd at hand.
    socket_text, service_text = units(app_dir)
    assert "Type=notify\n" in service_text
    assert "ExecReload=" in service_text
    variant = re.sub(r"^ExecReload=.*\n", "", service_text.replace("Type=notify\n", "Type=notify-reload\n"), flags=re.M)
    said = verify(tmp_path, socket_text, variant)
    if systemd_version() >= 253:
        assert said == ""
    else:
        assert "Failed to parse service type, ignoring: notify-reload" in said, said


def test_systemd_exec_start_passes_check(app_dir: str) -> None:
    _, service_text = units(app_dir)
    unit = parse_unit(service_text)
    argv = command_line(setting(unit, "Service", "ExecStart"))
    result = subprocess.run([*argv, "--check"], capture_output=True, text=True, timeout=WAIT, check=False, cwd=app_dir)
    assert result.returncode == 0, result.stderr
    checked = tomllib.loads(result.stdout)
    assert checked["handler"] == "myapp.handlers:Echo"
    assert checked["drain_delay"] + checked["grace"] < seconds(setting(unit, "Service", "TimeoutStopSec"))


def proc_ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/PID/status."""
    ids: dict[str, list[int]] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                ids[key] = [int(n) for n in value.split()]
    return ids


@pytest.mark.slow
def test_systemd_service_runs_as_systemd_runs_it(app_dir: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the unit starts as root and drops to its --user, which needs root")
    page_socket_unit = parse_unit(page_files()[SOCKET_UNIT])
    with contextlib.ExitStack() as stack:
        run_dir = Path(app_dir, "run")
        run_dir.mkdir(mode=0o755)
        manager = stack.enter_context(ServiceManager(str(run_dir)))
        name, listener = unit_socket(page_socket_unit)
        stack.callback(listener.close)  # systemd's own copy: open while the service restarts
        port = listener.getsockname()[1]
        socket_text, service_text = units(app_dir, {SERVICE_PORT: port, ADMIN_PORT: free_port()})
        assert name == setting(parse_unit(socket_text), "Socket", "FileDescriptorName")
        unit = parse_unit(service_text)
        assert setting(unit, "Service", "Type") == "notify"
        service = start_service(manager, unit, [(name, listener)], run_dir / "journal.log")
        stack.callback(service.close)

        ready = wait_for(manager, "READY=1", service)
        assert manager.notify.senders[ready] == service.pid, (
            "READY=1 must come from the main process (NotifyAccess=main)"
        )
        # The STATUS= line that the page shows `systemctl status` printing.
        (shown,) = re.findall(r'^ +Status: "(.*)"$', PAGE.read_text(encoding="utf-8"), flags=re.M)
        assert fields(manager.notify.received[ready]).get("STATUS") == shown
        nobody = pwd.getpwnam(SERVICE_USER)
        ids = proc_ids(service.pid)  # real, effective, saved and file system ids
        assert (ids["Uid"], ids["Gid"]) == ([nobody.pw_uid] * 4, [nobody.pw_gid] * 4)
        assert sorted(ids["Groups"]) == sorted(set(os.getgrouplist(SERVICE_USER, nobody.pw_gid)))
        # Served on the socket the manager bound and passed; nothing else listens on that port.
        assert echo(("127.0.0.1", port)) == b"hello\n"
        assert "inherited fd 3 'myapp'" in service.output()

        # ExecReload=: RELOADING=1 with the time it began, then READY=1.
        before = time.monotonic()
        reload = command_line(setting(unit, "Service", "ExecReload"), mainpid=service.pid)
        subprocess.run(reload, check=True, timeout=WAIT)
        reloading = wait_for(manager, "RELOADING=1", service)
        monotonic_usec = int(fields(manager.notify.received[reloading])["MONOTONIC_USEC"])
        assert before * 1e6 <= monotonic_usec <= manager.notify.arrived[reloading] * 1e6
        wait_for(manager, "READY=1", service)
        assert echo(("127.0.0.1", port), b"after the reload\n") == b"after the reload\n"

        # Pings at least once per WatchdogSec= (systemd kills the service when one is late).
        watchdog = seconds(setting(unit, "Service", "WatchdogSec"))
        # The last ping already read, if any (read as it came: the test was waiting for notifications
        # then), else the next; then the one after it.
        pings = [n for n, message in enumerate(manager.notify.received) if "WATCHDOG=1" in message.split("\n")]
        first = pings[-1] if pings else wait_for(manager, "WATCHDOG=1", service)
        second = wait_for(manager, "WATCHDOG=1", service, timeout=watchdog)
        assert manager.notify.arrived[second] - manager.notify.arrived[first] < watchdog
        assert {manager.notify.senders[n] for n in (first, second)} == {service.pid}

        # KillSignal=: STOPPING=1; a connection open before it is still served; a clean exit in time.
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"before the stop\n")
            assert recv_line(client) == b"before the stop\n"
            os.kill(service.pid, service.kill_signal())
            wait_for(manager, "STOPPING=1", service)
            client.sendall(b"while stopping\n")
            assert recv_line(client) == b"while stopping\n"
        assert service.wait(seconds(setting(unit, "Service", "TimeoutStopSec"))) == 0, service.output()

        # While no service runs, a connection waits in the socket's queue; the next start serves it.
        with connect(("127.0.0.1", port)) as late:
            late.sendall(b"queued\n")
            again = start_service(manager, unit, [(name, listener)], run_dir / "journal.log")
            stack.callback(again.close)
            wait_for(manager, "READY=1", again)
            assert recv_line(late) == b"queued\n"
        # A second SIGTERM ends the drain delay: the graceful stop at once.
        os.kill(again.pid, again.kill_signal())
        wait_for(manager, "STOPPING=1", again)
        os.kill(again.pid, again.kill_signal())
        assert again.wait(WAIT) == 0, again.output()


# --- Kubernetes --------------------------------------------------------------------


def manifest(app_dir: str, ports: Mapping[int, int] | None = None) -> dict[str, dict[str, Any]]:
    """The page's manifest, loaded, by kind."""
    yaml = pytest.importorskip("yaml")
    documents = list(yaml.safe_load_all(localize(page_files()[MANIFEST], app_dir, ports)))
    by_kind = {document["kind"]: document for document in documents}
    assert len(by_kind) == len(documents) == 2, [document["kind"] for document in documents]
    return by_kind


def option(args: list[str], name: str) -> str:
    """The value after ``name`` in a command line."""
    assert args.count(name) == 1, f"{name} once in {args}"
    return args[args.index(name) + 1]


def the_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def named_port(container: dict[str, Any], port: str | int) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [entry["containerPort"] for entry in container["ports"] if entry["name"] == port]
    assert isinstance(number, int)
    return number


def test_kubernetes_manifest_holds_together(app_dir: str) -> None:
    kinds = manifest(app_dir)
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    container = the_container(deployment)
    args = container["args"]
    assert args[:2] == ["serve", "myapp.handlers:Echo"]
    (service_port,) = service["spec"]["ports"]
    assert named_port(container, service_port["targetPort"]) == SERVICE_PORT
    assert option(args, "--bind").endswith(f":{SERVICE_PORT}")
    assert option(args, "--admin") == f"0.0.0.0:{ADMIN_PORT}"
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"
    assert liveness["httpGet"]["path"] == "/healthz"
    assert named_port(container, readiness["httpGet"]["port"]) == ADMIN_PORT
    assert named_port(container, liveness["httpGet"]["port"]) == ADMIN_PORT
    # The kubelet's budget counts from the preStop hook: it must cover the hook,
    # the drain delay and the grace period, or SIGKILL cuts the drain.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    budget = pod["spec"]["terminationGracePeriodSeconds"]
    assert pre_stop + float(option(args, "--drain-delay")) + float(option(args, "--grace")) < budget
    # The drain delay outlasts the readiness probe's detection of the 503.
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < float(option(args, "--drain-delay"))


def container_process(
    container: dict[str, Any], pod: dict[str, Any], log: Path, *extra: str, stdout: Path | None = None
) -> subprocess.Popen[bytes]:
    """The container's command and args, run as its securityContext's user in
    its workingDir; stderr (and stdout, unless ``stdout``) into ``log``."""
    context = pod["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/", "HOSTNAME": "myapp-0"}
    user: dict[str, Any] = {}
    if can_run_python_as(context["runAsUser"], context["runAsGroup"]):
        user = {"user": context["runAsUser"], "group": context["runAsGroup"], "extra_groups": []}
    with open(log, "ab") as err, open(stdout or log, "ab") as out:
        return subprocess.Popen(
            [*container["command"], *container["args"], *extra],
            cwd=container["workingDir"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            **user,
        )


def can_run_python_as(uid: int, gid: int) -> bool:
    """Whether a process of ``uid`` can run the tests' Python. An image's Python
    is the container user's to run; this machine's may not be (one installed
    under /root, mode 0700), and then the container runs as the test's user:
    what the test checks (probes, drain) does not depend on the user."""
    if os.geteuid() != 0:
        return False
    try:
        subprocess.run(
            [sys.executable, "-c", ""], user=uid, group=gid, extra_groups=[], timeout=WAIT, check=True, cwd="/"
        )
    except (PermissionError, subprocess.CalledProcessError):
        return False
    return True


def test_kubernetes_args_pass_check(app_dir: str, tmp_path: Path) -> None:
    deployment = manifest(app_dir)["Deployment"]
    container = the_container(deployment)
    log, out = tmp_path / "check.log", tmp_path / "check.toml"
    proc = container_process(container, deployment["spec"]["template"], log, "--check", stdout=out)
    try:
        assert proc.wait(WAIT) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(WAIT)
    checked = tomllib.loads(out.read_text())  # the effective settings, as TOML
    assert checked["drain_delay"] == float(option(container["args"], "--drain-delay"))
    assert checked["admin"] == option(container["args"], "--admin")


def probe(port: int, path: str) -> int:
    """An HTTP GET as the kubelet's probe sends it; the status, 0 when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.30\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n".encode()
            )
            status_line = recv_line(sock)
    except OSError:
        return 0
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


def succeeds(status: int) -> bool:
    return 200 <= status < 400  # the kubelet's rule


def wait_until_status(port: int, path: str, wanted: Any, proc: subprocess.Popen[bytes], log: Path) -> int:
    """Poll ``path`` until ``wanted(status)``; the status."""
    deadline = time.monotonic() + WAIT
    pause = threading.Event()
    while True:
        status = probe(port, path)
        if wanted(status):
            return status
        assert proc.poll() is None, f"the container exited ({proc.returncode}):\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{path} still answers {status}:\n{log.read_text()}"
        pause.wait(0.05)


@pytest.mark.slow
def test_kubernetes_pod_starts_probes_and_drains(app_dir: str, tmp_path: Path) -> None:
    ports = {SERVICE_PORT: free_port(), ADMIN_PORT: free_port()}
    deployment = manifest(app_dir, ports)["Deployment"]
    pod = deployment["spec"]["template"]
    container = the_container(deployment)
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    ready_port, live_port = named_port(container, readiness["port"]), named_port(container, liveness["port"])
    service_address = ("127.0.0.1", named_port(container, "service"))
    drain_delay = float(option(container["args"], "--drain-delay"))
    # The kubelet's budget counts from the preStop hook, whose sleep is the kubelet's, not run here.
    budget = pod["spec"]["terminationGracePeriodSeconds"] - container["lifecycle"]["preStop"]["sleep"]["seconds"]
    log = tmp_path / "container.log"
    proc = container_process(container, pod, log)
    try:
        wait_until_status(ready_port, readiness["path"], succeeds, proc, log)
        assert succeeds(probe(live_port, liveness["path"]))
        assert echo(service_address) == b"hello\n"
        # The kubelet: the preStop hook, then SIGTERM.
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert wait_until_status(ready_port, readiness["path"], lambda status: not succeeds(status), proc, log) == 503
        assert succeeds(probe(live_port, liveness["path"])), "a liveness failure would have the kubelet kill the drain"
        assert echo(service_address, b"while draining\n") == b"while draining\n"
        assert proc.wait(budget) == 0, log.read_text()
        assert time.monotonic() - stopped_at >= drain_delay, "it stopped listening before the drain delay ran out"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)


# --- HAProxy -----------------------------------------------------------------------


def haproxy_body(backends: list[tuple[int, int]]) -> str:
    """The page's HAProxy block for peers.HAProxy: the frontend on its free
    port, the servers (in order) on ``backends``' (service, admin) ports."""
    text = page_files()[HAPROXY_CONFIG].replace("{", "{{").replace("}", "}}")
    text, binds = re.subn(r"^(\s*bind )\S+", r"\1{listen}", text, flags=re.M)
    assert binds == 1, text
    servers = iter(backends)

    def server(found: re.Match[str]) -> str:
        service_port, admin_port = next(servers)
        options = re.sub(rf"\bport {ADMIN_PORT}\b", f"port {admin_port}", found["options"])
        assert f"port {admin_port}" in options, found[0]
        return f"{found['head']}127.0.0.1:{service_port}{options}"

    text, count = re.subn(r"^(?P<head>\s*server \S+ )\S+:\d+(?P<options>.*)$", server, text, flags=re.M)
    assert count == len(backends), text
    return text


def haproxy_servers() -> tuple[str, list[str]]:
    """The page's backend name and its servers' names."""
    text = page_files()[HAPROXY_CONFIG]
    (backend,) = re.findall(r"^backend (\S+)", text, flags=re.M)
    return backend, re.findall(r"^\s*server (\S+)", text, flags=re.M)


def drain_delay_of(unit: dict[str, dict[str, list[str]]]) -> float:
    return float(option(command_line(setting(unit, "Service", "ExecStart")), "--drain-delay"))


def test_haproxy_checks_take_an_instance_out_within_the_drain_delay(app_dir: str) -> None:
    # inter x fall + timeout check: the longest a readiness failure takes to mark a server DOWN.
    text = page_files()[HAPROXY_CONFIG]
    assert re.search(r"^\s*option httpchk GET /readyz$", text, flags=re.M)
    (check_timeout,) = re.findall(r"^\s*timeout check (\d+)s$", text, flags=re.M)
    servers = re.findall(r"^\s*server .* check port (\d+) inter (\d+)s fall (\d+) rise (\d+)$", text, flags=re.M)
    assert len(servers) == len(haproxy_servers()[1]) >= 2
    drain_delay = drain_delay_of(parse_unit(units(app_dir)[1]))
    for port, inter, fall, _rise in servers:
        assert int(port) == ADMIN_PORT
        assert int(inter) * int(fall) + int(check_timeout) < drain_delay


class Load:
    """A few clients sending requests through HAProxy, one connection each,
    with a short pause between them; every failure recorded."""

    def __init__(self, address: tuple[str, int], clients: int = 3) -> None:
        self.address = address
        self.done = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), name=f"client {n}") for n in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, client: int) -> None:
        sent = 0
        while not self._stop.is_set():
            payload = f"client {client} request {sent}\n".encode()
            try:
                answer = echo(self.address, payload)
            except OSError as exc:
                answer = repr(exc).encode()
            with self._lock:
                if answer == payload:
                    self.done += 1
                else:
                    self.failures.append(f"{payload!r} -> {answer!r}")
            sent += 1
            self._stop.wait(0.01)

    def wait_for_more(self, count: int) -> None:
        """Wait (bounded) until ``count`` more requests have succeeded."""
        with self._lock:
            target = self.done + count
        deadline = time.monotonic() + WAIT
        pause = threading.Event()
        while True:
            with self._lock:
                if self.done >= target:
                    return
            assert time.monotonic() < deadline, f"the clients are stuck: {self.done} done, {self.failures[:5]}"
            pause.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)


@pytest.mark.slow
def test_haproxy_takes_a_draining_instance_out_before_it_stops_listening(app_dir: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the unit starts as root and drops to its --user, which needs root")
    page_socket_unit = parse_unit(page_files()[SOCKET_UNIT])
    backend, names = haproxy_servers()
    with contextlib.ExitStack() as stack:
        instances = []
        for index in range(len(names)):
            host_dir = Path(app_dir, f"host{index}")
            host_dir.mkdir(mode=0o755)
            manager = stack.enter_context(ServiceManager(str(host_dir)))
            name, listener = unit_socket(page_socket_unit)
            stack.callback(listener.close)
            ports = (listener.getsockname()[1], free_port())
            unit = parse_unit(units(app_dir, {SERVICE_PORT: ports[0], ADMIN_PORT: ports[1]})[1])
            service = start_service(manager, unit, [(name, listener)], host_dir / "journal.log")
            stack.callback(service.close)
            instances.append((manager, service, ports))
        for manager, service, _ in instances:
            wait_for(manager, "READY=1", service)
        haproxy = stack.enter_context(HAProxy(haproxy_body([ports for _, _, ports in instances])))
        for name in names:
            haproxy.wait_for_status(name, "UP", backend)
        load = Load(haproxy.address)
        stack.callback(load.stop)
        # Both instances serve some of the load.
        deadline = time.monotonic() + WAIT
        pause = threading.Event()
        while not all(int(haproxy.server_stats(name, backend)["stot"]) > 0 for name in names):
            assert time.monotonic() < deadline, haproxy.stats()
            pause.wait(0.05)
        load.wait_for_more(10)

        manager, leaving, _ = instances[0]
        leaving_name = names[0]
        drain_delay = drain_delay_of(leaving.unit)
        os.kill(leaving.pid, leaving.kill_signal())
        haproxy.wait_for_status(leaving_name, "DOWN", backend, timeout=drain_delay + WAIT)
        # DOWN while the instance still accepts: its drain (closing the listener) had not begun.
        assert leaving.proc.poll() is None
        assert "stopping gracefully" not in leaving.output(), leaving.output()
        assert leaving.wait(seconds(setting(leaving.unit, "Service", "TimeoutStopSec"))) == 0, leaving.output()
        assert "stopping gracefully" in leaving.output(), "the line the DOWN check above relies on"
        load.wait_for_more(20)  # the other instance takes it all
        load.stop()

        assert load.failures == [], load.failures[:10]
        row = haproxy.server_stats(leaving_name, backend)
        # No request needed a second try: HAProxy never sent one to a closed listener.
        assert (row["econ"] or "0", row["wretr"] or "0", row["wredis"] or "0") == ("0", "0", "0"), row
        for manager, service, _ in instances[1:]:
            os.kill(service.pid, service.kill_signal())
            wait_for(manager, "STOPPING=1", service)
            os.kill(service.pid, service.kill_signal())  # ends the drain delay
            assert service.wait(WAIT) == 0, service.output()
