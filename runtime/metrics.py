"""The server's counters: sessions, frames, drops, errors and latency percentiles per package.

One ``Metrics`` lives in the server process; sessions record into it as they
answer, and ``/stats``, STATS and the Prometheus-style views read its snapshot.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .protocol import FrameStatus

LATENCY_WINDOW = 10_000          # per-package server times kept for the percentiles
# Upper bounds (seconds) of the server-time histogram's buckets, for /metrics.
SERVER_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


@dataclass
class PackageMetrics:
    frames: int = 0
    idle: int = 0
    latencies_us: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    tiers: dict = field(default_factory=dict)
    buckets: list = field(default_factory=lambda: [0] * (len(SERVER_TIME_BUCKETS) + 1))   # last: +Inf
    seconds: float = 0.0             # sum of server times


class Metrics:
    """Server-wide counters, shared by every session (guarded by a lock)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started = time.time()
        self.sessions_active = 0
        self.sessions_total = 0
        self.transports: dict[str, list[int]] = {}   # "websocket"/"grpc" -> [active, total]
        self.closed_idle = 0             # sessions closed after idle_timeout_s without a message
        self.closed_unread = 0           # sessions closed for leaving queue_replies replies unread
        self.refused_origin = 0          # websocket handshakes refused for their Origin (403)
        self.refused_host = 0            # HTTP requests refused for their Host (403)
        self.dropped = 0
        self.errors: dict[str, int] = {}
        self.packages: dict[str, PackageMetrics] = {}

    def frame(self, package: str, server_us: int, status: FrameStatus, tier: str) -> None:
        with self._lock:
            m = self.packages.setdefault(package, PackageMetrics())
            m.frames += 1
            m.idle += status == FrameStatus.IDLE
            m.latencies_us.append(server_us)
            m.tiers[tier] = m.tiers.get(tier, 0) + 1
            m.buckets[bisect.bisect_left(SERVER_TIME_BUCKETS, server_us / 1e6)] += 1
            m.seconds += server_us / 1e6

    def session(self, transport: str, opened: bool) -> None:
        """A session of ``transport`` opened (True) or closed (False)."""
        with self._lock:
            counts = self.transports.setdefault(transport, [0, 0])
            step = 1 if opened else -1
            counts[0] += step
            self.sessions_active += step
            if opened:
                counts[1] += 1
                self.sessions_total += 1

    def count(self, attr: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + n)

    def error(self, code_name: str) -> None:
        with self._lock:
            self.errors[code_name] = self.errors.get(code_name, 0) + 1

    def counters(self) -> dict:
        """A consistent copy of the raw counters, for /metrics: per package (tiers, idle, histogram
        buckets, seconds), sessions by transport, errors, and the server-wide counts."""
        with self._lock:
            return {"packages": {name: (dict(p.tiers), p.idle, list(p.buckets), p.seconds)
                                 for name, p in self.packages.items()},
                    "transports": {t: tuple(v) for t, v in self.transports.items()},
                    "errors": dict(self.errors),
                    "dropped": self.dropped, "closed_idle": self.closed_idle, "closed_unread": self.closed_unread,
                    "refused_origin": self.refused_origin, "refused_host": self.refused_host}

    def snapshot(self) -> dict:
        """JSON-ready counters: sessions, frames, drops, errors, latency percentiles per package (ms)."""
        with self._lock:
            per = {}
            for name, m in self.packages.items():
                lat = np.asarray(m.latencies_us, dtype=np.float64) / 1000.0
                pct = (np.percentile(lat, [50, 95, 99]).round(3).tolist() if len(lat) else [None] * 3)
                per[name] = {"frames": m.frames, "idle_frames": m.idle, "tiers": dict(m.tiers),
                             "latency_ms": dict(zip(("p50", "p95", "p99"), pct))}
            return {"uptime_s": round(time.time() - self.started, 3),
                    "sessions": {"active": self.sessions_active, "total": self.sessions_total,
                                 "closed_idle": self.closed_idle, "closed_unread": self.closed_unread,
                                 "by_transport": {t: {"active": a, "total": n}
                                                  for t, (a, n) in self.transports.items()}},
                    "refused": {"origin": self.refused_origin, "host": self.refused_host},
                    "frames_served": sum(m.frames for m in self.packages.values()),
                    "frames_dropped": self.dropped, "errors": dict(self.errors), "packages": per}
