"""A Python client for lipsync-serve, used by the tests and by ``lipsync-eval --server``.

    async with Client("ws://127.0.0.1:8765/ws") as c:
        print(c.capabilities.packages)
        async for frame, sent_at in c.stream(samples, 16000, realtime=True):
            ...                       # one FRAME per 40 ms chunk, in order

Frames come back as :class:`runtime.protocol.Frame`; :func:`decode_jpeg` turns
one into an RGB array. Errors from the server arrive as
:class:`runtime.protocol.Error` messages; :meth:`Client.recv` returns them
like any other message, and :meth:`Client.expect` raises :class:`ServerError`.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from . import __version__, jpeg
from .errors import InputError, LipsyncError
from .features import SAMPLE_RATE
from .protocol import (CHUNK_MS, MAX_MESSAGE_BYTES, WINDOW_MS, AudioChunk, Capabilities, Error, ErrorCode, Frame,
                       Hello, Message, SampleFormat, Stats, StatsRequest, SwitchPackage, WindowRequest,
                       decode, decode_json, encode_as, float32_to_pcm)


class ServerError(LipsyncError):
    """The server answered ERROR where another message was expected."""

    def __init__(self, error: Error):
        self.error = error
        super().__init__(f"server error {getattr(error.code, 'name', error.code)} (seq {error.seq}): {error.text}")


class Unreachable(InputError):
    """No lipsync server answered at the URL."""


def open_client(url: str, package: str | None = None, timeout: float = 10.0):
    """The client for ``url``: :class:`Client` for ws:// and wss://, a gRPC client for grpc:// and grpcs://.

    Both are async context managers with ``capabilities.packages``, ``stream()`` and ``window()``.
    """
    if url.startswith(("grpc://", "grpcs://")):
        from .rpc.client import GrpcClient

        return GrpcClient(url, package=package, timeout=timeout)
    if not url.startswith(("ws://", "wss://")):
        raise InputError(f"{url}: expected ws://HOST:PORT/ws, wss://..., grpc://HOST:PORT or grpcs://HOST:PORT")
    return Client(url, package=package, timeout=timeout)


def decode_jpeg(frame: Frame) -> np.ndarray:
    """RGB uint8 [H, W, 3] image of a FRAME's JPEG."""
    try:
        return jpeg.decode_jpeg(frame.jpeg)
    except LipsyncError:
        raise LipsyncError(f"FRAME seq {frame.seq}: JPEG does not decode") from None


class BaseClient:
    """What the websocket and the gRPC client share: ``async with``, seq numbers, 40 ms chunks."""

    _seq = 0
    lost: list          # ERROR INTERNAL answers to chunks of a stream: frames the server could not render

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF_FFFF
        return self._seq

    @staticmethod
    def chunks(samples: np.ndarray, rate: int) -> list[np.ndarray]:
        """``samples`` in 40 ms pieces; the last one padded with silence."""
        step = rate * CHUNK_MS // 1000
        n = -(-len(samples) // step)
        padded = np.zeros(n * step, np.float32)
        padded[:len(samples)] = samples
        return [padded[i * step:(i + 1) * step] for i in range(n)]


class Client(BaseClient):
    """One websocket session.

    Parameters
    ----------
    url : str
        ``ws://HOST:PORT/ws`` or ``wss://...`` (a token goes in ``?token=``).
    encoding : {"binary", "json"}
        What this client sends and asks the server to send back.
    package : str, optional
        Package to switch to after the handshake.
    ssl : ssl.SSLContext, optional
        For ``wss://`` URLs whose certificate the system does not trust (a self-signed test pair).
    """

    def __init__(self, url: str, encoding: str = "binary", package: str | None = None,
                 timeout: float = 10.0, max_size: int = MAX_MESSAGE_BYTES, ssl=None):
        if encoding not in ("binary", "json"):
            raise InputError(f"encoding {encoding!r}: expected 'binary' or 'json'")
        self.url, self.encoding, self.package = url, encoding, package
        self.timeout, self.max_size, self.ssl = timeout, max_size, ssl
        self.ws = None
        self.capabilities: Capabilities | None = None
        self.lost: list[Error] = []

    async def connect(self) -> Capabilities:
        try:
            self.ws = await asyncio.wait_for(
                connect(self.url, max_size=self.max_size, compression=None, open_timeout=self.timeout,
                        **({"ssl": self.ssl} if self.ssl is not None else {})),
                self.timeout)
        except InvalidStatus as exc:
            raise Unreachable(f"{self.url}: server refused the websocket: HTTP "
                              f"{exc.response.status_code} {exc.response.body[:200].decode(errors='replace')}") from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise Unreachable(f"{self.url}: no lipsync server answers ({exc}); "
                              "start one with `lipsync-serve models/NAME`") from None
        caps = await self.expect(Hello(seq=self.next_seq(), client="runtime.client", version=__version__,
                                       encoding=self.encoding), Capabilities)
        self.capabilities = caps
        if self.package:
            await self.send(SwitchPackage(seq=self.next_seq(), package=self.package))
        return caps

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    # ------------------------------------------------------------ raw messages

    async def send(self, msg: Message) -> None:
        await self.ws.send(encode_as(msg, self.encoding))

    async def send_raw(self, data: bytes | str) -> None:
        """Send bytes or text as they are (tests use this for bad messages)."""
        await self.ws.send(data)

    async def recv(self, timeout: float | None = None) -> Message:
        data = await asyncio.wait_for(self.ws.recv(), timeout or self.timeout)
        return decode(data, self.max_size) if isinstance(data, bytes) else decode_json(data, self.max_size)

    async def expect(self, msg: Message, kind: type[Message]) -> Message:
        """Send ``msg`` and return the reply of type ``kind`` (ServerError on ERROR)."""
        await self.send(msg)
        reply = await self.recv()
        if isinstance(reply, Error):
            raise ServerError(reply)
        if not isinstance(reply, kind):
            raise LipsyncError(f"expected {kind.__name__}, got {type(reply).__name__}")
        return reply

    # ------------------------------------------------------------ requests

    async def stats(self) -> dict:
        return (await self.expect(StatsRequest(seq=self.next_seq()), Stats)).stats

    async def switch(self, package: str) -> None:
        """Switch this session's package; ServerError if the server does not have it."""
        await self.send(SwitchPackage(seq=self.next_seq(), package=package))
        self.package = package

    async def window(self, frame_id: int, samples: np.ndarray, rate: int = SAMPLE_RATE,
                     fmt: SampleFormat = SampleFormat.INT16, package: str = "") -> Frame:
        """Stateless mode: render ``frame_id`` from a 640 ms window of float samples."""
        msg = WindowRequest(seq=self.next_seq(), frame_id=frame_id, sample_rate=rate, sample_format=fmt,
                            package=package, pcm=float32_to_pcm(samples, fmt))
        return await self.expect(msg, Frame)

    async def stream(self, samples: np.ndarray, rate: int = SAMPLE_RATE, fmt: SampleFormat = SampleFormat.INT16,
                     realtime: bool = False, package: str = "") -> AsyncIterator[tuple[Frame, float]]:
        """Streaming mode: send ``samples`` in 40 ms chunks, yield (FRAME, round-trip seconds) in order.

        The last partial chunk is padded with silence. With ``realtime``, chunks
        are paced at one per 40 ms, as a microphone would send them; otherwise as
        fast as the server answers. The round trip is from sending a chunk to
        receiving its frame, so it includes the server's look-ahead wait. A frame the
        server could not render (ERROR INTERNAL: a render process died, say) is left
        out and kept in ``self.lost``; the session goes on. Any other ERROR raises
        ServerError.
        """
        pieces = self.chunks(samples, rate)
        n = len(pieces)
        sent: dict[int, float] = {}
        t0 = time.perf_counter()

        async def producer():
            for i, piece in enumerate(pieces):
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + i * CHUNK_MS / 1000 - time.perf_counter()))
                seq = self.next_seq()
                sent[seq] = time.perf_counter()
                await self.send(AudioChunk(seq=seq, sample_rate=rate, sample_format=fmt, package=package,
                                           pcm=float32_to_pcm(piece, fmt)))

        if n == 0:
            return
        last_seq = (self._seq + n) & 0xFFFF_FFFF      # the seq the producer will give the last chunk
        task = asyncio.create_task(producer())
        try:
            while True:
                msg = await self.recv()
                if isinstance(msg, Error):
                    if msg.code != ErrorCode.INTERNAL:
                        raise ServerError(msg)
                    self.lost.append(msg)                 # that frame is lost, the stream goes on
                    sent.pop(msg.seq, None)
                    if msg.seq == last_seq:
                        break
                    continue
                if isinstance(msg, Frame):
                    # a server under back-pressure drops the oldest frames: those seqs never come
                    yield msg, time.perf_counter() - sent.pop(msg.seq, time.perf_counter())
                    if msg.seq == last_seq:
                        break
            await task
        finally:
            task.cancel()


def window_around(samples: np.ndarray, frame: int, rate: int = SAMPLE_RATE, fps: float = 1000 / CHUNK_MS) -> np.ndarray:
    """The 640 ms of ``samples`` centred on video frame ``frame``'s middle, zero-padded at the ends."""
    half = rate * WINDOW_MS // 2000
    centre = int(round((frame + 0.5) * rate / fps))
    out = np.zeros(2 * half, np.float32)
    lo, hi = centre - half, centre + half
    src = samples[max(lo, 0):max(min(hi, len(samples)), 0)]
    out[max(-lo, 0):max(-lo, 0) + len(src)] = src
    return out
