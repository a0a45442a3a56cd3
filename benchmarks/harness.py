"""Building loadgen, starting and stopping servers, running loadgen.

Shared by run.py (wall-clock benchmarks) and callgrind.py (instruction
counts).  Only the standard library is used.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from servers import ServerSpec

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BIN_DIR = BENCH_DIR / "bin"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN = BIN_DIR / "loadgen"
RESULTS_DIR = BENCH_DIR / "results"
RAW_DIR = RESULTS_DIR / "raw"

# Only loopback targets, ever (loadgen refuses anything else as well).
LISTEN_ADDRESS = "127.0.0.1:0"
TARGET_HOST = "127.0.0.1"


class ServerSkipped(Exception):
    """The server cannot run here (e.g. a missing optional dependency)."""


class ServerFailed(Exception):
    """The server did not start, or died."""


def build_c(source: Path, binary: Path) -> Path:
    """Compile ``source`` with gcc -O2 into ``binary`` (if out of date).

    gcc writes a temporary file that is renamed into place, so a server
    started while another process builds never execs a half-written binary.
    """
    BIN_DIR.mkdir(exist_ok=True)
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    tmp = binary.with_name(f".{binary.name}.{os.getpid()}")
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(source)]
    try:
        subprocess.run(cmd, check=True, timeout=120)
        os.replace(tmp, binary)
    finally:
        tmp.unlink(missing_ok=True)
    return binary


def build_loadgen() -> Path:
    """Compile loadgen.c with gcc -O2 into benchmarks/bin/ (if out of date)."""
    return build_c(LOADGEN_SRC, LOADGEN)


# The C reference servers (servers/<name>.c, started through servers/<name>.py)
C_SERVERS = ("c_epoll_echo",)


def build_c_servers() -> list[Path]:
    """Build every C reference server into benchmarks/bin/ (if out of date)."""
    return [build_c(BENCH_DIR / "servers" / f"{name}.c", BIN_DIR / name) for name in C_SERVERS]


# hold_10000's 10,000 sockets, with room to spare
WANTED_NOFILE = 1 << 16


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the new soft limit.

    If the hard limit is below WANTED_NOFILE, try to raise it as well (which
    only a privileged process may).  The servers inherit the limits (so a
    server can hold hold_10000's connections where the login default is
    1024); loadgen raises its own as well.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < WANTED_NOFILE:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (WANTED_NOFILE, WANTED_NOFILE))
            soft = hard = WANTED_NOFILE
        except (ValueError, OSError):
            pass
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_prefix(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def server_env() -> dict[str, str]:
    """The servers' environment: the repository's src/ first on PYTHONPATH."""
    env = dict(os.environ)
    src = str(REPO_DIR / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    # The same allocator state for every server: glibc's mmap threshold is
    # dynamic, and a process that happened to free a large block early reads
    # into heap memory while its peer pays mmap+munmap per recv(256 KiB).
    # Fixing both thresholds compares servers, not allocator history.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "1048576")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "2097152")
    return env


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class ServerExit:
    returncode: int | None
    clean: bool  # exited by itself, status 0, within the grace period
    report: dict[str, Any] | None  # the server's own EXIT line
    stderr_lines: int
    stderr_head: str


@dataclass
class ServerProcess:
    """One server under test, in its own session / process group.

    ``stop()`` always leaves nothing behind: SIGTERM to the server, a grace
    period for a clean exit, then SIGKILL to the whole process group.
    """

    spec: ServerSpec
    python: str
    cpu: int | None = None
    wrapper: Sequence[str] = ()  # e.g. valgrind
    stderr_path: Path | None = None
    args: Sequence[str] | None = None  # default: spec.args
    env: dict[str, str] = field(default_factory=server_env)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _stdout_tail: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    _stderr_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> int:
        raise_nofile_limit()  # inherited by the server
        cmd = [
            *pin_prefix(self.cpu),
            *self.wrapper,
            self.python,
            str(self.spec.script),
            LISTEN_ADDRESS,
            *(self.spec.args if self.args is None else self.args),
        ]
        if self.stderr_path is not None:
            self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
            self._stderr_file = open(self.stderr_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file if self._stderr_file else subprocess.DEVNULL,
            start_new_session=True,
            env=self.env,
            cwd=REPO_DIR,
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerFailed(f"no READY line within {timeout:.0f}s")
                try:
                    line = self._lines.get(timeout=remaining)
                except queue.Empty:
                    continue
                if line is None:
                    rc = self.proc.wait(timeout=5)
                    raise ServerFailed(f"exited with status {rc} before READY{self._stderr_hint()}")
                if line.startswith("READY "):
                    self.port = int(line.split()[1])
                    return self.port
                if line.startswith("SKIP "):
                    raise ServerSkipped(line[5:].strip())
        except BaseException:
            self.stop(grace=1.0)
            raise

    def _read_stdout(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self._stdout_tail.append(line)
            del self._stdout_tail[:-20]
            self._lines.put(line)
        self._lines.put(None)

    def _stderr_hint(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        text = self.stderr_path.read_text(errors="replace").strip().splitlines()
        return f": {text[-1]}" if text else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> ServerExit:
        """SIGTERM, wait for a clean exit, then SIGKILL the process group."""
        clean = False
        rc: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.send_signal(signal.SIGTERM)
                    rc = self.proc.wait(timeout=grace)
                    clean = rc == 0
                except subprocess.TimeoutExpired:
                    pass
            else:
                rc = self.proc.returncode
            # whatever is left in the group (stuck server, orphaned children)
            _kill_group(self.proc.pid, signal.SIGKILL)
            if rc is None:
                try:
                    rc = self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    rc = None
            if self._reader is not None:
                self._reader.join(timeout=5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        report = None
        for line in self._stdout_tail:
            if line.startswith("EXIT "):
                try:
                    report = json.loads(line[5:])
                except ValueError:
                    pass
        stderr_lines, head = 0, ""
        if self.stderr_path is not None and self.stderr_path.exists():
            text = self.stderr_path.read_text(errors="replace").splitlines()
            stderr_lines = len(text)
            head = next((t for t in text if t.strip()), "")
            if not text:
                self.stderr_path.unlink()
        return ServerExit(rc, clean, report, stderr_lines, head[:200])


@dataclass(frozen=True)
class LoadgenArgs:
    scenario: str
    connections: int
    size: int
    duration: float
    warmup: float
    timeout_ms: float
    max_requests: int | None = None
    hold_timeout: float | None = None
    connect_batch: int | None = None
    # slowloris: attacking connections, their pace, and the new-connection probes
    slow: int | None = None
    slow_interval: float | None = None
    slow_rate: float | None = None
    probe_interval_ms: float | None = None
    probe_timeout_ms: float | None = None
    # loadgen waits at its "held" and "done" markers until on_phase has returned
    sync: bool = False

    def argv(self, port: int) -> list[str]:
        argv = [
            "--target", f"{TARGET_HOST}:{port}",
            "--scenario", self.scenario,
            "--connections", str(self.connections),
            "--size", str(self.size),
            "--duration", f"{self.duration:g}",
            "--warmup", f"{self.warmup:g}",
            "--timeout-ms", f"{self.timeout_ms:g}",
        ]  # fmt: skip
        if self.max_requests is not None:
            argv += ["--max-requests", str(self.max_requests)]
        if self.hold_timeout is not None:
            argv += ["--hold-timeout", f"{self.hold_timeout:g}"]
        if self.connect_batch is not None:
            argv += ["--connect-batch", str(self.connect_batch)]
        for flag, value in (
            ("--slow", self.slow),
            ("--slow-interval", self.slow_interval),
            ("--slow-rate", self.slow_rate),
            ("--probe-interval-ms", self.probe_interval_ms),
            ("--probe-timeout-ms", self.probe_timeout_ms),
        ):
            if value is not None:
                argv += [flag, f"{value:g}"]
        if self.sync:
            argv.append("--sync-stdin")
        return argv

    def wall_limit(self) -> float:
        """An upper bound for loadgen's run time (it stops itself before)."""
        hold = 2 * (self.hold_timeout or 10.0)
        probe = (self.probe_timeout_ms or 1000.0) / 1000
        sync = 10.0 if self.sync else 0.0  # loadgen waits up to 5 s at each of two markers
        return self.warmup + self.duration + hold + self.timeout_ms / 1000 + probe + sync + 30


def run_loadgen(
    args: LoadgenArgs,
    port: int,
    cpu: int | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run loadgen once and return its JSON report.

    ``on_phase`` is called (from a reader thread) with "held" (hold, slowloris:
    the connections are open), "measure", "drain" and "done" as loadgen
    passes those points.  With ``args.sync`` loadgen waits at "held" and
    "done" (connections still open) until ``on_phase`` has returned.  loadgen
    is killed (process group) if it overruns its own limits.
    """
    cmd = [*pin_prefix(cpu), str(LOADGEN), *args.argv(port)]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if args.sync else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    stderr_lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line.startswith("phase "):
                phase = line[6:]
                try:
                    if on_phase is not None:
                        on_phase(phase)
                finally:
                    if args.sync and phase in ("held", "done"):
                        _release(proc)
            else:
                stderr_lines.append(line)

    stdout_chunks: list[bytes] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        stdout_chunks.append(proc.stdout.read())

    readers = [
        threading.Thread(target=read_stderr, daemon=True),
        threading.Thread(target=read_stdout, daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=args.wall_limit())
    except BaseException:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        for reader in readers:
            reader.join(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
    out = b"".join(stdout_chunks)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen exited {proc.returncode}: {' | '.join(stderr_lines)[:300]}")
    try:
        return json.loads(out)
    except ValueError as exc:
        raise RuntimeError(f"loadgen printed no JSON: {out[:200]!r}") from exc


def _release(proc: subprocess.Popen[bytes]) -> None:
    """Let loadgen go on from a synchronised marker (it gives up after 5 s anyway)."""
    if proc.stdin is None:
        return
    try:
        proc.stdin.write(b"\n")
        proc.stdin.flush()
    except (OSError, ValueError):
        pass


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "uname": " ".join(os.uname()),
        "kernel": platform.release(),
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
    }
