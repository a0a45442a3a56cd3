"""``MetricsSnapshot`` values in the Prometheus text format (0.0.4), through
``prometheus-client`` (the ``sockserve[metrics]`` extra).

Importing this module imports ``prometheus_client``: only the admin
listener does, and only when it serves ``/metrics``. The names follow
Prometheus' conventions: a ``sockserve_`` prefix, counters end in
``_total``, units (``_bytes``, ``_seconds``) come before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from ._metrics import MetricsSnapshot

# Stated, not taken from prometheus_client.CONTENT_TYPE_LATEST, which newer
# versions moved to 1.0.0: every scraper reads 0.0.4, and the body is that.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A snapshot of the whole process, or one per listener (the label "listener").
MetricsSource = Callable[[], MetricsSnapshot | Mapping[str, MetricsSnapshot]]

# snapshot name -> (metric name without _total, HELP)
COUNTERS: Mapping[str, tuple[str, str]] = {
    "connections_accepted": (
        "sockserve_connections_accepted",
        "Connections admitted past the limits, the access list and verify_request() (datagrams on a UDP server).",
    ),
    "requests": (
        "sockserve_requests",
        "Requests handled: one per connection, per framed request, or per datagram.",
    ),
    "handler_errors": ("sockserve_handler_errors", "Handler exceptions that reached handle_error()."),
    "bytes_received": (
        "sockserve_received_bytes",
        "Bytes received from clients on the wire (TCP: TLS records included; "
        "counted with count_bytes or the access log on).",
    ),
    "bytes_sent": (
        "sockserve_sent_bytes",
        "Bytes sent to clients on the wire (TCP: TLS records included; counted with count_bytes or the access log on).",
    ),
    "drains": ("sockserve_drains", "Graceful stops."),
    "worker_restarts": (
        "sockserve_worker_restarts",
        "Prefork workers that died unexpectedly and were replaced (not reloads, scale-downs or max_requests recycles).",
    ),
}
REFUSED = (
    "sockserve_connections_refused",
    "Connections refused, or cut by a limit, by reason: max_connections, max_connections_per_ip, access_list, "
    "emfile, tls_handshake, proxy_header (before the handler), timeout (idle or connection timeout, also during it).",
)
GAUGES: Mapping[str, tuple[str, str]] = {
    "connections_active": ("sockserve_connections_active", "Connections admitted and not yet closed."),
    "last_drain_seconds": ("sockserve_last_drain_seconds", "How long the last graceful stop took."),
}


class SnapshotCollector:
    """A custom collector: reads ``source()`` at each scrape."""

    def __init__(self, source: MetricsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        values = self._source()
        snapshots: Mapping[str, MetricsSnapshot] = {"": values} if isinstance(values, MetricsSnapshot) else values
        labels = [] if isinstance(values, MetricsSnapshot) else ["listener"]

        def label(listener: str, *more: str) -> list[str]:
            return [*([listener] if labels else []), *more]

        names = _names(snapshots, "counters")
        for key in names:
            name, help_text = COUNTERS.get(key, (f"sockserve_{key}", f"sockserve's {key} counter."))
            family = CounterMetricFamily(name, help_text, labels=labels)
            for listener, snapshot in snapshots.items():
                family.add_metric(label(listener), snapshot.counters.get(key, 0))
            yield family
        refused = CounterMetricFamily(REFUSED[0], REFUSED[1], labels=[*labels, "reason"])
        for listener, snapshot in snapshots.items():
            for reason, count in snapshot.refused.items():
                refused.add_metric(label(listener, reason), count)
        yield refused
        for key in _names(snapshots, "gauges"):
            name, help_text = GAUGES.get(key, (f"sockserve_{key}", f"sockserve's {key} gauge."))
            gauge = GaugeMetricFamily(name, help_text, labels=labels)
            for listener, snapshot in snapshots.items():
                gauge.add_metric(label(listener), snapshot.gauges.get(key, 0.0))
            yield gauge


def _names(snapshots: Mapping[str, MetricsSnapshot], kind: str) -> list[str]:
    """Every name of ``kind`` in any snapshot, in first-seen order (one family each)."""
    seen: dict[str, None] = {}
    for snapshot in snapshots.values():
        seen.update(dict.fromkeys(getattr(snapshot, kind)))
    return list(seen)


class Exposition:
    """Renders ``source()`` at each call: what ``GET /metrics`` answers."""

    content_type = CONTENT_TYPE

    def __init__(self, source: MetricsSource) -> None:
        # A registry of our own, not the global one: the process's other
        # collectors (the client's default process and GC metrics, a user's
        # own) are theirs to expose.
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(SnapshotCollector(source))

    def __call__(self) -> bytes:
        return generate_latest(self._registry)
