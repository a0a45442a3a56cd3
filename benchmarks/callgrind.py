#!/usr/bin/env python3
"""Count the instructions a server executes per request, under callgrind.

Wall-clock numbers on a shared 2-core VM move by 30-40 % between runs;
instruction counts barely move, so they can show a 5 % change.  Hardware
counters are not available here, so valgrind's callgrind does the counting.

For each server, the server runs under ``valgrind --tool=callgrind`` twice:
once while loadgen sends exactly N1 requests, once for exactly N2 requests
(loadgen's --max-requests with no warmup).  Start-up, connection set-up and
shutdown are the same in both runs, so

    instructions/request = (total(N2) - total(N1)) / (N2 - N1)

Forked children are followed by valgrind and write their own output file
(``%p`` in the file name).  A forked child would inherit the parent's
counters, so callgrind is told to dump and zero the counters just before
each fork (``--dump-before=fork``): every instruction then appears in
exactly one dump, and all dumps of all processes of a run are summed.  Threads are
counted too (valgrind runs them one at a time, which changes scheduling but
not the work per request much).

With ``--perf`` the same pair of runs is counted by ``perf stat`` instead:
context switches, system calls and CPU time per request, the kernel's side
of the cost that callgrind does not see (perf's software counters work in a
VM; they are counts of events, but how many happen depends on timing, so
they vary from run to run more than instructions do).

    python3 benchmarks/callgrind.py                           # default servers, pingpong_1x64
    python3 benchmarks/callgrind.py --servers stdlib_thread,sockserve_thread \\
        --scenario connect_20 --n1 200 --n2 1000
    python3 benchmarks/callgrind.py --perf --servers stdlib_thread,sockserve_framed \\
        --scenario pingpong_50x1k --n1 20000 --n2 100000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import (
    RAW_DIR,
    LoadgenArgs,
    ServerProcess,
    ServerSkipped,
    build_loadgen,
    machine_info,
    run_loadgen,
    server_env,
)
from run import SCENARIOS, applies, install_exit_on_signals
from servers import SERVERS, ServerSpec

DEFAULT_SERVERS = {
    "tcp": [
        "stdlib_thread",
        "stdlib_fork",
        "asyncio_streams",
        "asyncio_protocol",
        "uvloop_protocol",
        "sockserve_thread",
    ],
    "udp": ["stdlib_thread_udp", "stdlib_udp", "asyncio_datagram", "uvloop_datagram"],
}
# "summary:" is the dump's total; older files may only have "totals:"
SUMMARY_RE = re.compile(rb"^summary:\s+(\d+)", re.MULTILINE)
TOTALS_RE = re.compile(rb"^totals:\s+(\d+)", re.MULTILINE)


def callgrind_total(out_dir: Path) -> tuple[int, int]:
    """Sum of the Ir totals of every callgrind dump of a run; (total, dumps)."""
    total, files = 0, 0
    for path in out_dir.glob("callgrind.out.*"):
        data = path.read_bytes()
        match = SUMMARY_RE.search(data) or TOTALS_RE.search(data)
        if match:
            total += int(match.group(1))
            files += 1
    return total, files


def callgrind_wrapper(out_dir: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        # dump + zero the counters before fork(), so children start from zero
        "--dump-before=fork",
        f"--callgrind-out-file={out_dir}/callgrind.out.%p",
    ]


def callgrind_counts(out_dir: Path) -> dict[str, float]:
    total, files = callgrind_total(out_dir)
    return {"instructions": total, "dumps": files}


# perf stat's event names -> the names in the tables; perf follows threads
# and forked children by default.
PERF_EVENTS = {"context-switches": "context switches", "raw_syscalls:sys_enter": "system calls", "task-clock": "CPU µs"}


class PerfAttached:
    """perf stat attached to the running server (and the threads and
    processes it starts from then on). Not a wrapper: the harness stops a
    server by signalling its process group, and perf would die with it
    before writing its counts."""

    def __init__(self, pid: int, out_dir: Path) -> None:
        self.path = out_dir / "perf.csv"
        events = ",".join(PERF_EVENTS)
        self.proc = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-o", str(self.path), "-p", str(pid)])
        # perf opens its output file once it has attached; then the counters run.
        deadline = time.monotonic() + 30
        while not self.path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"perf stat did not start (exit {self.proc.poll()})")
            time.sleep(0.01)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # perf writes its counts and exits
        self.proc.wait(timeout=30)


def perf_counts(out_dir: Path) -> dict[str, float]:
    """perf stat's CSV: value,unit,event,...; task-clock is in milliseconds."""
    counts: dict[str, float] = {}
    for line in (out_dir / "perf.csv").read_text().splitlines():
        fields = line.split(",")
        if len(fields) < 3 or fields[2] not in PERF_EVENTS:
            continue
        value = float(fields[0]) if fields[0][:1].isdigit() else 0.0
        counts[PERF_EVENTS[fields[2]]] = value * 1000 if fields[2] == "task-clock" else value
    return counts


def one_run(
    spec: ServerSpec, scenario_name: str, n: int, work: Path, python: str, connections: int | None, perf: bool
) -> dict[str, Any]:
    """Run the server under callgrind (or perf stat) for exactly n requests; return its counts."""
    scenario = SCENARIOS[scenario_name]
    out_dir = work / f"{spec.name}-{n}-{time.monotonic_ns()}"
    out_dir.mkdir(parents=True)
    wrapper = [] if perf else callgrind_wrapper(out_dir)
    env = server_env()
    env["PYTHONHASHSEED"] = "0"  # same dict layouts in every run
    server = ServerProcess(spec, python, cpu=0, wrapper=wrapper, stderr_path=out_dir / "stderr.log", env=env)
    perf_stat: PerfAttached | None = None
    try:
        server.start(timeout=180)
        if perf:
            perf_stat = PerfAttached(server.pid, out_dir)
        args = LoadgenArgs(
            scenario=scenario.loadgen,
            connections=connections or scenario.connections,
            size=scenario.size,
            duration=600,  # the request cap ends the run
            warmup=0,
            timeout_ms=60000,
            max_requests=n,
            hold_timeout=120,
        )
        lg = run_loadgen(args, server.port, cpu=1)
        if perf_stat is not None:
            perf_stat.stop()
    finally:
        exit_info = server.stop(grace=120)  # callgrind and perf write their files at exit
    return {
        "n": n,
        "requests": lg["requests"],
        "errors": lg["errors"],
        "counts": perf_counts(out_dir) if perf else callgrind_counts(out_dir),
        "clean_exit": exit_info.clean,
        "out_dir": str(out_dir),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", help="comma-separated servers (default: a set per protocol)")
    ap.add_argument(
        "--scenario",
        default="pingpong_1x64",
        choices=[n for n, s in SCENARIOS.items() if s.loadgen != "hold"],
    )
    ap.add_argument("--n1", type=int, default=500, help="requests in the short run (default 500)")
    ap.add_argument("--n2", type=int, default=2500, help="requests in the long run (default 2500)")
    ap.add_argument("--repeat", type=int, default=1, help="pairs of runs per server (default 1)")
    ap.add_argument(
        "--connections",
        type=int,
        help="concurrent connections/clients (default: the scenario's; servers run ~50x slower "
        "under callgrind, so lower it for connect_20 against forking servers)",
    )
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--keep", action="store_true", help="keep the callgrind output files")
    ap.add_argument("--perf", action="store_true", help="count with perf stat: context switches, system calls, CPU")
    opts = ap.parse_args(argv)
    if not 0 < opts.n1 < opts.n2:
        ap.error("need 0 < --n1 < --n2")
    tool = "perf" if opts.perf else "valgrind"
    if shutil.which(tool) is None:
        raise SystemExit(f"{tool} is not installed")
    measures = list(PERF_EVENTS.values()) if opts.perf else ["instructions"]

    scenario = SCENARIOS[opts.scenario]
    if opts.servers:
        names = [n.strip() for n in opts.servers.split(",") if n.strip()]
        unknown = [n for n in names if n not in SERVERS]
        if unknown:
            raise SystemExit(f"unknown server(s): {', '.join(unknown)}")
    else:
        names = DEFAULT_SERVERS[scenario.protocol]
    names = [n for n in names if applies(SERVERS[n], scenario)]

    install_exit_on_signals()
    build_loadgen()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = RAW_DIR / f"{'perf' if opts.perf else 'callgrind'}-{stamp}"
    started = time.monotonic()
    results: dict[str, Any] = {}
    for name in names:
        spec = SERVERS[name]
        entry: dict[str, Any] = {"pairs": []}
        results[name] = entry
        try:
            for _ in range(opts.repeat):
                short = one_run(spec, opts.scenario, opts.n1, work, opts.python, opts.connections, opts.perf)
                long = one_run(spec, opts.scenario, opts.n2, work, opts.python, opts.connections, opts.perf)
                per_req = {m: (long["counts"][m] - short["counts"][m]) / (opts.n2 - opts.n1) for m in measures}
                exact = short["requests"] == opts.n1 and long["requests"] == opts.n2
                entry["pairs"].append({"short": short, "long": long, "per_request": per_req, "exact": exact})
                note = "" if exact else "  (request counts not exact: see errors)"
                for m in measures:
                    print(
                        f"{name:18} {opts.scenario}: {per_req[m]:,.{0 if m == 'instructions' else 2}f} {m}/request "
                        f"[{short['counts'][m]:,.0f} @ {opts.n1}, {long['counts'][m]:,.0f} @ {opts.n2}]{note}",
                        file=sys.stderr,
                    )
            entry["per_request"] = {m: statistics.median(p["per_request"][m] for p in entry["pairs"]) for m in measures}
        except ServerSkipped as exc:
            entry["skipped"] = str(exc)
            print(f"{name:18} skipped: {exc}", file=sys.stderr)
        except Exception as exc:  # one failing server must not stop the others
            entry["failed"] = f"{type(exc).__name__}: {exc}"
            print(f"{name:18} failed: {entry['failed']}", file=sys.stderr)

    first = measures[0]
    lines = [
        f"# {'perf stat' if opts.perf else 'callgrind'}: server {', '.join(measures)} per request ({opts.scenario})",
        "",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: `{machine_info()['uname']}`",
        f"- command: `{shlex.join(['python3', *sys.argv])}`",
        f"- N1 = {opts.n1}, N2 = {opts.n2} requests, {opts.repeat} pair(s) per server; "
        f"per request = (count(N2) - count(N1)) / (N2 - N1), summed over all processes",
        f"- wall time: {time.monotonic() - started:.0f} s",
        "",
        "| server | baseline | "
        + " | ".join(f"{m}/request" for m in measures)
        + f" | {first}: ratio to baseline (lower is better) | exact N |",
        "|---|---|" + "---|" * len(measures) + "---|---|",
    ]
    for name in names:
        entry = results[name]
        spec = SERVERS[name]
        if "per_request" not in entry:
            why = entry.get("skipped") or entry.get("failed", "?")
            lines.append(f"| {name} | {spec.baseline} | {why} |" + " |" * (len(measures) + 1))
            continue
        base = results.get(spec.baseline, {}).get("per_request", {}).get(first)
        ratio = f"{entry['per_request'][first] / base:.3f}" if base else "n/a"
        exact = all(p["exact"] for p in entry["pairs"])
        cells = " | ".join(f"{entry['per_request'][m]:,.{0 if m == 'instructions' else 2}f}" for m in measures)
        lines.append(f"| {name} | {spec.baseline} | {cells} | {ratio} | {'yes' if exact else 'NO'} |")
    markdown = "\n".join(lines) + "\n"
    work.mkdir(parents=True, exist_ok=True)
    stem = "perf" if opts.perf else "callgrind"
    (work / f"{stem}.md").write_text(markdown)
    (work / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    if not opts.keep:
        for path in work.glob("*/callgrind.out.*"):
            path.unlink()
    print(markdown)
    print(f"raw results: {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
