"""Drive the runtime frame by frame, as the server does, and time every stage.

In-process runs drive the server's own :class:`runtime.session.Session` with
AUDIO_CHUNK messages, in real-time order: audio goes in 40 ms at a time and
each frame comes out as soon as its look-ahead is in, rendered, eased into
silence and JPEG-encoded by the code that serves it.
Stages, per frame, in milliseconds:

- ``features``: resampling and log-mel for the chunk that completed the frame;
- ``generator``: the generator's render call (0 for idle frames: the resting mouth, no generator);
- ``jpeg``: JPEG encoding, as the server sends it;
- ``paste``: what a client does: JPEG decoding and pasting the crop into the full frame.

``total`` is features + generator + jpeg: the server-side time of the frame.

Server runs (``--server``) stream the audio to a running ``lipsync-serve`` in
real time, over its websocket or its gRPC port (:func:`runtime.client.open_client`), and record the round trip per
frame; ``audio_to_frame`` adds the chunk's own 40 ms of capture to it.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from runtime.jpeg import decode_jpeg
from runtime.package import Package
from runtime.protocol import CHUNK_MS, AudioChunk, SampleFormat, float32_to_pcm
from runtime.features import SAMPLE_RATE, samples_per_frame
from runtime.metrics import Metrics
from runtime.options import RenderOptions
from runtime.render import Renderers
from runtime.session import Session
from runtime.store import PackageStore

STAGES = ("features", "generator", "jpeg", "paste")


class JpegFrames:
    """Output crops kept as the JPEG bytes a client receives (about 15 KB each), decoded on access.

    Keeping bytes rather than pixels holds an hour of frames in under 1.5 GB
    less memory than raw crops would take, and measures what clients see.
    """

    def __init__(self):
        self.data: list[bytes] = []

    def append(self, jpeg: bytes) -> None:
        self.data.append(jpeg)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, k: int) -> np.ndarray:
        return decode_jpeg(self.data[k])

    def __iter__(self):
        return (decode_jpeg(d) for d in self.data)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.stack(list(self)) if self.data else np.zeros((0, 0, 0, 3), np.uint8)
        return out if dtype is None else out.astype(dtype)


@dataclass
class Run:
    """One generator's pass over the audio.

    Attributes
    ----------
    crops : JpegFrames or np.ndarray [shape=(T, S, S, 3), dtype=uint8]
        The crops a client would show.
    stages : dict of str to np.ndarray [shape=(T,)]
        Milliseconds per frame for each of STAGES and ``total``.
    """

    generator: str
    mode: str
    bases: np.ndarray
    status: np.ndarray
    crops: "JpegFrames | np.ndarray"
    stages: dict[str, np.ndarray]
    first_frame_ms: float
    wall_s: float
    peak_rss_mb: float
    tiers: dict = field(default_factory=dict)
    client: dict[str, np.ndarray] = field(default_factory=dict)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def paste(frame: np.ndarray, crop: np.ndarray, bounds) -> np.ndarray:
    """Scale ``crop`` to ``bounds`` (x0, y0, x1, y1; may overhang) and paste it into ``frame`` in place."""
    x0, y0, x1, y1 = (int(v) for v in bounds)
    scaled = cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    h, w = frame.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 > cx0 and cy1 > cy0:
        frame[cy0:cy1, cx0:cx1] = scaled[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return frame


def run_inprocess(package: Package, audio16k: np.ndarray, generator: str,
                  on_frame: Callable[..., float] | None = None, progress=None) -> Run:
    """Stream the audio through a real :class:`runtime.session.Session`, 40 ms at a time, timing each stage.

    The session and the renderer are the server's own: the session prepares each
    message's :class:`runtime.render.RenderJob` and a :class:`runtime.render.Renderers`
    renders it, as a render process does, with a chain of the one ``generator``
    (no fallback to hide its failures): the JPEGs are the bytes the server would
    send, base frames included.

    Parameters
    ----------
    audio16k : np.ndarray [shape=(T * samples_per_frame(package.fps),), dtype=float32]
    on_frame : callable, optional
        ``on_frame(k, crop, bounds, base) -> milliseconds``: composes the full frame
        (the ``paste`` stage) and hands it on, e.g. to the video writer.
    """
    store = PackageStore(package.root)
    renderers = Renderers(store, RenderOptions(chain=generator))
    try:
        session = Session(store, Metrics(), renderers=renderers)
        spf = samples_per_frame(package.fps)
        n = int(np.ceil(len(audio16k) / spf))
        stages = {s: np.zeros(n) for s in (*STAGES, "total")}
        status = np.zeros(n, np.uint8)
        bases = np.zeros(n, np.int64)
        out = JpegFrames()
        first = None
        k = 0
        t_start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            pcm = np.zeros(spf, np.float32)
            chunk = audio16k[i * spf:(i + 1) * spf]
            pcm[:len(chunk)] = chunk
            msg = AudioChunk(seq=i, sample_rate=SAMPLE_RATE, sample_format=SampleFormat.FLOAT32,
                             pcm=float32_to_pcm(pcm, SampleFormat.FLOAT32))
            replies, work = session.prepare(msg)
            if replies:
                raise RuntimeError(f"the session answered {replies[0]}")
            feat_ms = (time.perf_counter() - t0) * 1e3
            works = [work] if work is not None else []
            if i == n - 1:
                flushed, last = session.prepare_flush()
                if flushed:
                    raise RuntimeError(f"the session answered {flushed[0]}")
                works += [last] if last is not None else []
            for w in works:
                rendered = renderers.render([w.job])[0]
                if isinstance(rendered, BaseException):
                    raise rendered
                frames = session.finish(w, rendered)
                for frame, r in zip(frames, rendered):
                    stages["features"][k] = feat_ms / len(rendered)
                    stages["generator"][k] = r.render_ms
                    stages["jpeg"][k] = r.jpeg_ms
                    stages["total"][k] = stages["features"][k] + r.render_ms + r.jpeg_ms
                    status[k], bases[k] = r.status, r.base
                    if first is None:
                        first = (time.perf_counter() - t_start) * 1e3
                    t2 = time.perf_counter()
                    out.append(frame.jpeg)
                    extra = on_frame(k, decode_jpeg(frame.jpeg), frame.bounds, r.base) if on_frame else 0.0
                    stages["paste"][k] = (time.perf_counter() - t2) * 1e3 - extra
                    k += 1
                    if progress is not None:
                        progress.update(1)
        wall = time.perf_counter() - t_start
        tiers = renderers.served().get(store.default, {})
    finally:
        renderers.close()
        store.close()
    return Run(generator, "in-process", bases, status, out, stages, first or 0.0, wall, peak_rss_mb(), tiers)


async def _server_stream(url: str, name: str, audio16k: np.ndarray, frames: int, progress) -> list:
    from runtime.client import open_client

    out = []
    async with open_client(url, package=name) as c:
        async for frame, rtt in c.stream(audio16k[:frames * SAMPLE_RATE * CHUNK_MS // 1000], SAMPLE_RATE, realtime=True):
            out.append((frame, rtt))
            if progress is not None:
                progress.update(1)
    return out


async def _server_windows(url: str, name: str, audio16k: np.ndarray, bases: np.ndarray, fps: float,
                          progress) -> list:
    from runtime.client import open_client, window_around

    out = []
    async with open_client(url) as c:
        for k, base in enumerate(bases):
            t0 = time.perf_counter()
            frame = await c.window(int(base), window_around(audio16k, k, SAMPLE_RATE, fps), package=name)
            out.append((frame, time.perf_counter() - t0))
            if progress is not None:
                progress.update(1)
    return out


def run_server(url: str, package: Package, name: str, audio16k: np.ndarray, frames: int,
               holdout_bases: np.ndarray | None = None,
               on_frame: Callable[..., float] | None = None, progress=None) -> Run:
    """Evaluate a running server: streaming in real time, or window requests for held-out frames."""
    t_start = time.perf_counter()
    if holdout_bases is None:
        replies = asyncio.run(_server_stream(url, name, audio16k, frames, progress))
    else:
        replies = asyncio.run(_server_windows(url, name, audio16k, holdout_bases, package.fps, progress))
    wall = time.perf_counter() - t_start
    n = len(replies)
    stages = {s: np.zeros(n) for s in (*STAGES, "total")}
    status = np.zeros(n, np.uint8)
    bases = np.zeros(n, np.int64)
    rtt = np.zeros(n)
    out = JpegFrames()
    for k, (frame, seconds) in enumerate(replies):
        bases[k], status[k], rtt[k] = frame.base_frame, frame.status, seconds * 1e3
        stages["total"][k] = frame.server_us / 1e3
        t2 = time.perf_counter()
        out.append(frame.jpeg)
        extra = on_frame(k, decode_jpeg(frame.jpeg), frame.bounds, frame.base_frame) if on_frame else 0.0
        stages["paste"][k] = (time.perf_counter() - t2) * 1e3 - extra
    client = {"rtt_ms": rtt}
    if holdout_bases is None:
        client["audio_to_frame_ms"] = rtt + CHUNK_MS
    first = float(rtt[0]) if n else 0.0
    return Run("server", "server", bases, status, out, stages, first, wall, peak_rss_mb(),
               client=client)
