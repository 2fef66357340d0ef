"""One client's session, without any I/O: protocol messages in, protocol messages out.

The server (:mod:`runtime.server`) reads a websocket message, decodes it,
hands it to :meth:`Session.handle` in a worker thread and sends what comes
back. Everything a session decides lives here, so tests and ``lipsync-eval``
can drive it without sockets.

Streaming mode: AUDIO_CHUNK ``k`` (40 ms) is answered by the FRAME for video
frame ``k``, with the chunk's seq, once chunk ``k + LOOKAHEAD_CHUNKS`` has
arrived (see :mod:`runtime.stream`), or when the client goes quiet and the
server calls :meth:`Session.flush`. Base frames advance ping-pong through the
package's training frames, one per frame, so the head keeps moving
(:meth:`runtime.store.Renderer.base_frame`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .protocol import (CHUNK_MS, WINDOW_MS, AudioChunk, Capabilities, Error, ErrorCode, Frame, Hello,
                       Message, ProtocolError, Stats, StatsRequest, SwitchPackage, WindowRequest,
                       pcm_to_float32)
from .store import Metrics, PackageStore, Rendered, Renderer
from .stream import IDLE_RMS, AudioStream, Resampler, rms, window_from_pcm

OVERLOAD_S = 0.15       # a message that waited this long before work began is rendered by the cheapest tier


class Session:
    """State of one connection.

    Parameters
    ----------
    store : PackageStore
    metrics : Metrics
    package : str, optional
        Initial package; the store's default if None.
    """

    def __init__(self, store: PackageStore, metrics: Metrics, package: str | None = None):
        self.store = store
        self.metrics = metrics
        self.encoding = "binary"
        self.package = package or store.default
        self._renderer: Renderer | None = None
        self._states: dict | None = None
        self.audio = AudioStream(fps=1000 / CHUNK_MS)
        self.chunk_seqs: deque[int] = deque()      # seq of each chunk whose frame is not out yet
        self.tick = 0                              # frames sent in streaming mode (drives ping-pong)
        self.frames_out = 0

    # ------------------------------------------------------------ helpers

    def _use(self, name: str) -> Renderer:
        """Switch to package ``name`` (KeyError if unknown); resets generator state."""
        renderer = self.store.get(name)
        if renderer is not self._renderer:
            self._renderer, self.package = renderer, name
            self._states = renderer.new_state()
        return renderer

    def _error(self, code: ErrorCode, text: str, seq: int) -> Error:
        self.metrics.error(code.name)
        return Error(seq=seq, code=code, text=text[:1024])

    def _frame(self, seq: int, r: Rendered, started: float, package: str) -> Frame:
        us = int((time.perf_counter() - started) * 1e6)
        self.metrics.frame(package, us, r.status, r.tier)
        self.frames_out += 1
        return Frame(seq=seq, status=r.status, base_frame=r.base, server_us=min(us, 0xFFFF_FFFF),
                     bounds=r.bounds, jpeg=r.jpeg)

    @staticmethod
    def _check_duration(msg, n_samples: int, ms: int) -> None:
        want = msg.sample_rate * ms // 1000
        if n_samples != want:
            raise ProtocolError(ErrorCode.BAD_AUDIO, f"{type(msg).__name__} holds {n_samples} samples at "
                                f"{msg.sample_rate} Hz; expected {ms} ms = {want} samples", msg.seq)

    # ------------------------------------------------------------ dispatch

    def handle(self, msg: Message, received_at: float | None = None) -> list[Message]:
        """Answer one decoded message. Never raises for a client's mistake: it answers ERROR.

        ``received_at`` (``time.perf_counter()`` when the server read the message) makes
        ``server_us`` include queueing; when the wait exceeded OVERLOAD_S, frames are
        rendered by the chain's cheapest tier so that a late session catches up.
        """
        replies, job = self.prepare(msg, received_at)
        if job is not None:
            replies += job.run()
        return replies

    def prepare(self, msg: Message, received_at: float | None = None) -> tuple[list[Message], "Job | None"]:
        """Everything but rendering: the immediate replies, and the frames to render as a Job.

        Workers call this for several sessions' messages, then render all the jobs
        together (:func:`render_jobs`) so a generator can batch across sessions.
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

    def _unknown(self, name: str, seq: int) -> Error:
        return self._error(ErrorCode.UNKNOWN_PACKAGE, f"no package named {name!r} on this server; "
                           f"it serves {', '.join(self.store.names())}", seq)

    def _chunk(self, msg: AudioChunk, started: float, degrade: bool) -> tuple[list[Message], "Job | None"]:
        try:
            renderer = self._use(msg.package or self.package)
        except KeyError:
            return [self._unknown(msg.package, msg.seq)], None
        samples = pcm_to_float32(msg.pcm, msg.sample_format)
        self._check_duration(msg, len(samples), CHUNK_MS)
        if not np.isfinite(samples).all():
            raise ProtocolError(ErrorCode.BAD_AUDIO, "float32 PCM holds NaN or infinity; "
                                "expected finite samples in [-1, 1]", msg.seq)
        self.audio.push(samples, msg.sample_rate)
        self.chunk_seqs.append(msg.seq)
        return [], self._emit(renderer, started, degrade)

    def _emit(self, renderer: Renderer, started: float, degrade: bool = False) -> "Job | None":
        ready = self.audio.pop()
        if not ready:
            return None
        bases = [renderer.base_frame(self.tick + i) for i in range(len(ready))]
        self.tick += len(ready)
        seqs = [self.chunk_seqs.popleft() for _ in ready]
        package = self.package

        def finish(rendered: list[Rendered]) -> list[Message]:
            return [self._frame(seq, r, started, package) for seq, r in zip(seqs, rendered)]

        return Job(renderer, bases, [f.mel for f in ready], [self._states] * len(ready),
                   [f.silent for f in ready], degrade, finish)

    def flush(self) -> list[Message]:
        """The client went quiet: answer the chunks still waiting for look-ahead."""
        job = self.prepare_flush()
        return job.run() if job is not None else []

    def prepare_flush(self) -> "Job | None":
        if not self.chunk_seqs or self._renderer is None:
            return None
        started = time.perf_counter()
        self.audio.flush()
        job = self._emit(self._renderer, started)
        self.audio = AudioStream(fps=1000 / CHUNK_MS)   # the next chunk starts a new stream
        return job

    def _window(self, msg: WindowRequest, started: float, degrade: bool) -> tuple[list[Message], "Job | None"]:
        name = msg.package or self.store.default
        try:
            renderer = self.store.get(name)
        except KeyError:
            return [self._unknown(name, msg.seq)], None
        if msg.frame_id >= renderer.frames:
            raise ProtocolError(ErrorCode.MALFORMED, f"frame id {msg.frame_id} is past the end of package "
                                f"{name!r}; expected 0 ... {renderer.frames - 1}", msg.seq)
        samples = pcm_to_float32(msg.pcm, msg.sample_format)
        self._check_duration(msg, len(samples), WINDOW_MS)
        if not np.isfinite(samples).all():
            raise ProtocolError(ErrorCode.BAD_AUDIO, "float32 PCM holds NaN or infinity", msg.seq)
        x16 = Resampler(msg.sample_rate)(samples)
        mel = window_from_pcm(x16)
        mid = len(x16) // 2
        own = x16[mid - 320:mid + 320]
        silent = rms(own) < IDLE_RMS

        def finish(rendered: list[Rendered]) -> list[Message]:
            return [self._frame(msg.seq, rendered[0], started, name)]

        return [], Job(renderer, [msg.frame_id], [mel], [renderer.new_state(rest=float(silent))], [silent], degrade, finish)


@dataclass
class Job:
    """Frames of one message, ready to render: the renderer's batch inputs and what to do after."""

    renderer: Renderer
    bases: list
    mels: list
    states: list
    silent: list
    degrade: bool
    finish: Callable[[list[Rendered]], list[Message]]
    rendered: list | None = None     # after run(): the Rendered frames (their stage timings), for lipsync-eval

    def run(self) -> list[Message]:
        self.rendered = self.renderer.render(self.bases, self.mels, self.states, self.silent, self.degrade)
        return self.finish(self.rendered)


def render_jobs(jobs: list[Job]) -> list[list[Message]]:
    """Render several messages' frames, batching those that share a package, in one call each.

    Returns each job's replies, in the order of ``jobs``. Jobs of the same session
    stay in order inside a batch, so stateful generators see their frames in sequence.
    """
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault((id(job.renderer), job.degrade), []).append(i)
    rendered: list = [None] * len(jobs)
    for idx in groups.values():
        first = jobs[idx[0]]
        flat = first.renderer.render([b for i in idx for b in jobs[i].bases], [m for i in idx for m in jobs[i].mels],
                                     [s for i in idx for s in jobs[i].states],
                                     [q for i in idx for q in jobs[i].silent], first.degrade)
        pos = 0
        for i in idx:
            rendered[i] = flat[pos:pos + len(jobs[i].bases)]
            pos += len(jobs[i].bases)
    return [job.finish(r) for job, r in zip(jobs, rendered)]
