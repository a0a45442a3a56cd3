#!/usr/bin/env python3
"""Run the sockserve benchmarks: every selected server, every scenario, side by side.

    python3 benchmarks/run.py                      # everything, default settings
    python3 benchmarks/run.py --servers stdlib_thread,asyncio_streams \\
        --scenarios pingpong_1x64 --duration 5 --repeat 5
    python3 benchmarks/run.py --list

Each measurement starts a fresh server pinned to CPU 0 (taskset) and runs
loadgen pinned to CPU 1, then stops the server (SIGTERM, then SIGKILL to its
process group).  Every (server, scenario) pair is measured --repeat times,
round-robin, and the median and min-max spread are reported.  See README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import charts
from harness import (
    RAW_DIR,
    RESULTS_DIR,
    LoadgenArgs,
    ServerFailed,
    ServerProcess,
    ServerSkipped,
    build_c_servers,
    build_loadgen,
    machine_info,
    run_loadgen,
)
from procstat import (
    MemorySampler,
    cpu_busy_pct,
    cpu_times,
    main_hwm_kib,
    sample_memory,
    server_connections,
    tree_cpu_s,
)
from servers import SERVERS, ServerSpec

# The servers of issue 8's slow-client table: what runs slowloris_* when
# --servers is not given.
SLOW_CLIENT_SERVERS = (
    "stdlib_thread",
    "sockserve_thread",
    "sockserve_pool",
    "sockserve_prefork_pool",
    "sockserve_aio_streams_uvloop",
    "sockserve_aio_protocol_uvloop",
    "sockserve_framed",
)


# The reference rows every table shows beside sockserve, in the same run: the
# physical limit (a C epoll echo server) and the peers a reader judges
# sockserve by (the loops' own protocols and streams, gevent).  They run by
# default, also when --servers is given, and in the slowloris_* scenarios;
# --no-references leaves them out.
LIMIT_SERVERS = {"tcp": "c_epoll_echo", "udp": "c_epoll_echo_udp"}
REFERENCE_SERVERS = (
    "c_epoll_echo",
    "asyncio_protocol",
    "asyncio_streams",
    "uvloop_protocol",
    "uvloop_streams",
    "gevent_stream",
    "c_epoll_echo_udp",
    "asyncio_datagram",
    "uvloop_datagram",
)


@dataclass(frozen=True)
class Scenario:
    name: str
    protocol: str  # "tcp" | "udp"
    loadgen: str  # loadgen --scenario
    connections: int
    size: int
    headline: str  # what the scenario is for
    timeout_ms: float = 5000
    # slowloris: attacking connections (one byte every 5 s each) beside the normal ones
    slow: int = 0
    # the same scenario unattacked, run with this one and shown beside it
    unattacked: str | None = None
    # time for the setup ramps (overrides the --hold-timeout default)
    hold_timeout: float | None = None
    # servers that run it when --servers is not given (None: every server of its protocol)
    default_servers: tuple[str, ...] | None = None


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("pingpong_1x64", "tcp", "pingpong", 1, 64,
                 "latency: 1 connection, 64 B ping-pong (p50/p99)"),
        Scenario("pingpong_50x1k", "tcp", "pingpong", 50, 1024,
                 "throughput: 50 connections, 1 KiB ping-pong (requests/s)"),
        Scenario("connect_20", "tcp", "connect", 20, 64,
                 "connection per request, 20 in flight (connections/s)"),
        Scenario("hold_1000", "tcp", "hold", 1000, 64,
                 "1000 concurrent connections held open, then ping-pong over all"),
        Scenario("hold_10000", "tcp", "hold", 10000, 64,
                 "10,000 connections held, memory per connection, then ping-pong over all",
                 hold_timeout=30),
        Scenario("udp_64", "udp", "udp", 10, 64,
                 "UDP: 10 clients, 64 B datagram echo (no reply in 1 s = lost)", timeout_ms=1000),
        Scenario("slowloris_0", "tcp", "slowloris", 10, 64,
                 "slowloris_1000 unattacked: 10 clients ping-pong 64 B, a new connection every 30 ms",
                 hold_timeout=20, default_servers=SLOW_CLIENT_SERVERS),
        Scenario("slowloris_1000", "tcp", "slowloris", 10, 64,
                 "1,000 slow clients (1 byte / 5 s, no newline) while 10 clients ping-pong 64 B "
                 "and a new connection is tried every 30 ms",
                 slow=1000, unattacked="slowloris_0", hold_timeout=20, default_servers=SLOW_CLIENT_SERVERS),
    ]
}  # fmt: skip


def applies(
    spec: ServerSpec, scenario: Scenario, default_servers: bool = False, references: Collection[str] = ()
) -> bool:
    """Whether ``spec`` runs ``scenario``; ``default_servers``: --servers was not given.

    ``references`` run in every scenario of their protocol, also in those
    that restrict their default servers (slowloris_*).
    """
    if (
        default_servers
        and scenario.default_servers is not None
        and spec.name not in scenario.default_servers
        and spec.name not in references
    ):
        return False
    if spec.scenarios is not None:
        return scenario.name in spec.scenarios
    return spec.protocol == scenario.protocol


def parse_list(text: str, known: dict[str, Any], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


DEFAULT_HOLD_TIMEOUT = 5.0


def hold_timeout_for(scenario: Scenario, st: Settings) -> float:
    """--hold-timeout if given, else the scenario's own, else 5 s."""
    if st.hold_timeout is not None:
        return st.hold_timeout
    return scenario.hold_timeout or DEFAULT_HOLD_TIMEOUT


@dataclass
class Settings:
    duration: float
    warmup: float
    repeat: int
    hold_timeout: float | None  # None: the scenario's own, else DEFAULT_HOLD_TIMEOUT
    server_cpu: int | None
    loadgen_cpu: int | None
    sample_interval: float
    python: str


def measure(spec: ServerSpec, scenario: Scenario, rep: int, st: Settings, log_dir: Path) -> dict[str, Any]:
    """One measurement: fresh server, one loadgen run, server stopped."""
    record: dict[str, Any] = {"server": spec.name, "scenario": scenario.name, "repeat": rep}
    record["server_args"] = list(spec.args_for(scenario.name))
    server = ServerProcess(
        spec,
        st.python,
        cpu=st.server_cpu,
        stderr_path=log_dir / f"{spec.name}.{scenario.name}.{rep}.stderr",
        args=spec.args_for(scenario.name),
    )
    sampler: MemorySampler | None = None
    t0 = time.monotonic()
    record["loadavg_1min"] = os.getloadavg()[0]
    try:
        server.start()
        sampler = MemorySampler(server.pid, st.sample_interval)
        sampler.start()
        # before any connection: the base for memory growth per connection
        idle = sample_memory(server.pid)
        record["idle_rss_kib"] = idle.rss_kib
        record["idle_threads"] = idle.threads
        cpu_marks: dict[str, float] = {}
        core_marks: dict[str, dict[int, tuple[int, int]]] = {}
        lock = threading.Lock()

        def on_phase(phase: str) -> None:
            if phase in ("measure", "done"):
                value, cores = tree_cpu_s(server.pid), cpu_times()
                with lock:
                    cpu_marks[phase] = value
                    core_marks[phase] = cores
            if phase in ("held", "done"):
                # loadgen waits here (sync) with every connection still open
                mem = sample_memory(server.pid)
                sampler.update(mem)
                conns = server_connections(server.port)
                with lock:
                    record[f"at_{phase}"] = {
                        "rss_kib": mem.rss_kib,
                        "pss_kib": mem.pss_kib,
                        "threads": mem.threads,
                        "processes": mem.processes,
                        "server_held": conns.held,
                        "server_queued": conns.queued,
                    }

        args = LoadgenArgs(
            scenario=scenario.loadgen,
            connections=scenario.connections,
            size=scenario.size,
            duration=st.duration,
            warmup=st.warmup,
            timeout_ms=scenario.timeout_ms,
            hold_timeout=hold_timeout_for(scenario, st),
            slow=scenario.slow if scenario.loadgen == "slowloris" else None,
            sync=True,
        )
        lg = run_loadgen(args, server.port, cpu=st.loadgen_cpu, on_phase=on_phase)
        record["loadgen"] = lg
        sampler.sample_now()
        record["hwm_main_kib"] = main_hwm_kib(server.pid)
        if not server.alive():
            raise ServerFailed("server died during the run")
        with lock:
            if "measure" in cpu_marks and "done" in cpu_marks:
                cpu = cpu_marks["done"] - cpu_marks["measure"]
                record["server_cpu_s"] = cpu
                record["server_cpu_pct"] = 100 * cpu / max(lg["duration_s"], 1e-9)
                if lg["requests"]:
                    record["server_cpu_us_per_req"] = 1e6 * cpu / lg["requests"]
                # whole-CPU view (includes softirq work and anything else running)
                busy = cpu_busy_pct(core_marks["measure"], core_marks["done"])
                record["cpu_busy_pct"] = {str(k): round(v, 1) for k, v in busy.items()}
                if st.loadgen_cpu is not None:
                    record["loadgen_core_busy_pct"] = busy.get(st.loadgen_cpu)
                if st.server_cpu is not None:
                    record["server_core_busy_pct"] = busy.get(st.server_cpu)
        record["loadgen_cpu_pct"] = 100 * lg["loadgen_cpu_s"] / max(lg["wall_s"], 1e-9)
        record["status"] = "ok"
    except ServerSkipped as exc:
        record.update(status="skipped", reason=str(exc))
    except Exception as exc:  # one failed run must not stop the suite
        record.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    finally:
        if sampler is not None:
            peaks = sampler.stop()
            record["memory_peaks_kib"] = asdict(peaks)
        exit_info = server.stop()
        record["server_exit"] = asdict(exit_info)
        record["wall_s"] = time.monotonic() - t0
        record["loadavg_1min"] = max(record["loadavg_1min"], os.getloadavg()[0])
    return record


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["status"] == "ok"]
    agg: dict[str, Any] = {"runs": len(runs), "ok": len(ok)}
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        agg["failures"] = sorted({r["reason"] for r in failed})
    if not ok:
        return agg

    def series(get: Any) -> list[float]:
        values = []
        for r in ok:
            try:
                v = get(r)
            except KeyError:
                continue
            if v is not None:
                values.append(float(v))
        return values

    def stats(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    agg["requests_per_s"] = stats(series(lambda r: r["loadgen"]["requests_per_s"]))
    for p in ("p50", "p90", "p99", "max"):
        agg[f"latency_{p}_us"] = stats(series(lambda r, p=p: r["loadgen"]["latency_us"][p]))
    agg["server_cpu_pct"] = stats(series(lambda r: r.get("server_cpu_pct")))
    agg["server_cpu_us_per_req"] = stats(series(lambda r: r.get("server_cpu_us_per_req")))
    agg["peak_pss_mib"] = stats(series(lambda r: r["memory_peaks_kib"]["pss_kib"] / 1024))
    agg["peak_rss_mib"] = stats(series(lambda r: r["memory_peaks_kib"]["hwm_kib"] / 1024))
    agg["loadgen_cpu_pct"] = stats(series(lambda r: r.get("loadgen_cpu_pct")))
    agg["loadgen_core_busy_pct"] = stats(series(lambda r: r.get("loadgen_core_busy_pct")))
    agg["server_core_busy_pct"] = stats(series(lambda r: r.get("server_core_busy_pct")))
    agg["loadavg_max"] = max(r.get("loadavg_1min", 0.0) for r in ok)
    agg["max_processes"] = max(r["memory_peaks_kib"]["processes"] for r in ok)
    agg["max_threads"] = max(r["memory_peaks_kib"]["threads"] for r in ok)
    agg["idle_threads"] = max(r.get("idle_threads", 0) for r in ok)
    # hold: memory the held connections cost (tree RSS when all were open and
    # answered, minus before the first one), and what the server held then
    growth = [
        (r["at_held"]["rss_kib"] - r["idle_rss_kib"]) / r["loadgen"]["setup"]["round_answered"]
        for r in ok
        if "at_held" in r and "idle_rss_kib" in r and r["loadgen"].get("setup", {}).get("round_answered")
    ]
    agg["rss_growth_kib_per_conn"] = stats(growth)
    # and the whole peak (interpreter included) over the connections answered
    agg["peak_rss_kib_per_conn"] = stats(
        [
            r["memory_peaks_kib"]["hwm_kib"] / r["loadgen"]["setup"]["round_answered"]
            for r in ok
            if r["loadgen"].get("setup", {}).get("round_answered")
        ]
    )
    agg["held_at_held"] = stats(series(lambda r: r["at_held"]["server_held"]))
    agg["held_at_done"] = stats(series(lambda r: r["at_done"]["server_held"]))
    agg["queued_at_done"] = stats(series(lambda r: r["at_done"]["server_queued"]))
    slows = [r["loadgen"]["slow"] for r in ok if "slow" in r["loadgen"]]
    if slows:
        agg["slow_target"] = slows[0]["target"]
        agg["slow_established_min"] = min(x["established"] for x in slows)
        agg["slow_open_at_end_min"] = min(x["open_at_end"] for x in slows)
        agg["slow_closed_by_server"] = sum(x["closed_by_server"] for x in slows)
        agg["attack_s"] = stats([x["attack_s"] for x in slows])
    probes = [r["loadgen"]["probes"] for r in ok if "probes" in r["loadgen"]]
    if probes:
        agg["probes_attempted"] = sum(x["attempted"] for x in probes)
        agg["probes_answered"] = sum(x["answered"] for x in probes)
        fails: dict[str, int] = {}
        for x in probes:
            for kind in ("connect_timeout", "no_answer", "refused", "reset", "eof", "mismatch", "other", "unfinished"):
                if x.get(kind):
                    fails[kind] = fails.get(kind, 0) + x[kind]
        agg["probe_failures"] = fails
        agg["probe_p99_us"] = stats([x["latency_us"]["p99"] for x in probes if x["answered"]])
    errors: dict[str, int] = {}
    for r in ok:
        for kind, n in r["loadgen"]["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    agg["errors"] = errors
    setups = [r["loadgen"]["setup"] for r in ok if "setup" in r["loadgen"]]
    if setups:
        key = "round_answered" if "round_answered" in setups[0] else "answered"
        agg["connections_ok_min"] = min(s[key] for s in setups)
        agg["connections_target"] = setups[0]["target"]
        agg["setup_s"] = stats([s["setup_s"] + s.get("round_s", 0.0) for s in setups])
    agg["unclean_exits"] = sum(1 for r in ok if not r["server_exit"]["clean"])
    agg["stderr_lines"] = sum(r["server_exit"]["stderr_lines"] for r in ok)
    heads = [r["server_exit"]["stderr_head"] for r in ok if r["server_exit"]["stderr_head"]]
    if heads:
        agg["stderr_example"] = heads[0]
    return agg


# --------------------------------------------------------------------------- output


def fmt_num(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_stat(s: dict[str, float] | None, spread: bool = False) -> str:
    if not s:
        return "-"
    text = fmt_num(s["median"])
    if spread:
        text += f" ({fmt_num(s['min'])}-{fmt_num(s['max'])})"
    return text


def fmt_errors(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    if not total:
        return "0"
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1]))
    return f"{total} ({kinds})"


CONTENTION_POINTS = 20.0


def contended(agg: dict[str, Any]) -> bool:
    """The server's core was much busier than the server: other work ran there."""
    cpu, core = agg.get("server_cpu_pct"), agg.get("server_core_busy_pct")
    return bool(cpu and core and core["median"] - cpu["median"] > CONTENTION_POINTS)


def ratio_text(value: dict[str, float] | None, base: dict[str, float] | None) -> str:
    if not value or not base:
        return "n/a"
    if base["median"] <= 0:
        return "n/a (base 0)"
    return f"{value['median'] / base['median']:.2f}x"


def fmt_count(s: dict[str, float] | None) -> str:
    """A count's median (a half when the repeats are even in number)."""
    if not s:
        return "-"
    m = s["median"]
    return f"{m:,.0f}" if m == int(m) else f"{m:,.1f}"


def fmt_threads(agg: dict[str, Any]) -> str:
    return str(agg.get("max_threads", "-"))


def fmt_kib_per_conn(agg: dict[str, Any]) -> str:
    growth, peak = agg.get("rss_growth_kib_per_conn"), agg.get("peak_rss_kib_per_conn")
    return f"{fmt_stat(growth)} ({fmt_stat(peak)})" if growth else "-"


def limit_rps(scenario: Scenario, summary: dict[str, dict[str, Any]]) -> dict[str, float] | None:
    """The limit row's req/s in this scenario's ``summary`` (None: it did not run, or failed)."""
    return summary.get(LIMIT_SERVERS.get(scenario.protocol, ""), {}).get("requests_per_s")


def _table_start(scenario: Scenario, head: list[str]) -> list[str]:
    """A scenario table's heading, column names and rule."""
    return [
        f"### {scenario.name}: {scenario.headline}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]


def _row(cells: list[str], width: int) -> str:
    """A table row of ``width`` columns: ``cells``, then empty ones."""
    return "| " + " | ".join(cells + [""] * (width - len(cells))) + " |"


def scenario_table(
    scenario: Scenario,
    names: list[str],
    summary: dict[str, dict[str, Any]],
    skipped: dict[str, str],
    all_summaries: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> list[str]:
    if scenario.loadgen == "slowloris":
        return slowloris_table(scenario, names, summary, skipped, all_summaries or {})
    unit = "conn/s" if scenario.loadgen == "connect" else "req/s"
    with_conns = scenario.loadgen in ("pingpong", "hold") and scenario.connections > 1
    is_hold = scenario.loadgen == "hold"
    limit = limit_rps(scenario, summary)
    head = ["server", "baseline", f"{unit} median (min-max)", "ratio"]
    if limit:
        head.append("÷ limit")
    head += ["p50 µs", "p99 µs"]
    if with_conns:
        head.append("conns ok")
    if is_hold:
        head += ["server held", "RSS KiB/conn: growth (peak ÷ conns)"]
    head += [
        "srv CPU %",
        "srv CPU µs/req",
        "peak RSS MiB",
        "peak PSS MiB",
        "threads",
        "loadgen CPU % / core busy %",
        "errors",
    ]
    lines = _table_start(scenario, head)
    for name in names:
        spec = SERVERS[name]
        if not applies(spec, scenario):
            continue
        if name in skipped:
            lines.append(_row([name, spec.baseline, f"skipped: {skipped[name]}"], len(head)))
            continue
        agg = summary.get(name)
        if agg is None:
            continue
        if not agg.get("requests_per_s"):
            reason = "; ".join(agg.get("failures", ["no successful run"]))
            row = [name, spec.baseline, f"failed: {reason}"[:200]] + [""] * (len(head) - 3)
            lines.append("| " + " | ".join(row) + " |")
            continue
        ratio = ratio_text(agg["requests_per_s"], summary.get(spec.baseline, {}).get("requests_per_s"))
        row = [
            name,
            spec.baseline,
            fmt_stat(agg["requests_per_s"], spread=True),
            ratio,
        ]
        if limit:
            row.append(ratio_text(agg["requests_per_s"], limit))
        row += [fmt_stat(agg["latency_p50_us"]), fmt_stat(agg["latency_p99_us"])]
        if with_conns:
            row.append(f"{agg.get('connections_ok_min', '-')}/{agg.get('connections_target', '-')}")
        if is_hold:
            row += [fmt_count(agg.get("held_at_held")), fmt_kib_per_conn(agg)]
        srv_cpu = fmt_stat(agg["server_cpu_pct"])
        if contended(agg):
            srv_cpu += f" (core {fmt_stat(agg['server_core_busy_pct'])} ⚠)"
        row += [
            srv_cpu,
            fmt_stat(agg["server_cpu_us_per_req"]),
            fmt_stat(agg["peak_rss_mib"]),
            fmt_stat(agg["peak_pss_mib"]),
            fmt_threads(agg),
            f"{fmt_stat(agg['loadgen_cpu_pct'])} / {fmt_stat(agg['loadgen_core_busy_pct'])}",
            fmt_errors(agg["errors"]),
        ]
        if agg["ok"] < agg["runs"]:
            row[2] += f" [{agg['runs'] - agg['ok']} of {agg['runs']} runs failed]"
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


def slowloris_table(
    scenario: Scenario,
    names: list[str],
    summary: dict[str, dict[str, Any]],
    skipped: dict[str, str],
    all_summaries: dict[str, dict[str, dict[str, Any]]],
) -> list[str]:
    """The slow-client table: the normal clients' throughput attacked ÷ unattacked,
    what the server took of the attack, and whether new connections got in."""
    unattacked = all_summaries.get(scenario.unattacked or "", {})
    attacked = scenario.slow > 0
    limit = limit_rps(scenario, summary)
    head = ["server", "req/s median (min-max)"]
    if attacked:
        head += ["unattacked req/s", "÷ unattacked"]
    else:
        head += ["baseline", "ratio"]
    if limit:
        head.append("÷ limit")
    head += ["p50 µs", "p99 µs"]
    if attacked:
        head += ["slow conns est. / open at end", "server held (queued)"]
    head += [
        "new conns answered",
        "new conn p99 ms",
        "threads",
        "peak RSS MiB",
        "srv CPU %",
        "errors",
    ]
    lines = _table_start(scenario, head)
    for name in names:
        spec = SERVERS[name]
        if not applies(spec, scenario):
            continue
        if name in skipped:
            lines.append(_row([name, f"skipped: {skipped[name]}"], len(head)))
            continue
        agg = summary.get(name)
        if agg is None:
            continue
        if not agg.get("requests_per_s"):
            reason = "; ".join(agg.get("failures", ["no successful run"]))
            row = [name, f"failed: {reason}"[:200]] + [""] * (len(head) - 2)
            lines.append("| " + " | ".join(row) + " |")
            continue
        rps = agg["requests_per_s"]
        row = [name, fmt_stat(rps, spread=True)]
        if attacked:
            base = unattacked.get(name, {}).get("requests_per_s")
            row += [fmt_stat(base), ratio_text(rps, base)]
        else:
            row += [spec.baseline, ratio_text(rps, summary.get(spec.baseline, {}).get("requests_per_s"))]
        if limit:
            row.append(ratio_text(rps, limit))
        row += [fmt_stat(agg["latency_p50_us"]), fmt_stat(agg["latency_p99_us"])]
        if attacked:
            row.append(
                f"{agg.get('slow_established_min', '-')} / {agg.get('slow_open_at_end_min', '-')} "
                f"of {agg.get('slow_target', '-')}"
            )
            row.append(f"{fmt_count(agg.get('held_at_done'))} ({fmt_count(agg.get('queued_at_done'))})")
        probes = f"{agg.get('probes_answered', '-')}/{agg.get('probes_attempted', '-')}"
        if agg.get("probe_failures"):
            probes += " (" + ", ".join(f"{k} {v}" for k, v in sorted(agg["probe_failures"].items())) + ")"
        p99 = agg.get("probe_p99_us")
        srv_cpu = fmt_stat(agg["server_cpu_pct"])
        if contended(agg):
            srv_cpu += f" (core {fmt_stat(agg['server_core_busy_pct'])} ⚠)"
        row += [
            probes,
            fmt_num(p99["median"] / 1000) if p99 else "-",
            fmt_threads(agg),
            fmt_stat(agg["peak_rss_mib"]),
            srv_cpu,
            fmt_errors(agg["errors"]),
        ]
        if agg["ok"] < agg["runs"]:
            row[1] += f" [{agg['runs'] - agg['ok']} of {agg['runs']} runs failed]"
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


def pinning(st: dict[str, Any]) -> str:
    if st["server_cpu"] is None:
        return "NOT PINNED (--no-pin: server processes and loadgen float over all cores)"
    return f"server on CPU {st['server_cpu']} (all its threads and processes), loadgen on CPU {st['loadgen_cpu']}"


def render_markdown(report: dict[str, Any]) -> str:
    meta, st = report["meta"], report["settings"]
    out = [
        "# sockserve benchmarks",
        "",
        f"- date: {meta['date']}",
        f"- machine: `{meta['machine']['uname']}`",
        f"- CPU: {meta['machine']['cpu_model']}, nproc {meta['machine']['nproc']}",
        f"- Python: {meta['machine']['python']} ({st['python']})",
        f"- command: `{meta['command']}`",
        f"- settings: duration {st['duration']} s, warmup {st['warmup']} s, "
        f"repeat {st['repeat']} (median, spread min-max), {pinning(st)}, "
        f"memory sampled every {st['sample_interval']} s",
        f"- total wall time: {meta['wall_s']:.0f} s; 1-min load average during the runs: "
        f"{meta['loadavg_min']:.1f}-{meta['loadavg_max']:.1f} (other work on this machine "
        "disturbs wall-clock numbers)",
        "",
        "ratio = median req/s ÷ the median req/s of the server in the `baseline` column "
        "(higher is better); ÷ limit = the same ÷ the median req/s of the limit row in that "
        "table (c_epoll_echo: a single-threaded C epoll echo server, what this machine's kernel "
        "and loopback allow one core). p50/p99 = medians over the repeats. srv CPU = user+system time "
        "of the server's process tree during the measured window (100 % = one core). "
        "peak RSS = max over samples of Σ VmHWM over the tree (counts shared pages once per "
        "process); peak PSS = max over samples of Σ Pss (shared pages split between sharers). "
        "threads = the most threads the server's process tree had at once (sampled, all "
        "processes summed). "
        "loadgen CPU % = loadgen's own CPU time ÷ its wall time; core busy % = how busy "
        "loadgen's core was during the measured window (well below 100 % means loadgen was "
        "not the bottleneck). "
        "hold: server held = connections the server had accepted and kept open when all were "
        "open (from /proc/net/tcp); RSS KiB/conn = (tree RSS then - before the first connection) "
        "÷ connections answered, and in brackets peak RSS ÷ connections answered. "
        "slowloris: ÷ unattacked = req/s ÷ the same server's req/s in slowloris_0; slow conns "
        "est. = attacking connections whose handshake completed (lowest over the repeats), "
        "open at end = those the server had not closed; server held (queued) = connections "
        "accepted and open (waiting in the listen backlog) at the end of the window, normal "
        "ones included; new conns answered = new connections echoed within 1 s / tried, summed "
        "over the repeats. "
        "Wall-clock numbers vary 30-40 % between runs on this machine: compare within one table, "
        "and use callgrind.py for small differences.",
        "",
    ]
    names = report["server_order"]
    for name in report["scenario_order"]:
        out += scenario_table(
            SCENARIOS[name], names, report["summary"].get(name, {}), report["skipped"], report["summary"]
        )
    notes = []
    for name in names:
        spec = report["servers"].get(name, {})
        extra = [f"{scen}: `{' '.join(args)}`" for scen, args in spec.get("scenario_args", ())]
        if extra:
            notes.append(f"- {name} runs with extra arguments in some scenarios: {'; '.join(extra)}")
    flagged = [
        f"{name} / {scen}"
        for scen, per_server in report["summary"].items()
        for name, agg in per_server.items()
        if contended(agg)
    ]
    if flagged:
        notes.append(
            f"- ⚠ the server's core was more than {CONTENTION_POINTS:.0f} points busier than the server "
            "itself (other processes or interrupt work shared its core), so these rows understate the "
            f"server: {', '.join(flagged)}"
        )
    for scen, per_server in report["summary"].items():
        for name, agg in per_server.items():
            if agg.get("stderr_lines"):
                notes.append(
                    f"- {name} / {scen}: {agg['stderr_lines']} stderr lines over the repeats, "
                    f"e.g. `{agg.get('stderr_example', '')}`"
                )
            if agg.get("unclean_exits"):
                notes.append(
                    f"- {name} / {scen}: {agg['unclean_exits']} run(s) did not exit cleanly on SIGTERM (killed)"
                )
    if notes:
        out += ["Notes:", "", *notes, ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def install_exit_on_signals() -> None:
    """SIGTERM/SIGHUP raise SystemExit, so the finally blocks stop the servers."""

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--servers",
        default=None,
        help="comma-separated server names (default: all; slowloris_* then run on the servers of issue 8's table "
        "and the references)",
    )
    ap.add_argument(
        "--references",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the reference rows in every scenario of their protocol, also with --servers: the C epoll limit "
        f"and the peers ({', '.join(REFERENCE_SERVERS)}); --no-references leaves them out (default: on)",
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(name for name in SCENARIOS if name != "hold_10000"),
        help="comma-separated scenarios (default: all but hold_10000, which takes minutes on the thread servers); "
        "slowloris_1000 brings slowloris_0, its unattacked pair",
    )
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per run (default 3)")
    ap.add_argument("--warmup", type=float, default=0.5, help="warmup seconds per run (default 0.5)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per server and scenario (default 3)")
    ap.add_argument(
        "--hold-timeout",
        type=float,
        default=None,
        help="seconds allowed for opening the connections (and hold's first round); default 5, "
        "30 for hold_10000, 20 for slowloris_*",
    )
    ap.add_argument(
        "--no-baselines", action="store_true", help="do not add the baseline of each selected server automatically"
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and loadgen to CPUs")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--loadgen-cpu", type=int, default=1)
    ap.add_argument("--sample-interval", type=float, default=0.1, help="memory sampling period, s")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    ap.add_argument("--latest", action="store_true", help="also write results/latest.md and results/latest.json")
    ap.add_argument("--list", action="store_true", help="list servers and scenarios and exit")
    ap.add_argument(
        "--dry-run", action="store_true", help="print the runs the other options select, and a time estimate; exit"
    )
    ap.add_argument(
        "--render",
        metavar="JSON",
        help="print the tables of a saved results JSON and exit (with --charts: draw its charts too)",
    )
    ap.add_argument(
        "--charts",
        metavar="DIR",
        type=Path,
        help="draw a PNG chart per scenario into DIR (throughput and p99 per server; needs matplotlib)",
    )
    opts = ap.parse_args(argv)

    if opts.charts is not None:
        charts.require_matplotlib()  # before an hour of measuring, not after
    if opts.render:
        saved = json.loads(Path(opts.render).read_text())
        print(render_markdown(saved))
        if opts.charts is not None:
            for path in charts.draw(saved, opts.charts):
                print(f"chart: {path}", file=sys.stderr)
        return 0
    if opts.list:
        for spec in SERVERS.values():
            ref = "ref" if spec.name in REFERENCE_SERVERS else "   "
            print(f"{spec.name:30} {spec.protocol} {ref} baseline={spec.baseline:18} {spec.description}")
        print()
        for sc in SCENARIOS.values():
            print(f"{sc.name:16} {sc.protocol}  {sc.headline}")
        return 0
    if opts.repeat < 1 or opts.duration <= 0:
        ap.error("--repeat must be >= 1 and --duration > 0")

    default_servers = opts.servers is None
    server_names = parse_list(opts.servers or ",".join(SERVERS), SERVERS, "server")
    scenario_names = parse_list(opts.scenarios, SCENARIOS, "scenario")
    # an attacked scenario runs with its unattacked pair (the tables show the ratio)
    for name in list(scenario_names):
        pair = SCENARIOS[name].unattacked
        if pair and pair not in scenario_names:
            scenario_names.append(pair)
    scenario_names = [n for n in SCENARIOS if n in scenario_names]
    protocols = {SCENARIOS[n].protocol for n in scenario_names}
    references = [n for n in REFERENCE_SERVERS if SERVERS[n].protocol in protocols] if opts.references else []
    if opts.references:
        server_names += [n for n in references if n not in server_names]
    elif default_servers:
        server_names = [n for n in server_names if n not in REFERENCE_SERVERS]
    if not opts.no_baselines:
        for name in list(server_names):
            base = SERVERS[name].baseline
            if base not in server_names:
                server_names.insert(0, base)
    # keep registry order, for stable tables
    server_names = [n for n in SERVERS if n in server_names]

    pin = not opts.no_pin and (os.cpu_count() or 1) >= 2
    if not opts.no_pin and not pin:
        print("warning: fewer than 2 CPUs, not pinning", file=sys.stderr)
    st = Settings(
        duration=opts.duration,
        warmup=opts.warmup,
        repeat=opts.repeat,
        hold_timeout=opts.hold_timeout,
        server_cpu=opts.server_cpu if pin else None,
        loadgen_cpu=opts.loadgen_cpu if pin else None,
        sample_interval=opts.sample_interval,
        python=opts.python,
    )
    if pin:
        # the harness itself (memory sampler, bookkeeping) stays off the server's CPU
        os.sched_setaffinity(0, {opts.loadgen_cpu})

    install_exit_on_signals()
    build_loadgen()
    build_c_servers()
    started = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_dir = RAW_DIR / f"{stamp}-logs"

    plan = [
        (rep, SCENARIOS[sc], SERVERS[name])
        for rep in range(opts.repeat)
        for sc in scenario_names
        for name in server_names
        if applies(SERVERS[name], SCENARIOS[sc], default_servers, references)
    ]
    if opts.dry_run:
        for rep, scenario, spec in plan:
            print(f"#{rep + 1} {scenario.name:15} {spec.name}")
        floor = len(plan) * (st.warmup + st.duration + 0.5)
        print(
            f"{len(plan)} runs, at least {floor / 60:.1f} minutes (warmup + duration + ~0.5 s each; the "
            "ramps of hold_* and slowloris_*, and servers slow to accept, add more)"
        )
        return 0
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for i, (rep, scenario, spec) in enumerate(plan, 1):
        if spec.name in skipped:
            continue
        record = measure(spec, scenario, rep, st, log_dir)
        runs.append(record)
        if record["status"] == "skipped":
            skipped[spec.name] = record["reason"]
            print(f"[{i}/{len(plan)}] {spec.name}: skipped ({record['reason']})", file=sys.stderr)
            continue
        if record["status"] == "ok":
            lg = record["loadgen"]
            msg = (
                f"{lg['requests_per_s']:>10,.0f} req/s  p50 {lg['latency_us']['p50']:>8.1f} µs  "
                f"p99 {lg['latency_us']['p99']:>9.1f} µs  errors {lg['errors_total']}"
                f"  threads {record['memory_peaks_kib']['threads']}"
            )
            if "slow" in lg and lg["slow"]["target"]:
                held = record.get("at_done", {})
                msg += (
                    f"  slow {lg['slow']['established']}/{lg['slow']['target']}"
                    f" held {held.get('server_held', '?')} queued {held.get('server_queued', '?')}"
                )
            if "probes" in lg:
                msg += f"  new conns {lg['probes']['answered']}/{lg['probes']['attempted']}"
        else:
            msg = f"FAILED: {record['reason']}"
        print(f"[{i}/{len(plan)}] {scenario.name:15} {spec.name:18} #{rep + 1}: {msg}", file=sys.stderr)

    summary: dict[str, dict[str, Any]] = {}
    for sc in scenario_names:
        for name in server_names:
            these = [r for r in runs if r["scenario"] == sc and r["server"] == name]
            if these and name not in skipped:
                summary.setdefault(sc, {})[name] = aggregate(these)

    report = {
        "meta": {
            "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine_info(),
            "command": shlex.join(["python3", *sys.argv]),
            "wall_s": time.monotonic() - started,
            "loadavg_min": min((r["loadavg_1min"] for r in runs), default=0.0),
            "loadavg_max": max((r["loadavg_1min"] for r in runs), default=0.0),
        },
        "settings": asdict(st),
        "scenarios": {n: asdict(SCENARIOS[n]) for n in scenario_names},
        "servers": {n: asdict(SERVERS[n]) for n in server_names},
        "server_order": server_names,
        "references": references,
        "scenario_order": scenario_names,
        "skipped": skipped,
        "summary": summary,
        "runs": runs,
    }
    RAW_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RAW_DIR / f"{stamp}.json"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")  # first: rendering could fail
    markdown = render_markdown(report)
    (RAW_DIR / f"{stamp}.md").write_text(markdown + "\n")
    if opts.latest:
        (RESULTS_DIR / "latest.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (RESULTS_DIR / "latest.md").write_text(markdown + "\n")
    print(markdown)
    print(f"raw results: {json_path}", file=sys.stderr)
    if opts.charts is not None:
        for path in charts.draw(report, opts.charts):
            print(f"chart: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
