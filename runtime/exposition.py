"""``GET /metrics``: the server's counters in the Prometheus text format.

A collector reads :class:`runtime.metrics.Metrics`, the render pool and the open
connections at scrape time (nothing is counted twice; ``/stats`` reads the same
numbers as JSON). Families:

==========================================  =======  ==============================================
name                                        type     labels / meaning
==========================================  =======  ==============================================
lipsync_frames_total                        counter  package, tier: frames served (tier "static:overload": rendered cheaply because the session fell behind)
lipsync_idle_frames_total                   counter  package: frames answered with the resting mouth (silence)
lipsync_server_time_seconds                 histo.   package: from reading a request to its frame being ready
lipsync_overload_frames_total               counter  package: frames of the overload rule
lipsync_frames_dropped_total                counter  frames dropped for clients reading too slowly
lipsync_errors_total                        counter  code: ERROR replies (and gRPC errors) by protocol code
lipsync_sessions                            gauge    transport: open sessions ("websocket", "grpc")
lipsync_sessions_opened_total               counter  transport
lipsync_sessions_closed_idle_total          counter  sessions closed after --idle-timeout without a message
lipsync_sessions_closed_unread_total        counter  sessions closed for leaving their replies unread
lipsync_requests_refused_total              counter  reason ("origin", "host"): HTTP requests refused
lipsync_render_process_restarts_total       counter  render processes replaced after dying
lipsync_render_batches_total                counter  jobs: render batches by how many jobs they held
lipsync_render_batches_mixed_total          counter  batches holding jobs of websocket and gRPC sessions
lipsync_websocket_ping_rtt_seconds          gauge    mean keepalive-ping round trip of open websocket sessions (0 before the first ping, 20 s in); the server knows no other round trip
lipsync_packages                            gauge    packages offered
==========================================  =======  ==============================================
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .metrics import SERVER_TIME_BUCKETS

__all__ = ["CONTENT_TYPE_LATEST", "registry_for", "render_text"]


class ServerCollector:
    """Reads a running :class:`runtime.server.LipsyncServer` when scraped."""

    def __init__(self, server):
        self.server = server

    def collect(self):
        c = self.server.metrics.counters()
        pool = self.server.pool
        packages, transports, errors = c["packages"], c["transports"], c["errors"]

        frames = CounterMetricFamily("lipsync_frames", "Frames served, by package and the tier that rendered them",
                                     labels=["package", "tier"])
        idle = CounterMetricFamily("lipsync_idle_frames", "Frames answered with the resting mouth (silence)",
                                   labels=["package"])
        overload = CounterMetricFamily("lipsync_overload_frames", "Frames rendered by the cheapest tier because "
                                       "their session fell behind", labels=["package"])
        seconds = HistogramMetricFamily("lipsync_server_time_seconds", "Server time per frame, from reading the "
                                        "request to the frame being ready", labels=["package"])
        for name, (tiers, idle_n, buckets, total_s) in sorted(packages.items()):
            for tier, n in sorted(tiers.items()):
                frames.add_metric([name, tier], n)
            idle.add_metric([name], idle_n)
            overload.add_metric([name], sum(n for t, n in tiers.items() if t.endswith(":overload")))
            cumulative, acc = [], 0
            for le, n in zip([*(repr(b) for b in SERVER_TIME_BUCKETS), "+Inf"], buckets):
                acc += n
                cumulative.append((le, acc))
            seconds.add_metric([name], cumulative, sum_value=total_s)
        yield from (frames, idle, overload, seconds)

        yield CounterMetricFamily("lipsync_frames_dropped", "Frames dropped for clients reading too slowly",
                                  value=c["dropped"])
        err = CounterMetricFamily("lipsync_errors", "Errors answered, by protocol error code", labels=["code"])
        for code, n in sorted(errors.items()):
            err.add_metric([code], n)
        yield err

        active = GaugeMetricFamily("lipsync_sessions", "Open sessions by transport", labels=["transport"])
        opened = CounterMetricFamily("lipsync_sessions_opened", "Sessions opened by transport", labels=["transport"])
        for t in sorted({"websocket", "grpc"} | set(transports)):
            a, n = transports.get(t, (0, 0))
            active.add_metric([t], a)
            opened.add_metric([t], n)
        yield from (active, opened)
        yield CounterMetricFamily("lipsync_sessions_closed_idle", "Sessions closed after the idle timeout",
                                  value=c["closed_idle"])
        yield CounterMetricFamily("lipsync_sessions_closed_unread", "Sessions closed for leaving replies unread",
                                  value=c["closed_unread"])
        refused = CounterMetricFamily("lipsync_requests_refused", "HTTP requests refused", labels=["reason"])
        refused.add_metric(["origin"], c["refused_origin"])
        refused.add_metric(["host"], c["refused_host"])
        yield refused

        yield CounterMetricFamily("lipsync_render_process_restarts", "Render processes replaced after dying",
                                  value=pool.restarts)
        batches = CounterMetricFamily("lipsync_render_batches", "Render batches by the number of jobs they held",
                                      labels=["jobs"])
        for size, n in sorted(pool.batches.items()):
            batches.add_metric([str(size)], n)
        yield batches
        yield CounterMetricFamily("lipsync_render_batches_mixed", "Render batches holding jobs of more than one "
                                  "transport", value=pool.mixed_batches)
        rtts = self.server.ping_rtts()
        yield GaugeMetricFamily("lipsync_websocket_ping_rtt_seconds", "Mean keepalive-ping round trip of open "
                                "websocket sessions (measured every 20 s)",
                                value=sum(rtts) / len(rtts) if rtts else 0.0)
        yield GaugeMetricFamily("lipsync_packages", "Packages offered", value=len(self.server.store.names()))


def registry_for(server) -> CollectorRegistry:
    """A registry holding only this server's collector (no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return registry


def render_text(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
