#!/usr/bin/env python3
"""What each edge stage (issue 9: PROXY header, TLS handshake) costs per connection.

Connection-per-request echo of one 64-byte line (connect, [PROXY header],
[TLS 1.3 handshake], one line, close) against sockserve's servers plain,
behind PROXY v1 / v2, and with TLS, beside asyncio's and uvloop's own
servers plain and with TLS (``servers/edge_echo.py``). The client is
``edgegen.c`` (C, OpenSSL; loadgen speaks neither PROXY nor TLS). A
throw-away self-signed ECDSA P-256 certificate is made at start with
``openssl req``.

Two measures:

- ``callgrind`` (default): instructions per connection on the server side,
  (total(N2) - total(N1)) / (N2 - N1) as in ``callgrind.py``, and, per
  connection, how they split over the ELF objects (libcrypto, libssl,
  ``_ssl``, libpython, ...) and the functions that cost most (self cost).
- ``--wall``: connections/s with ``--connections`` clients in flight,
  server pinned to CPU 0 and edgegen to CPU 1, ``--repeat`` runs round-robin
  (min / median / max), with the server's and the client's CPU per
  connection.

    python3 benchmarks/edge.py --list
    python3 benchmarks/edge.py --servers sockserve_thread,sockserve_thread+tls,asyncio_streams+tls
    python3 benchmarks/edge.py --wall --repeat 3 --duration 3
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import shlex
import ssl
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from callgrind import callgrind_total, callgrind_wrapper
from harness import BENCH_DIR, BIN_DIR, RAW_DIR, TARGET_HOST, ServerProcess, machine_info, pin_prefix, server_env
from procstat import tree_cpu_s
from run import install_exit_on_signals
from servers import ServerSpec

EDGEGEN_SRC = BENCH_DIR / "edgegen.c"
EDGEGEN = BIN_DIR / "edgegen"


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # edge_echo.py's KIND
    proxy: int = 0  # PROXY header version the client sends (0: none)
    tls: bool = False
    nodelay: bool = False  # diagnosis: TCP_NODELAY on the sync servers' sockets

    def args(self, cert: tuple[str, str]) -> tuple[str, ...]:
        args: tuple[str, ...] = (self.kind,)
        if self.proxy:
            args += ("--proxy",)
        if self.tls:
            args += ("--tls", *cert)
        if self.nodelay:
            args += ("--nodelay",)
        return args

    @property
    def plain(self) -> str:
        """The same server without the stage: the "HAProxy-less" baseline."""
        return self.kind


def _variants() -> list[Variant]:
    out = []
    for kind in ("sockserve_thread", "sockserve_pool", "sockserve_aio_streams", "sockserve_aio_streams_uvloop"):
        out += [
            Variant(kind, kind),
            Variant(f"{kind}+proxy1", kind, proxy=1),
            Variant(f"{kind}+proxy2", kind, proxy=2),
            Variant(f"{kind}+tls", kind, tls=True),
        ]
    for kind in ("sockserve_thread", "sockserve_pool"):
        out.append(Variant(f"{kind}+tls+nodelay", kind, tls=True, nodelay=True))
    for kind in ("asyncio_streams", "asyncio_protocol", "uvloop_streams", "uvloop_protocol"):
        out += [Variant(kind, kind), Variant(f"{kind}+tls", kind, tls=True)]
    return out


VARIANTS = {v.name: v for v in _variants()}
# the nodelay rows are a wall-clock diagnosis: the instructions are the same
DEFAULT_CALLGRIND = [name for name, v in VARIANTS.items() if not v.nodelay]


def build_edgegen() -> Path:
    """gcc -O2 edgegen.c against OpenSSL (libssl-dev), if out of date."""
    BIN_DIR.mkdir(exist_ok=True)
    if EDGEGEN.exists() and EDGEGEN.stat().st_mtime >= EDGEGEN_SRC.stat().st_mtime:
        return EDGEGEN
    tmp = EDGEGEN.with_name(f".edgegen.{os.getpid()}")
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-pthread", "-o", str(tmp), str(EDGEGEN_SRC), "-lssl", "-lcrypto"]
    try:
        subprocess.run(cmd, check=True, timeout=120)
        os.replace(tmp, EDGEGEN)
    finally:
        tmp.unlink(missing_ok=True)
    return EDGEGEN


def make_certificate(directory: Path) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for localhost (openssl req)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


def run_edgegen(
    variant: Variant, port: int, connections: int, *, max_requests: int | None = None,
    duration: float = 3.0, warmup: float = 0.5, cpu: int | None = 1,
) -> dict[str, Any]:  # fmt: skip
    cmd = [*pin_prefix(cpu), str(EDGEGEN), "--target", f"{TARGET_HOST}:{port}", "--connections", str(connections)]
    if variant.proxy:
        cmd += ["--proxy", str(variant.proxy)]
    if variant.tls:
        cmd.append("--tls")
    if max_requests is not None:
        cmd += ["--max-requests", str(max_requests), "--timeout-ms", "60000"]
    else:
        cmd += ["--duration", f"{duration:g}", "--warmup", f"{warmup:g}"]
    limit = 3600 if max_requests is not None else warmup + duration + 60
    out = subprocess.run(cmd, check=True, capture_output=True, timeout=limit)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- callgrind's files

_NAME_RE = re.compile(r"\((\d+)\)(?: (.*))?")


def _name(table: dict[str, str], text: str) -> str:
    """callgrind's name compression: "(id) name" defines, "(id)" refers."""
    match = _NAME_RE.match(text)
    if match is None:
        return text
    ident, name = match.groups()
    if name is not None:
        table[ident] = name
        return name
    return table.get(ident, text)


def self_costs(path: Path) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """One callgrind output file: self instructions per (object, function),
    and the inclusive instructions of calls per (caller object, callee object).

    A cost line right after ``calls=`` is the call's inclusive cost (the
    callee's own lines carry its self cost): it goes to the second table only.
    """
    costs: dict[tuple[str, str], int] = defaultdict(int)
    calls: dict[tuple[str, str], int] = defaultdict(int)
    objects: dict[str, str] = {}
    functions: dict[str, str] = {}
    ob = fn = "?"
    cob: str | None = None
    after_call = False
    with open(path, errors="replace") as f:
        for line in f:
            head = line[:1]
            if head.isdigit() or head in "+-*":
                parts = line.split()
                if len(parts) < 2:
                    continue
                if after_call:
                    after_call = False
                    calls[ob, cob or ob] += int(parts[1])
                    cob = None
                    continue
                costs[ob, fn] += int(parts[1])
            elif line.startswith("fn="):
                fn = _name(functions, line[3:].rstrip("\n"))
            elif line.startswith("ob="):
                ob = _name(objects, line[3:].rstrip("\n"))
            elif line.startswith("cob="):
                cob = _name(objects, line[4:].rstrip("\n"))
            elif line.startswith("cfn="):
                _name(functions, line[4:].rstrip("\n"))  # defines a name; the current function stays
            elif line.startswith("calls="):
                after_call = True
    return costs, calls


def run_self_costs(out_dir: Path) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    total: dict[tuple[str, str], int] = defaultdict(int)
    calls: dict[tuple[str, str], int] = defaultdict(int)
    for path in out_dir.glob("callgrind.out.*"):
        one, one_calls = self_costs(path)
        for key, value in one.items():
            total[key] += value
        for key, value in one_calls.items():
            calls[key] += value
    return total, calls


def is_openssl(ob: str) -> bool:
    return os.path.basename(ob).startswith(("libcrypto", "libssl"))


def is_python(ob: str) -> bool:
    """The interpreter and its extension modules (``_ssl``, ``_asyncio``, uvloop's ``loop``)."""
    base = os.path.basename(ob)
    return base.startswith(("libpython", "python")) or ".cpython-" in base


def openssl_split(costs: dict[tuple[str, str], int], calls: dict[tuple[str, str], int]) -> dict[str, int]:
    """OpenSSL's share of a run, its own code and the libc it calls, apart
    from the Python it calls back (an SNI callback, ``_ssl``'s callbacks):

    - entered: the inclusive cost of every call into libssl/libcrypto from
      Python's objects (``_ssl``, uvloop's ``loop``);
    - callbacks: the inclusive cost of calls from OpenSSL to the Python
      interpreter and extension modules (libc, ld.so excluded);
    - openssl = entered - callbacks; rest = everything else (Python, ours).
    """
    total = sum(costs.values())
    # only calls from Python count as entries: libc calling back into OpenSSL
    # (pthread_once, qsort's comparator) is already inside an entry
    entered = sum(v for (src, dst), v in calls.items() if is_python(src) and is_openssl(dst))
    callbacks = sum(v for (src, dst), v in calls.items() if is_openssl(src) and is_python(dst))
    own = sum(v for (ob, _fn), v in costs.items() if is_openssl(ob))
    return {
        "total": total,
        "openssl_self": own,
        "openssl_entered": entered,
        "callbacks_from_openssl": callbacks,
        "openssl_incl_libc": entered - callbacks,
        "rest": total - (entered - callbacks),
    }


MAIN_GROUPS = (
    "OpenSSL libcrypto",
    "OpenSSL libssl",
    "Python _ssl module",
    "Python interpreter",
    "Python _asyncio module",
    "uvloop",
    "libc",
)


def object_group(ob: str) -> str:
    """Which part of the stack an ELF object belongs to."""
    base = os.path.basename(ob)
    if base.startswith("libcrypto"):
        return "OpenSSL libcrypto"
    if base.startswith("libssl"):
        return "OpenSSL libssl"
    if base.startswith("_ssl."):
        return "Python _ssl module"
    if base.startswith(("libpython", "python")):
        return "Python interpreter"
    if base.startswith(("libc.", "libc-", "ld-linux", "libm.")):
        return "libc"
    if "uvloop" in ob or base.startswith("loop.cpython"):
        return "uvloop"
    if base.startswith("_asyncio"):
        return "Python _asyncio module"
    return "other: " + base


def callgrind_one(
    variant: Variant, n: int, work: Path, python: str, cert: tuple[str, str], conns: int
) -> dict[str, Any]:
    out_dir = work / f"{variant.name}-{n}-{time.monotonic_ns()}"
    out_dir.mkdir(parents=True)
    env = server_env()
    env["PYTHONHASHSEED"] = "0"
    spec = ServerSpec(variant.name, "edge_echo", "tcp", variant.plain, "edge stage benchmark")
    server = ServerProcess(
        spec, python, cpu=0, wrapper=callgrind_wrapper(out_dir), stderr_path=out_dir / "stderr.log",
        args=variant.args(cert), env=env,
    )  # fmt: skip
    try:
        server.start(timeout=180)
        lg = run_edgegen(variant, server.port, conns, max_requests=n)
    finally:
        exit_info = server.stop(grace=120)
    total, dumps = callgrind_total(out_dir)
    costs, calls = run_self_costs(out_dir)
    for path in out_dir.glob("callgrind.out.*"):
        path.unlink()
    return {
        "n": n, "lg": lg, "total": total, "dumps": dumps, "costs": costs, "split": openssl_split(costs, calls),
        "clean": exit_info.clean,
    }  # fmt: skip


def callgrind_main(opts: argparse.Namespace, names: list[str], cert: tuple[str, str], work: Path) -> dict[str, Any]:
    n1, n2 = opts.n1, opts.n2
    results: dict[str, Any] = {}
    for _ in range(opts.repeat):
        for name in names:
            variant = VARIANTS[name]
            try:
                short = callgrind_one(variant, n1, work, opts.python, cert, opts.callgrind_connections)
                long = callgrind_one(variant, n2, work, opts.python, cert, opts.callgrind_connections)
            except Exception as exc:  # one failing server must not stop the others
                results.setdefault(name, {"pairs": []})["failed"] = f"{type(exc).__name__}: {exc}"
                print(f"{name:34} failed: {exc}", file=sys.stderr)
                continue
            per_conn = (long["total"] - short["total"]) / (n2 - n1)
            keys = set(short["costs"]) | set(long["costs"])
            by_fn = {k: (long["costs"].get(k, 0) - short["costs"].get(k, 0)) / (n2 - n1) for k in keys}
            groups: dict[str, float] = defaultdict(float)
            for (ob, _fn), value in by_fn.items():
                group = object_group(ob)
                groups[group if group in MAIN_GROUPS else "other"] += value
            split = {k: (long["split"][k] - short["split"][k]) / (n2 - n1) for k in long["split"]}
            errors = short["lg"]["errors_total"] + long["lg"]["errors_total"]
            exact = short["lg"]["requests"] == n1 and long["lg"]["requests"] == n2 and not errors
            top = sorted(by_fn.items(), key=lambda kv: -kv[1])[:40]
            pair = {
                "per_connection": per_conn,
                "groups": dict(groups),
                "split": split,
                "top": [[ob, fn, v] for (ob, fn), v in top],
                "exact": exact,
                "totals": [short["total"], long["total"]],
            }
            results.setdefault(name, {"pairs": []})["pairs"].append(pair)
            print(
                f"{name:34} {per_conn:>12,.0f} instructions/connection "
                f"[{short['total']:,} @ {n1}, {long['total']:,} @ {n2}]{'' if exact else '  NOT EXACT'}",
                file=sys.stderr,
            )
    for entry in results.values():
        pairs = entry["pairs"]
        if pairs:
            entry["per_connection"] = statistics.median(p["per_connection"] for p in pairs)
            entry["spread"] = [min(p["per_connection"] for p in pairs), max(p["per_connection"] for p in pairs)]
    return results


def wall_main(opts: argparse.Namespace, names: list[str], cert: tuple[str, str], work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {name: {"runs": []} for name in names}
    for rep in range(opts.repeat):
        for name in names:
            variant = VARIANTS[name]
            spec = ServerSpec(name, "edge_echo", "tcp", variant.plain, "edge stage benchmark")
            server = ServerProcess(
                spec, opts.python, cpu=0, stderr_path=work / f"{name}.{rep}.stderr", args=variant.args(cert)
            )
            load0 = os.getloadavg()[0]
            try:
                server.start()
                cpu0 = tree_cpu_s(server.pid)
                lg = run_edgegen(variant, server.port, opts.connections, duration=opts.duration, warmup=opts.warmup)
                cpu1 = tree_cpu_s(server.pid)
            except Exception as exc:
                results[name]["failed"] = f"{type(exc).__name__}: {exc}"
                print(f"#{rep + 1} {name:34} failed: {exc}", file=sys.stderr)
                continue
            finally:
                server.stop()
            run = {
                "conn_per_s": lg["requests_per_s"],
                "p50_us": lg["latency_us"]["p50"],
                "p99_us": lg["latency_us"]["p99"],
                # over every connection of the run (warmup included): /proc has no finer marks here
                "server_cpu_us_per_conn": 1e6 * (cpu1 - cpu0) / max(lg["completed"], 1),
                "client_cpu_us_per_conn": 1e6 * lg["loadgen_cpu_s"] / max(lg["completed"], 1),
                "client_cpu_pct": 100 * lg["loadgen_cpu_measured_s"] / lg["duration_s"],
                "errors": lg["errors_total"],
                "loadavg": max(load0, os.getloadavg()[0]),
            }
            results[name]["runs"].append(run)
            print(
                f"#{rep + 1} {name:34} {run['conn_per_s']:>9,.0f} conn/s  p50 {run['p50_us']:>8,.0f} µs  "
                f"srv {run['server_cpu_us_per_conn']:>6,.0f} µs/conn  client {run['client_cpu_pct']:.0f} %  "
                f"errors {run['errors']}",
                file=sys.stderr,
            )
    return results


# --------------------------------------------------------------------------- tables

_exported: dict[str, tuple[list[int], list[str]]] = {}


def nearest_export(ob: str, fn: str) -> str:
    """For a stripped library's unnamed function (callgrind shows its address),
    the exported symbol just below it (``nm -D``): a hint at the source file."""
    if not fn.startswith("0x"):
        return ""
    if ob not in _exported:
        addrs: list[tuple[int, str]] = []
        try:
            out = subprocess.run(["nm", "-D", "--defined-only", ob], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                addrs.append((int(parts[0], 16), parts[2].split("@")[0]))
        addrs.sort()
        _exported[ob] = ([a for a, _ in addrs], [n for _, n in addrs])
    starts, symbols = _exported[ob]
    i = bisect.bisect_right(starts, int(fn.split("'")[0], 16)) - 1
    return f"after {symbols[i]}" if i >= 0 else ""


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value and base else "n/a"


def loop_baseline(name: str) -> str | None:
    """The loop's own server a sockserve row is compared with: asyncio's
    streams (uvloop's for the uvloop row), with TLS for a TLS row, plain for
    a PROXY row (no loop speaks PROXY: the HAProxy-less baseline)."""
    v = VARIANTS[name]
    if not v.kind.startswith("sockserve"):
        return None
    base = "uvloop_streams" if v.kind.endswith("_uvloop") else "asyncio_streams"
    return base + "+tls" if v.tls else base


def callgrind_tables(results: dict[str, Any], names: list[str]) -> list[str]:
    per = {n: results[n].get("per_connection") for n in names if n in results}
    lines = [
        "| server | instructions/conn (min-max) | Δ vs its plain row (the stage) | ÷ plain | "
        "Δ ÷ the loop's own TLS Δ | ÷ the loop's own server |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        entry = results.get(name, {})
        if "per_connection" not in entry:
            lines.append(f"| {name} | {entry.get('failed', 'not run')} | | | | |")
            continue
        v = VARIANTS[name]
        value = entry["per_connection"]
        lo, hi = entry["spread"]
        plain = per.get(v.plain)
        delta = value - plain if plain and name != v.plain else None
        base = loop_baseline(name)
        base_delta = None
        if base and v.tls and per.get(base) and per.get(base.removesuffix("+tls")):
            base_delta = per[base] - per[base.removesuffix("+tls")]
        exact = all(p["exact"] for p in entry["pairs"])
        lines.append(
            f"| {name}{'' if exact else ' (NOT EXACT)'} | {value:,.0f} ({lo:,.0f}-{hi:,.0f}) | "
            f"{'' if delta is None else f'{delta:+,.0f}'} | {'' if delta is None else _ratio(value, plain)} | "
            f"{_ratio(delta, base_delta) if base_delta else ''} | {_ratio(value, per.get(base)) if base else ''} |"
        )
    lines += ["", "Per connection, by ELF object (self instructions; the first pair):", ""]
    seen = {g for n in names for p in results.get(n, {}).get("pairs", [])[:1] for g in p["groups"]}
    groups = [g for g in (*MAIN_GROUPS, "other") if g in seen]
    tls_names = [n for n in names if VARIANTS[n].tls and results.get(n, {}).get("pairs")]
    shown = [n for n in names if results.get(n, {}).get("pairs")]
    lines += ["| server | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for name in shown:
        g = results[name]["pairs"][0]["groups"]
        lines.append(f"| {name} | " + " | ".join(f"{g.get(k, 0):,.0f}" for k in groups) + " |")
    lines += [
        "",
        "TLS rows: OpenSSL (inclusive of the libc it calls, less the Python it calls back) and the rest, "
        "per connection (the first pair):",
        "",
        "| server | total | OpenSSL | of which libssl+libcrypto self | Python called back by OpenSSL | "
        "the rest (Python, ours, the loop, libc) | the rest - its plain row |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in tls_names:
        sp = results[name]["pairs"][0]["split"]
        plain = results.get(VARIANTS[name].plain, {}).get("per_connection")
        extra = f"{sp['rest'] - plain:+,.0f}" if plain else "n/a"
        lines.append(
            f"| {name} | {sp['total']:,.0f} | {sp['openssl_incl_libc']:,.0f} | {sp['openssl_self']:,.0f} | "
            f"{sp['callbacks_from_openssl']:,.0f} | {sp['rest']:,.0f} | {extra} |"
        )
    for name in tls_names:
        lines += ["", f"Top functions per connection in {name} (self instructions, the first pair):", ""]
        lines += ["| instructions/conn | function | object | stripped: the export below it |", "|---|---|---|---|"]
        for ob, fn, value in results[name]["pairs"][0]["top"][:25]:
            lines.append(f"| {value:,.0f} | `{fn}` | {os.path.basename(ob)} | {nearest_export(ob, fn)} |")
    return lines


def wall_tables(results: dict[str, Any], names: list[str]) -> list[str]:
    med = {n: statistics.median(r["conn_per_s"] for r in results[n]["runs"]) for n in names if results[n].get("runs")}
    lines = [
        "| server | conn/s median (min-max) | ÷ its plain row | ÷ the loop's own server | p50 µs | p99 µs | "
        "server CPU µs/conn | client CPU µs/conn | client core % | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        runs = results[name].get("runs")
        if not runs:
            lines.append(f"| {name} | {results[name].get('failed', 'not run')} |" + " |" * 8)
            continue
        v = VARIANTS[name]
        rates = [r["conn_per_s"] for r in runs]
        base = loop_baseline(name)

        def m(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(statistics.median(r[key] for r in runs))

        lines.append(
            f"| {name} | {med[name]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
            f"{_ratio(med[name], med.get(v.plain)) if name != v.plain else ''} | "
            f"{_ratio(med[name], med.get(base)) if base else ''} | {m('p50_us'):,.0f} | {m('p99_us'):,.0f} | "
            f"{m('server_cpu_us_per_conn'):,.0f} | {m('client_cpu_us_per_conn'):,.0f} | {m('client_cpu_pct'):.0f} | "
            f"{sum(r['errors'] for r in runs)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", help="comma-separated variants (see --list); default: all (callgrind: no nodelay)")
    ap.add_argument("--wall", action="store_true", help="connections/s wall clock instead of callgrind")
    ap.add_argument("--n1", type=int, default=100, help="callgrind: connections in the short run (default 100)")
    ap.add_argument("--n2", type=int, default=400, help="callgrind: connections in the long run (default 400)")
    ap.add_argument("--callgrind-connections", type=int, default=2, help="callgrind: clients in flight (default 2)")
    ap.add_argument("--repeat", type=int, default=1, help="callgrind pairs / wall runs per server (round-robin)")
    ap.add_argument("--connections", type=int, default=4, help="wall: clients in flight (default 4)")
    ap.add_argument("--duration", type=float, default=3.0, help="wall: measured seconds per run (default 3)")
    ap.add_argument("--warmup", type=float, default=0.5, help="wall: warmup seconds per run (default 0.5)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--list", action="store_true")
    opts = ap.parse_args(argv)
    if opts.list:
        for v in VARIANTS.values():
            print(f"{v.name:34} plain={v.plain:28} loop-baseline={loop_baseline(v.name) or '-'}")
        return 0
    if opts.servers:
        names = [n.strip() for n in opts.servers.split(",") if n.strip()]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant(s): {', '.join(unknown)} (see --list)")
    else:
        names = list(VARIANTS) if opts.wall else DEFAULT_CALLGRIND
    install_exit_on_signals()
    build_edgegen()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = RAW_DIR / f"edge-{'wall' if opts.wall else 'callgrind'}-{stamp}"
    cert = make_certificate(work / "cert")
    started = time.monotonic()
    if opts.wall:
        results = wall_main(opts, names, cert, work)
        table = wall_tables(results, names)
    else:
        results = callgrind_main(opts, names, cert, work)
        table = callgrind_tables(results, names)
    info = machine_info()
    head = [
        f"# edge stages: {'connections/s' if opts.wall else 'server instructions per connection'}",
        "",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {info['cpu_model']}, nproc {info['nproc']}, `{info['uname']}`",
        f"- Python {info['python']}, {ssl.OPENSSL_VERSION} (this interpreter's)",
        f"- command: `{shlex.join(['python3', *sys.argv])}`",
        f"- wall time: {time.monotonic() - started:.0f} s",
        "",
    ]
    markdown = "\n".join(head + table) + "\n"
    (work / "edge.md").write_text(markdown)
    (work / "edge.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(markdown)
    print(f"raw results: {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
