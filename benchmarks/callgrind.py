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

    python3 benchmarks/callgrind.py                           # default servers, pingpong_1x64
    python3 benchmarks/callgrind.py --servers stdlib_thread,sockserve_thread \\
        --scenario connect_20 --n1 200 --n2 1000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
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


def one_run(
    spec: ServerSpec, scenario_name: str, n: int, work: Path, python: str, connections: int | None
) -> dict[str, Any]:
    """Run the server under callgrind for exactly n requests; return its counts."""
    scenario = SCENARIOS[scenario_name]
    out_dir = work / f"{spec.name}-{n}-{time.monotonic_ns()}"
    out_dir.mkdir(parents=True)
    wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        # dump + zero the counters before fork(), so children start from zero
        "--dump-before=fork",
        f"--callgrind-out-file={out_dir}/callgrind.out.%p",
    ]
    env = server_env()
    env["PYTHONHASHSEED"] = "0"  # same dict layouts in every run
    server = ServerProcess(spec, python, cpu=0, wrapper=wrapper, stderr_path=out_dir / "stderr.log", env=env)
    try:
        server.start(timeout=180)
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
    finally:
        exit_info = server.stop(grace=120)  # callgrind writes its files at exit
    total, files = callgrind_total(out_dir)
    return {
        "n": n,
        "requests": lg["requests"],
        "errors": lg["errors"],
        "instructions": total,
        "files": files,
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
    opts = ap.parse_args(argv)
    if not 0 < opts.n1 < opts.n2:
        ap.error("need 0 < --n1 < --n2")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")

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
    work = RAW_DIR / f"callgrind-{stamp}"
    started = time.monotonic()
    results: dict[str, Any] = {}
    for name in names:
        spec = SERVERS[name]
        entry: dict[str, Any] = {"pairs": []}
        results[name] = entry
        try:
            for _ in range(opts.repeat):
                short = one_run(spec, opts.scenario, opts.n1, work, opts.python, opts.connections)
                long = one_run(spec, opts.scenario, opts.n2, work, opts.python, opts.connections)
                per_req = (long["instructions"] - short["instructions"]) / (opts.n2 - opts.n1)
                exact = short["requests"] == opts.n1 and long["requests"] == opts.n2
                entry["pairs"].append({"short": short, "long": long, "per_request": per_req, "exact": exact})
                note = "" if exact else "  (request counts not exact: see errors)"
                print(
                    f"{name:18} {opts.scenario}: {per_req:,.0f} instructions/request "
                    f"[{short['instructions']:,} @ {opts.n1}, {long['instructions']:,} @ {opts.n2}]{note}",
                    file=sys.stderr,
                )
            entry["per_request"] = statistics.median(p["per_request"] for p in entry["pairs"])
        except ServerSkipped as exc:
            entry["skipped"] = str(exc)
            print(f"{name:18} skipped: {exc}", file=sys.stderr)
        except Exception as exc:  # one failing server must not stop the others
            entry["failed"] = f"{type(exc).__name__}: {exc}"
            print(f"{name:18} failed: {entry['failed']}", file=sys.stderr)

    lines = [
        f"# callgrind: server instructions per request ({opts.scenario})",
        "",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: `{machine_info()['uname']}`",
        f"- command: `{shlex.join(['python3', *sys.argv])}`",
        f"- N1 = {opts.n1}, N2 = {opts.n2} requests, {opts.repeat} pair(s) per server; "
        f"instructions/request = (I(N2) - I(N1)) / (N2 - N1), summed over all processes",
        f"- wall time: {time.monotonic() - started:.0f} s",
        "",
        "| server | baseline | instructions/request | ratio to baseline (lower is better) "
        "| exact N | dumps (long run) |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        entry = results[name]
        spec = SERVERS[name]
        if "per_request" not in entry:
            why = entry.get("skipped") or entry.get("failed", "?")
            lines.append(f"| {name} | {spec.baseline} | {why} | | | |")
            continue
        base = results.get(spec.baseline, {}).get("per_request")
        ratio = f"{entry['per_request'] / base:.3f}" if base else "n/a"
        exact = all(p["exact"] for p in entry["pairs"])
        files = entry["pairs"][-1]["long"]["files"]
        per_req = f"{entry['per_request']:,.0f}"
        lines.append(f"| {name} | {spec.baseline} | {per_req} | {ratio} | {'yes' if exact else 'NO'} | {files} |")
    markdown = "\n".join(lines) + "\n"
    work.mkdir(parents=True, exist_ok=True)
    (work / "callgrind.md").write_text(markdown)
    (work / "callgrind.json").write_text(json.dumps(results, indent=1) + "\n")
    if not opts.keep:
        for path in work.glob("*/callgrind.out.*"):
            path.unlink()
    print(markdown)
    print(f"raw results: {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
