"""Rendering: from a batch of (base frame, mel window, silence) to JPEG face crops with paste-back bounds.

This is the one place frames are made, for the server's render processes
(:mod:`runtime.workers`) and for ``lipsync-eval`` alike. A :class:`RenderJob`
is plain data (it crosses the pipe to a render process); a session
(:mod:`runtime.session`) prepares it, a :class:`Renderers` renders it, and
the session turns the :class:`Rendered` frames into FRAME messages.

A job carries its session's render state (each tier's state and the weight of
the resting mouth) and comes back with it updated, so the session stays the
only owner of everything about one stream.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import PackageError
from .generators import Chain, build_chain
from .generators.paste import resting
from .jpeg import encode_jpeg
from .mouth import for_package
from .options import RenderOptions
from .package import Package
from .protocol import CHUNK_MS, FrameStatus

REST_KEY = "rest"                # render state: weight of the resting mouth, 0 (speaking) to 1 (at rest)
QUIET_KEY = "quiet"              # render state: quiet frames in a row
REST_STEP = 0.4                  # per 40 ms frame: 0 -> 1 in three frames (about 100 ms)
HOLD_FRAMES = 8                  # quiet frames (320 ms) before the mouth starts to rest: a speaker's lips stay
                                 # where speech left them between words and phrases (on cnn_71s the mouth is
                                 # as open in pauses as in speech); only a longer silence closes them


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


@dataclass
class RenderJob:
    """One session's frames to render, in order.

    ``state`` is the session's render state for ``package`` (``{}`` for a fresh
    stream: at rest, every tier's state new); rendering updates it in place, and
    a render process sends it back with the frames.
    """

    package: str
    bases: list[int]
    mels: list[np.ndarray]
    quiet: list[bool]            # per frame: no speech in its 40 ms nor in the look-ahead (FrameAudio.quiet)
    state: dict = field(default_factory=dict)
    degrade: bool = False        # the server is behind: the chain's cheapest tier only


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

    def __init__(self, name: str, package: Package, options: RenderOptions = RenderOptions()):
        check_servable(package)
        self.name = name
        self.package = package
        for_package(package)                  # the mouth-shape model: PackageError now if it is damaged
        self.chain: Chain = build_chain(package, options.chain, options)
        self.jpeg_quality = options.jpeg_quality
        self.boxes = package.boxes           # mmap, int32 [N, 4]

    def new_state(self, rest: float = 1.0) -> dict:
        """A fresh render state: every tier's own, with the resting mouth at weight ``rest``."""
        return self._ready({REST_KEY: rest})

    def _ready(self, state: dict) -> dict:
        """Fill a fresh (or partly fresh) state: every tier's own, at rest."""
        for g in self.chain.tiers:
            if g.name not in state:
                state[g.name] = g.new_state()
        state.setdefault(REST_KEY, 1.0)
        state.setdefault(QUIET_KEY, HOLD_FRAMES if state[REST_KEY] >= 1.0 else 0)
        return state

    def render(self, bases: list[int], mels: list[np.ndarray], states: list[dict],
               quiet: list[bool], degrade: bool = False) -> list[Rendered]:
        """Render a batch of frames, in order per session (frames of one session share a state dict).

        Each session's resting-mouth weight moves REST_STEP per frame towards 0 on
        frames that are not quiet, and towards 1 once more than HOLD_FRAMES quiet
        frames have come in a row (about 100 ms each way). A short pause between words
        keeps the generator running on the audio, as a speaker keeps their lips; a
        frame is not quiet when speech starts in its look-ahead, so the mouth starts
        to open before the sound. At 1 the frame is IDLE: the base frame with the
        resting mouth, without a generator call; in between, the generator renders
        with that weight (:class:`Request`).

        ``degrade``: the server is behind; use the chain's cheapest tier (tier name gets ":overload").
        """
        out: list[Rendered | None] = [None] * len(bases)
        rest = []
        for q, state in zip(quiet, states):           # in order: one session's frames follow each other
            w = self._ready(state)[REST_KEY]
            n = min(state[QUIET_KEY] + 1, HOLD_FRAMES + 1) if q else 0
            w = min(1.0, w + REST_STEP) if n > HOLD_FRAMES else max(0.0, w - REST_STEP)
            state[QUIET_KEY] = n
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


class Renderers:
    """The renderers of one process, one per package, opened on first use and then kept.

    Parameters
    ----------
    store : runtime.store.PackageStore
        Where package names are looked up (and packages opened).
    options : RenderOptions
    """

    def __init__(self, store, options: RenderOptions = RenderOptions()):
        self.store = store
        self.options = options
        self._open: dict[str, Renderer] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Renderer:
        """The renderer of package ``name``; KeyError if unknown, PackageError if it cannot serve."""
        renderer = self._open.get(name)
        if renderer is not None:
            return renderer
        with self._lock:
            if name not in self._open:
                self._open[name] = Renderer(name, self.store.get(name), self.options)
            return self._open[name]

    def render(self, jobs: list[RenderJob]) -> list[list[Rendered]]:
        """Render several jobs, batching those that share a package (and overload mode) in one call.

        Returns each job's frames, in the order of ``jobs``; each job's state is updated
        in place. Frames of one job stay in order inside a batch, so stateful tiers see
        them in sequence. A package that cannot be opened or rendered fails only its own
        jobs: their entry is the exception instead of a list.
        """
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.package, job.degrade), []).append(i)
        out: list = [None] * len(jobs)
        for (name, degrade), idx in groups.items():
            try:
                flat = self.get(name).render([b for i in idx for b in jobs[i].bases],
                                             [m for i in idx for m in jobs[i].mels],
                                             [jobs[i].state for i in idx for _ in jobs[i].bases],
                                             [q for i in idx for q in jobs[i].quiet], degrade)
            except Exception as exc:          # a damaged package or a bug: those jobs fail, not the process
                for i in idx:
                    out[i] = exc
                continue
            pos = 0
            for i in idx:
                out[i] = flat[pos:pos + len(jobs[i].bases)]
                pos += len(jobs[i].bases)
        return out

    def served(self) -> dict[str, dict[str, int]]:
        """Frames each tier rendered, per open package."""
        return {name: dict(r.chain.served) for name, r in self._open.items()}

    def close(self) -> None:
        for r in self._open.values():
            r.close()
        self._open.clear()
