"""Process-tree accounting from /proc, shared by run.py and callgrind.py.

Every server runs in its own session (``start_new_session=True``), so its
process group id is its pid and every process it forks stays in that group.
The tree is therefore "all processes whose pgrp is the server's pid".
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the ``(comm)`` field, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    return data[data.rfind(b")") + 2 :].decode().split()


def group_pids(pgid: int) -> list[int]:
    """Pids of all live (or zombie, not yet reaped) processes in group pgid."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        # after comm: [0]=state [1]=ppid [2]=pgrp
        if fields is not None and int(fields[2]) == pgid:
            pids.append(int(name))
    return pids


def tree_cpu_s(pgid: int) -> float:
    """utime+stime of every process in the group, plus cutime+cstime.

    cutime/cstime are the times of children that a process has already reaped
    (waited for), so the CPU of short-lived forked children is included once
    they are reaped and, before that, through their own /proc entry.  Threads
    are included in their process's utime/stime (live and exited threads).
    """
    total = 0
    for pid in group_pids(pgid):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # utime, stime, cutime, cstime are stat fields 14-17 (1-based), i.e.
        # indices 11-14 after the comm field
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def _status_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
                elif key == "Threads":
                    out[key] = int(value)
    except (OSError, ValueError):
        pass
    return out


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class MemorySample:
    rss_kib: int = 0  # sum of VmRSS
    hwm_kib: int = 0  # sum of VmHWM (each process's own peak RSS)
    pss_kib: int = 0  # sum of Pss (shared pages split between sharers)
    processes: int = 0
    threads: int = 0


def sample_memory(pgid: int) -> MemorySample:
    s = MemorySample()
    for pid in group_pids(pgid):
        st = _status_kib(pid)
        if not st:
            continue  # zombie or gone
        s.rss_kib += st.get("VmRSS", 0)
        s.hwm_kib += st.get("VmHWM", 0)
        s.pss_kib += _pss_kib(pid)
        s.processes += 1
        s.threads += st.get("Threads", 0)
    return s


@dataclass
class ServerConnections:
    """The server port's TCP connections, from the kernel's socket tables."""

    held: int = 0  # accepted and still open in some process of the server
    queued: int = 0  # handshake done, waiting in the listen backlog for accept()


_TCP_LISTEN = "0A"
_TCP_ESTABLISHED = "01"


def _proc_net_address(host: str, port: int) -> tuple[str, str]:
    """``host:port`` as /proc/net/tcp and /proc/net/tcp6 print it (IPv4, or v4-mapped in tcp6)."""
    packed = socket.inet_aton(host)
    v4 = f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"
    mapped = "0000000000000000" + "FFFF0000" + v4  # ::ffff:a.b.c.d, in 32-bit words of host order
    return v4, mapped


def server_connections(port: int, host: str = "127.0.0.1") -> ServerConnections:
    """Count the connections to ``host:port`` in /proc/net/tcp and tcp6.

    A socket the server has accept()ed has an inode (it is a file in some
    process); one still in the accept queue has none yet (inode 0), and
    neither has one the server has closed (FIN_WAIT, TIME_WAIT).  So
    "held" counts what the server took, whatever its process layout, and
    "queued" what waits in its backlog.  The listening socket is left out.
    The whole local address is compared, not only the port: another
    process's socket on [::1] or 127.0.0.2 can have the same port number.
    """
    out = ServerConnections()
    wanted = _proc_net_address(host, port)
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if local not in wanted or state == _TCP_LISTEN:
                        continue
                    if inode != "0":
                        out.held += 1
                    elif state == _TCP_ESTABLISHED:
                        out.queued += 1
        except OSError:
            continue
    return out


def main_hwm_kib(pid: int) -> int:
    return _status_kib(pid).get("VmHWM", 0)


@dataclass
class MemoryPeaks:
    rss_kib: int = 0
    hwm_kib: int = 0
    pss_kib: int = 0
    processes: int = 0
    threads: int = 0
    samples: int = 0

    def update(self, s: MemorySample) -> None:
        self.rss_kib = max(self.rss_kib, s.rss_kib)
        self.hwm_kib = max(self.hwm_kib, s.hwm_kib)
        self.pss_kib = max(self.pss_kib, s.pss_kib)
        self.processes = max(self.processes, s.processes)
        self.threads = max(self.threads, s.threads)
        self.samples += 1


@dataclass
class MemorySampler:
    """Samples the memory of a process group periodically in a thread."""

    pgid: int
    interval: float = 0.1
    peaks: MemoryPeaks = field(default_factory=MemoryPeaks)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mem-sampler", daemon=True)
        self._thread.start()

    def sample_now(self) -> None:
        self.update(sample_memory(self.pgid))

    def update(self, sample: MemorySample) -> None:
        """Count a sample taken elsewhere (e.g. at a loadgen marker) in the peaks."""
        with self._lock:
            self.peaks.update(sample)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_now()
            self._stop.wait(self.interval)

    def stop(self) -> MemoryPeaks:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.peaks


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.01)
    return False


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat; busy excludes idle and iowait."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                nums = [int(v) for v in vals[:8]]  # user nice system idle iowait irq softirq steal
                total = sum(nums)
                out[int(name[3:])] = (total - nums[3] - nums[4], total)
    return out


def cpu_busy_pct(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[int, float]:
    """Busy percentage of each CPU between two cpu_times() snapshots."""
    pct = {}
    for cpu, (busy1, total1) in after.items():
        busy0, total0 = before.get(cpu, (busy1, total1))
        pct[cpu] = 100.0 * (busy1 - busy0) / max(total1 - total0, 1)
    return pct
