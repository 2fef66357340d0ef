"""The packages a server offers, opened on first use, and its counters.

``PackageStore`` maps safe names to package folders: either one package
(``lipsync-serve models/anchor``) or every package folder directly inside a
directory (``lipsync-serve models/``). A name is a folder name matching
NAME_RE; it is looked up among the folders listed, never joined onto a path,
so it cannot leave the served folder.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, PackageError
from .generators import Chain, build_chain
from .generators.paste import resting
from .jpeg import QUALITY, encode_jpeg
from .mouth import for_package
from .package import MANIFEST, Package
from .protocol import CHUNK_MS, FrameStatus

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
JPEG_QUALITY = QUALITY
LATENCY_WINDOW = 10_000          # per-package server times kept for the percentiles
REST_KEY = "rest"                # session state: weight of the resting mouth, 0 (speaking) to 1 (at rest)
REST_STEP = 0.4                  # per 40 ms frame: 0 -> 1 in three frames (about 100 ms)


@dataclass
class Rendered:
    """One frame ready to send."""

    status: FrameStatus
    base: int
    jpeg: bytes
    bounds: tuple[int, int, int, int]
    tier: str
    render_ms: float = 0.0       # the generator's share of the batch (0 for idle frames: no generator call)
    jpeg_ms: float = 0.0


def check_servable(package: Package) -> None:
    """PackageError unless the package streams at one frame per chunk (25 fps)."""
    if abs(package.fps * CHUNK_MS - 1000) > 1e-6:
        raise PackageError(f"{package.root}: package is at {package.fps:g} fps, but the protocol streams "
                           f"{CHUNK_MS} ms chunks (25 fps); rebuild it with `lipsync-pack build --fps 25`")


def pingpong(t: int, n: int) -> int:
    """Frame index at tick ``t`` walking 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...  (n >= 1)."""
    if n <= 1:
        return 0
    period = 2 * n - 2
    r = t % period
    return r if r < n else period - r


def base_frame(package: Package, t: int) -> int:
    """The base frame a stream shows at tick ``t``: ping-pong over the training frames.

    The held-out tail is never shown, so ``lipsync-eval --holdout`` compares
    generated frames with real frames the generators have not seen.
    """
    train = package.train_range
    return train.start + pingpong(t, len(train))


class Renderer:
    """One open package: its generator chain, JPEG encoding and paste-back bounds."""

    def __init__(self, name: str, package: Package, chain_spec: str | None = None,
                 jpeg_quality: int = JPEG_QUALITY):
        check_servable(package)
        self.name = name
        self.package = package
        for_package(package)                  # the mouth-shape model: PackageError now if it is damaged
        self.chain: Chain = build_chain(package, chain_spec)
        self.jpeg_quality = jpeg_quality
        self.boxes = package.boxes           # mmap, int32 [N, 4]
        self.frames = package.frames

    def new_state(self, rest: float = 1.0) -> dict:
        """A session's state: each tier's, and the resting mouth's weight (streams start at rest)."""
        return {**self.chain.new_state(), REST_KEY: rest}

    def base_frame(self, t: int) -> int:
        """See :func:`base_frame`."""
        return base_frame(self.package, t)

    def render(self, bases: list[int], mels: list[np.ndarray], states: list[dict],
               silent: list[bool], degrade: bool = False) -> list[Rendered]:
        """Render a batch of frames, in order per session.

        Each session's resting-mouth weight moves REST_STEP per frame towards 1 on
        silent frames and towards 0 on the others (about 100 ms each way). At 1 the
        frame is IDLE: the base frame with the resting mouth, without a generator
        call; in between, the generator renders with that weight (:class:`Request`).

        ``degrade``: the server is behind; use the chain's cheapest tier (tier name gets ":overload").
        """
        out: list[Rendered | None] = [None] * len(bases)
        rest = []
        for s, state in zip(silent, states):          # in order: one session's frames follow each other
            w = state.get(REST_KEY, 1.0)
            w = min(1.0, w + REST_STEP) if s else max(0.0, w - REST_STEP)
            state[REST_KEY] = w
            rest.append(w)
        pending: list[int] = []                       # speaking frames not rendered yet, in order

        def flush() -> None:
            if not pending:
                return
            t0 = time.perf_counter()
            crops, tier = self.chain.render([bases[i] for i in pending], [mels[i] for i in pending],
                                            [states[i] for i in pending], degrade=degrade,
                                            rest=[rest[i] for i in pending])
            ms = (time.perf_counter() - t0) * 1e3 / len(pending)
            tier = f"{tier}:overload" if degrade else tier
            for i, crop in zip(pending, crops):
                out[i] = self._finish(FrameStatus.OK, bases[i], crop, tier, ms)
            pending.clear()

        for i, w in enumerate(rest):
            if w < 1.0:
                pending.append(i)
                continue
            if any(states[j] is states[i] for j in pending):   # this session spoke earlier in the batch:
                flush()                                         # render that before its state is reset
            self.chain.reset(states[i])
            out[i] = self._finish(FrameStatus.IDLE, bases[i], resting(self.package, bases[i]), "idle")
        flush()
        return out  # type: ignore[return-value]

    def _finish(self, status: FrameStatus, base: int, crop: np.ndarray, tier: str, render_ms: float = 0.0) -> Rendered:
        x0, y0, x1, y1 = (int(v) for v in self.boxes[base])
        t0 = time.perf_counter()
        jpeg = encode_jpeg(crop, self.jpeg_quality)
        return Rendered(status, base, jpeg, (x0, y0, x1, y1), tier, render_ms, (time.perf_counter() - t0) * 1e3)

    def close(self) -> None:
        self.chain.close()


@dataclass
class PackageMetrics:
    frames: int = 0
    idle: int = 0
    latencies_us: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    tiers: dict = field(default_factory=dict)


class Metrics:
    """Server-wide counters, shared by every session (guarded by a lock)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started = time.time()
        self.sessions_active = 0
        self.sessions_total = 0
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

    def count(self, attr: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + n)

    def error(self, code_name: str) -> None:
        with self._lock:
            self.errors[code_name] = self.errors.get(code_name, 0) + 1

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
                    "sessions": {"active": self.sessions_active, "total": self.sessions_total},
                    "frames_served": sum(m.frames for m in self.packages.values()),
                    "frames_dropped": self.dropped, "errors": dict(self.errors), "packages": per}


class PackageStore:
    """Named packages under one folder, opened (mmap) on first use and then kept.

    Parameters
    ----------
    path : path
        A package folder, or a folder whose sub-folders are packages.
    chain : str, optional
        Generator chain for every package (``"retrieval,static"``; None = default).
    """

    def __init__(self, path: str | Path, chain: str | None = None, jpeg_quality: int = JPEG_QUALITY):
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise InputError(f"{path}: no such folder; pass a package folder or a folder of packages")
        self.path = root
        self.single = (root / MANIFEST).is_file()
        self.root = root.parent if self.single else root
        self._only = root.name if self.single else None
        self.chain = chain
        self.jpeg_quality = jpeg_quality
        self._open: dict[str, Renderer] = {}
        self._lock = threading.Lock()
        if not self.names():
            raise InputError(f"{path}: no packages here (no */manifest.json); build one with "
                             f"`lipsync-pack build VIDEO -o {Path(path) / 'NAME'}`")

    def names(self) -> list[str]:
        """Package names on offer, sorted (re-listed on each call: new packages appear)."""
        if self._only is not None:
            return [self._only]
        return sorted(p.name for p in self.root.iterdir()
                      if NAME_RE.match(p.name) and (p / MANIFEST).is_file())

    @property
    def default(self) -> str:
        return self.names()[0]

    def folder(self, name: str) -> Path:
        """The folder of package ``name``; KeyError if there is no such package."""
        if self._only is not None:                     # one package: its folder name, whatever it is
            if name != self._only:
                raise KeyError(name)
            return self.root / name
        if not isinstance(name, str) or not NAME_RE.match(name) or name not in self.names():
            raise KeyError(name)
        return self.root / name

    def get(self, name: str) -> Renderer:
        """The open package ``name`` (opened now if need be). KeyError if unknown."""
        renderer = self._open.get(name)
        if renderer is not None:
            return renderer
        folder = self.folder(name)
        with self._lock:
            if name not in self._open:
                self._open[name] = Renderer(name, Package.open(folder), self.chain, self.jpeg_quality)
            return self._open[name]

    def close(self) -> None:
        for r in self._open.values():
            r.close()
        self._open.clear()
