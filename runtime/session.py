"""One client's session, without any I/O: protocol messages in, protocol messages out.

A session owns everything about one stream: the reply encoding, the package in
use, the audio ring buffer, the seqs waiting for look-ahead, the ping-pong tick
and the render state (each tier's state, the resting-mouth weight). It lives
in the server process (:mod:`runtime.server`), which reads a websocket
message, decodes it and asks the session what to answer:

* :meth:`Session.prepare` gives the immediate replies (CAPABILITIES, STATS,
  ERROR) and, when frames are due, a :class:`Work` whose ``job`` is rendered
  elsewhere: by the render processes (:mod:`runtime.workers`) when serving, or
  in this process by :class:`runtime.render.Renderers` (tests, ``lipsync-eval``);
* :meth:`Session.finish` turns the rendered frames into FRAME messages, takes
  back the render state and counts them in the server's metrics.

:meth:`Session.handle` and :meth:`Session.flush` do both in this process.

Streaming mode: AUDIO_CHUNK ``k`` (40 ms) is answered by the FRAME for video
frame ``k``, with the chunk's seq, once chunk ``k + LOOKAHEAD_CHUNKS`` has
arrived (see :mod:`runtime.stream`), or when the client goes quiet and the
server calls :meth:`Session.prepare_flush`. Base frames advance ping-pong
through the package's training frames, one per frame, so the head keeps moving
(:func:`runtime.render.base_frame`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from .errors import LipsyncError
from .metrics import Metrics
from .protocol import (CHUNK_MS, WINDOW_MS, AudioChunk, Capabilities, Error, ErrorCode, Frame, Hello,
                       Message, ProtocolError, Stats, StatsRequest, SwitchPackage, WindowRequest,
                       error_reply, pcm_to_float32)
from .render import REST_KEY, Rendered, Renderers, RenderJob, base_frame
from .store import PackageStore
from .features import SAMPLE_RATE
from .stream import IDLE_RMS, LOOKAHEAD_CHUNKS, AudioStream, Resampler, frame_rms, window_from_pcm

OVERLOAD_S = 0.15       # a message that waited this long before work began is rendered by the cheapest tier


@dataclass
class Work:
    """Frames a message made due: the job to render and what the session needs to answer it."""

    job: RenderJob
    seqs: list[int]              # one per frame
    started: float               # perf_counter when the message arrived (server_us counts from here)
    stream: bool                 # streaming frames: the session takes back the job's render state


class Session:
    """State of one connection.

    Parameters
    ----------
    store : PackageStore
    metrics : Metrics
        The server's counters; frames and errors are counted as they are answered.
    package : str, optional
        Initial package; the store's default if None.
    renderers : Renderers, optional
        Renders for :meth:`handle` and :meth:`flush` (made on first use if None).
    """

    def __init__(self, store: PackageStore, metrics: Metrics, package: str | None = None,
                 renderers: Renderers | None = None):
        self.store = store
        self.metrics = metrics
        self.renderers = renderers
        self.encoding = "binary"
        self.package = package or store.default
        self.state: dict = {}                      # render state for self.package ({} = fresh, at rest)
        self.audio = AudioStream(fps=1000 / CHUNK_MS)
        self.chunk_seqs: deque[int] = deque()      # seq of each chunk whose frame is not out yet
        self.tick = 0                              # frames sent in streaming mode (drives ping-pong)

    @property
    def pending(self) -> int:
        """Chunks waiting for look-ahead (the server flushes them after a quiet spell)."""
        return len(self.chunk_seqs)

    # ------------------------------------------------------------ in this process

    def handle(self, msg: Message, received_at: float | None = None) -> list[Message]:
        """Answer one decoded message, rendering here. Never raises for a client's mistake: it answers ERROR."""
        replies, work = self.prepare(msg, received_at)
        return replies + (self.render_here(work) if work is not None else [])

    def flush(self) -> list[Message]:
        """The client went quiet: answer the chunks still waiting for look-ahead, rendering here."""
        replies, work = self.prepare_flush()
        return replies + (self.render_here(work) if work is not None else [])

    def render_here(self, work: Work) -> list[Message]:
        if self.renderers is None:
            self.renderers = Renderers(self.store)
        return self.finish(work, self.renderers.render([work.job])[0])

    # ------------------------------------------------------------ dispatch

    def prepare(self, msg: Message, received_at: float | None = None) -> tuple[list[Message], Work | None]:
        """Everything but rendering: the immediate replies, and the frames to render as :class:`Work`.

        ``received_at`` (``time.perf_counter()`` when the server read the message) makes
        ``server_us`` include queueing; when the wait exceeded OVERLOAD_S, frames are
        rendered by the chain's cheapest tier so that a late session catches up.
        """
        started = time.perf_counter() if received_at is None else received_at
        degrade = time.perf_counter() - started > OVERLOAD_S
        try:
            if isinstance(msg, AudioChunk):
                return self._chunk(msg, started, degrade)
            if isinstance(msg, WindowRequest):
                return self._window(msg, started, degrade)
            if isinstance(msg, Hello):
                self.encoding = msg.encoding
                return [Capabilities(seq=msg.seq, packages=tuple(self.store.names()))], None
            if isinstance(msg, SwitchPackage):
                try:
                    self._use(msg.package)
                except KeyError:
                    return [self._unknown(msg.package, msg.seq)], None
                return [], None
            if isinstance(msg, StatsRequest):
                return [Stats(seq=msg.seq, stats=self.metrics.snapshot())], None
            return [self._error(ErrorCode.MALFORMED, f"{type(msg).__name__.upper()} is a server-to-client "
                                "message; a client sends HELLO, AUDIO_CHUNK, WINDOW_REQUEST, "
                                "SWITCH_PACKAGE or STATS_REQUEST", msg.seq)], None
        except ProtocolError as exc:
            return [self._error(exc.code, str(exc), msg.seq)], None
        except LipsyncError as exc:                # a damaged package: the client hears why
            return [self._error(ErrorCode.INTERNAL, str(exc), msg.seq)], None

    def prepare_flush(self) -> tuple[list[Message], Work | None]:
        """The client went quiet: the chunks still waiting for look-ahead, as Work (None if none).

        If their package was unloaded meanwhile, each is answered UNKNOWN_PACKAGE instead.
        """
        if not self.chunk_seqs:
            return [], None
        try:
            self.store.get(self.package)
        except KeyError:
            errors = [self._unknown(self.package, seq) for seq in self.chunk_seqs]
            self.chunk_seqs.clear()
            self.audio = AudioStream(fps=1000 / CHUNK_MS)
            return errors, None
        self.audio.flush()
        work = self._emit(time.perf_counter())
        self.audio = AudioStream(fps=1000 / CHUNK_MS)   # the next chunk starts a new stream
        return [], work

    def finish(self, work: Work, rendered: list[Rendered] | BaseException) -> list[Message]:
        """FRAME messages for rendered Work (ERROR if rendering failed); counts them in the metrics."""
        if isinstance(rendered, BaseException):          # each frame it held is answered, so none is awaited forever
            return [self._error(ErrorCode.INTERNAL, f"server error: {rendered}", seq) for seq in work.seqs]
        if work.stream and work.job.package == self.package:
            self.state = work.job.state             # a render process sends back its updated copy
        us = int((time.perf_counter() - work.started) * 1e6)
        out = []
        for seq, r in zip(work.seqs, rendered):
            self.metrics.frame(work.job.package, us, r.status, r.tier)
            out.append(Frame(seq=seq, status=r.status, base_frame=r.base, server_us=min(us, 0xFFFF_FFFF),
                             bounds=r.bounds, jpeg=r.jpeg, tier=r.tier))
        return out

    # ------------------------------------------------------------ helpers

    def _use(self, name: str | None) -> None:
        """Switch to package ``name`` (KeyError if unknown); a new package starts a fresh render state."""
        if name is None:
            raise KeyError(name)
        if name != self.package:
            self.store.folder(name)
            self.package, self.state = name, {}

    def refuse(self, exc: ProtocolError) -> Error:
        """The ERROR answering a message that could not be decoded or built; counted in the metrics."""
        self.metrics.error(exc.code.name)
        return error_reply(exc)

    def _error(self, code: ErrorCode, text: str, seq: int) -> Error:
        self.metrics.error(code.name)
        return Error(seq=seq, code=code, text=text[:1024])

    def _unknown(self, name: str | None, seq: int) -> Error:
        names = self.store.names()
        offered = f"it serves {', '.join(names)}" if names else "it serves none now: load one (gRPC LoadPackage)"
        what = f"no package named {name!r}" if name else "no package chosen"
        return self._error(ErrorCode.UNKNOWN_PACKAGE, f"{what} on this server; {offered}", seq)

    @staticmethod
    def _check_duration(msg, n_samples: int, ms: int) -> None:
        want = msg.sample_rate * ms // 1000
        if n_samples != want:
            raise ProtocolError(ErrorCode.BAD_AUDIO, f"{type(msg).__name__} holds {n_samples} samples at "
                                f"{msg.sample_rate} Hz; expected {ms} ms = {want} samples", msg.seq)

    def _chunk(self, msg: AudioChunk, started: float, degrade: bool) -> tuple[list[Message], Work | None]:
        name = msg.package or self.package
        try:
            self._use(name)
            self.store.get(self.package)      # PackageError (answered INTERNAL) before any audio is taken
        except KeyError:                      # never offered, or unloaded while this session used it
            return [self._unknown(name, msg.seq)], None
        samples = pcm_to_float32(msg.pcm, msg.sample_format)      # BAD_AUDIO for NaN, infinity, ragged bytes
        self._check_duration(msg, len(samples), CHUNK_MS)
        self.audio.push(samples, msg.sample_rate)
        self.chunk_seqs.append(msg.seq)
        return [], self._emit(started, degrade)

    def _emit(self, started: float, degrade: bool = False) -> Work | None:
        ready = self.audio.pop()
        if not ready:
            return None
        package = self.store.get(self.package)
        bases = [base_frame(package, self.tick + i) for i in range(len(ready))]
        self.tick += len(ready)
        seqs = [self.chunk_seqs.popleft() for _ in ready]
        job = RenderJob(self.package, bases, [f.mel for f in ready], [f.quiet for f in ready], self.state, degrade)
        return Work(job, seqs, started, stream=True)

    def _window(self, msg: WindowRequest, started: float, degrade: bool) -> tuple[list[Message], Work | None]:
        name = msg.package or self.store.default
        try:
            package = self.store.get(name)
        except KeyError:
            return [self._unknown(name, msg.seq)], None
        if msg.frame_id >= package.frames:
            raise ProtocolError(ErrorCode.MALFORMED, f"frame id {msg.frame_id} is past the end of package "
                                f"{name!r}; expected 0 ... {package.frames - 1}", msg.seq)
        samples = pcm_to_float32(msg.pcm, msg.sample_format)
        self._check_duration(msg, len(samples), WINDOW_MS)
        x16 = Resampler(msg.sample_rate)(samples)
        mel = window_from_pcm(x16)
        mid, half = len(x16) // 2, SAMPLE_RATE * CHUNK_MS // 2000      # the frame's own 40 ms at the centre
        quiet = frame_rms(x16[mid - half:], 1 + LOOKAHEAD_CHUNKS, 2 * half).max() < IDLE_RMS   # + look-ahead
        job = RenderJob(name, [msg.frame_id], [mel], [quiet], {REST_KEY: float(quiet)}, degrade)
        return [], Work(job, [msg.seq], started, stream=False)
