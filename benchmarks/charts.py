"""Charts of a run.py result: for each scenario, throughput and p99 latency per server.

One PNG per scenario (``<scenario>.png``): on the left a horizontal bar per
server of its median requests/s (connections/s in connect_20) with the
min-max over the repeats as whiskers, on the right the same for its p99
latency.  sockserve's rows are blue, the peers' orange, the limit (the C
epoll echo server) grey with a dashed line across the panel at its value,
so every bar reads as a share of what the machine allows.  The title says
when, on what machine (CPU model, cores, kernel, Python) and with which
command the numbers were measured.

    python3 benchmarks/run.py --charts docs/charts ...            # measure, then draw
    python3 benchmarks/run.py --render results/latest.json --charts docs/charts

matplotlib is a benchmark-only dependency (``pip install -e '.[bench]'``),
imported only when charts are asked for, with the Agg backend (no display).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

SOCKSERVE_COLOUR = "#1f77b4"
PEER_COLOUR = "#ff7f0e"
LIMIT_COLOUR = "#555555"
# which row is the limit, per protocol (run.LIMIT_SERVERS; repeated here so
# that rendering a saved result does not depend on run.py's registry)
LIMIT_SERVERS = {"tcp": "c_epoll_echo", "udp": "c_epoll_echo_udp"}
# a p99 panel whose values span more than this factor gets a log scale
LOG_SPAN = 30.0


def require_matplotlib() -> None:
    """Exit with one line (not a traceback) if matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"charts need matplotlib ({exc}): pip install matplotlib, or pip install -e '.[bench]'"
        ) from None


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and the same output everywhere
    import matplotlib.pyplot as plt

    return plt


def kind(name: str, protocol: str) -> str:
    """ "limit", "sockserve" or "peer": the row's colour."""
    if name == LIMIT_SERVERS.get(protocol):
        return "limit"
    return "sockserve" if name.startswith("sockserve") else "peer"


COLOURS = {"limit": LIMIT_COLOUR, "sockserve": SOCKSERVE_COLOUR, "peer": PEER_COLOUR}
ORDER = {"limit": 0, "peer": 1, "sockserve": 2}


def _kernel(machine: dict[str, Any]) -> str:
    if machine.get("kernel"):
        return str(machine["kernel"])
    parts = str(machine.get("uname", "")).split()  # sysname nodename release ...
    return parts[2] if len(parts) > 2 else "?"


def subtitle(report: dict[str, Any]) -> str:
    """When, where and how: date, machine, settings, load, command."""
    meta, st = report["meta"], report["settings"]
    machine = meta["machine"]
    pin = (
        f"server on CPU {st['server_cpu']}, loadgen on CPU {st['loadgen_cpu']}"
        if st.get("server_cpu") is not None
        else "not pinned"
    )
    date = str(meta["date"]).replace("T", " ")
    lines = [
        f"{date} · {machine['cpu_model']}, {machine['nproc']} cores · Linux {_kernel(machine)} · "
        f"Python {machine['python']}",
        f"{st['duration']:g} s x {st['repeat']} runs per server (bars: median, whiskers: min-max) · {pin} · "
        f"1-min load average {meta.get('loadavg_min', 0):.1f}-{meta.get('loadavg_max', 0):.1f}",
    ]
    lines += textwrap.wrap("$ " + meta["command"], 160, subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines)


def _fmt(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:.2f}M"
    if v >= 10_000:
        return f"{v / 1000:,.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    if v >= 10:
        return f"{v:.0f}"
    return f"{v:.2g}"


def _panel(
    ax: Any,
    rows: list[tuple[str, str, dict[str, Any]]],
    key: str,
    xlabel: str,
    limit_label: str,
    log_allowed: bool,
    notes: dict[str, str] | None = None,
) -> None:
    """One panel: a bar per row with a median, whiskers min-max, value labels, the limit's line.

    ``notes`` adds text after a row's value label (by server name).
    """
    ys, medians, lows, highs, colours, names = [], [], [], [], [], []
    for y, (name, k, agg) in enumerate(rows):
        stat = agg.get(key)
        if not stat:
            continue
        ys.append(y)
        medians.append(stat["median"])
        lows.append(stat["median"] - stat["min"])
        highs.append(stat["max"] - stat["median"])
        colours.append(COLOURS[k])
        names.append(name)
    for y, (_name, _k, agg) in enumerate(rows):
        if not agg.get(key):
            what = "skipped" if agg.get("skipped") else "failed"
            ax.text(0.01, y, what, va="center", transform=ax.get_yaxis_transform(), fontsize=8, color="#aa0000")
    if not medians:
        ax.set_xlabel(xlabel)
        return
    positive = [m for m in medians if m > 0]
    log = log_allowed and bool(positive) and max(positive) / min(positive) > LOG_SPAN
    ax.barh(
        ys,
        medians,
        xerr=[lows, highs],
        color=colours,
        height=0.7,
        error_kw={"ecolor": "#222222", "elinewidth": 0.8, "capsize": 2},
    )
    if log:
        ax.set_xscale("log")
        xlabel += " (log scale)"
    top = max(m + h for m, h in zip(medians, highs, strict=True))
    for y, m, h, name in zip(ys, medians, highs, names, strict=True):
        x = (m + h) * 1.08 if log else m + h + top * 0.01
        note = (notes or {}).get(name)
        ax.text(x, y, _fmt(m) + (f"  ({note})" if note else ""), va="center", fontsize=7.5)
    if log:
        ax.set_xlim(right=top * 4)
    else:
        ax.set_xlim(0, top * 1.15)
        ax.xaxis.set_major_formatter(lambda v, _pos: _fmt(v) if v else "0")
    for _name, k, agg in rows:
        if k == "limit" and agg.get(key):
            ax.axvline(agg[key]["median"], color=LIMIT_COLOUR, linestyle="--", linewidth=1)
            ax.text(
                agg[key]["median"],
                1.0,
                f" {limit_label}",
                transform=ax.get_xaxis_transform(),
                va="bottom",
                fontsize=7.5,
                color=LIMIT_COLOUR,
            )
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def row_notes(info: dict[str, Any], rows: list[tuple[str, str, dict[str, Any]]]) -> dict[str, str]:
    """What a bar alone would hide: new connections refused under attack, connections not answered."""
    notes = {}
    for name, _k, agg in rows:
        if info["loadgen"] == "slowloris" and agg.get("probes_attempted"):
            notes[name] = f"new conns {agg['probes_answered']}/{agg['probes_attempted']}"
        elif agg.get("connections_target") and agg.get("connections_ok_min", 0) < agg["connections_target"]:
            notes[name] = f"conns ok {agg['connections_ok_min']}/{agg['connections_target']}"
        elif sum(agg.get("errors", {}).values()):
            notes[name] = f"{sum(agg['errors'].values())} errors"
    return notes


def draw_scenario(plt: Any, report: dict[str, Any], scenario: str, path: Path) -> bool:
    """Draw one scenario's chart into ``path``; False if no server has a number in it."""
    info = report["scenarios"][scenario]
    protocol = info["protocol"]
    summary = report["summary"].get(scenario, {})
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for name in report["server_order"]:
        if name in summary:
            rows.append((name, kind(name, protocol), summary[name]))
        elif name in report["skipped"] and report["servers"].get(name, {}).get("protocol") == protocol:
            rows.append((name, kind(name, protocol), {"skipped": report["skipped"][name]}))
    if not any(agg.get("requests_per_s") for _n, _k, agg in rows):
        return False
    rows.sort(key=lambda row: ORDER[row[1]])  # stable: registry order within each kind
    unit = "connections/s" if info["loadgen"] == "connect" else "requests/s"
    if info["loadgen"] == "slowloris":
        unit = "requests/s of the 10 normal clients"

    sub = subtitle(report)
    head_in = 0.45 + 0.14 * (sub.count("\n") + 1)  # the header's height: title and subtitle lines
    body_in = 1.2 + 0.3 * len(rows)
    fig = plt.figure(figsize=(14, head_in + body_in + 0.4), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[head_in, body_in])
    head = fig.add_subplot(grid[0, :])
    head.axis("off")
    left = fig.add_subplot(grid[1, 0])
    right = fig.add_subplot(grid[1, 1], sharey=left)
    _panel(
        left,
        rows,
        "requests_per_s",
        f"{unit}, higher is better",
        "C epoll limit",
        log_allowed=False,
        notes=row_notes(info, rows),
    )
    _panel(right, rows, "latency_p99_us", "p99 latency, µs, lower is better", "C epoll", log_allowed=True)
    left.set_yticks(range(len(rows)), [name for name, _k, _a in rows], fontsize=8.5)
    left.invert_yaxis()  # the first row on top
    right.tick_params(labelleft=False)
    head.text(0, 1, f"{scenario}: {info['headline']}", fontsize=11, fontweight="bold", va="top")
    head.annotate(
        sub,
        xy=(0, 1),
        xycoords="axes fraction",
        xytext=(0, -18),
        textcoords="offset points",
        va="top",
        fontsize=7.5,
        color="#333333",
    )
    legend = {
        "sockserve": "sockserve",
        "peer": "peers (stdlib, asyncio, uvloop, gevent)",
        "limit": "limit: C epoll echo, one thread",
    }
    kinds = [k for k in legend if any(row[1] == k for row in rows)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[k]) for k in kinds]
    labels = [legend[k] for k in kinds]
    fig.legend(handles, labels, loc="outside lower center", ncols=len(kinds), fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw every scenario of ``report`` (run.py's JSON) into ``out_dir``; return the files written."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for scenario in report["scenario_order"]:
        path = out_dir / f"{scenario}.png"
        if draw_scenario(plt, report, scenario, path):
            written.append(path)
    return written


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} RESULT.json OUT_DIR")
    for drawn in draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])):
        print(drawn)
