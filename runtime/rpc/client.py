"""A Python client for the gRPC service, shaped like :class:`runtime.client.Client`.

    async with GrpcClient("grpc://127.0.0.1:50051") as c:
        print([p.name for p in await c.packages()])
        async for frame, round_trip_s in c.stream(samples, 16000, realtime=True):
            ...                                   # runtime.protocol.Frame, tier included

URLs: ``grpc://HOST:PORT`` (plain) or ``grpcs://HOST:PORT`` (TLS), with ``?token=T``
for a server started with ``--token`` (sent as ``authorization: Bearer T``).
Frames come back as :class:`runtime.protocol.Frame` (``tier`` set), errors inside a
stream raise :class:`runtime.client.ServerError`, and failed calls raise
``grpc.aio.AioRpcError`` with the status code of docs/grpc.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..client import BaseClient, ServerError, Unreachable
from ..errors import InputError
from ..features import SAMPLE_RATE
from ..protocol import CHUNK_MS, MAX_MESSAGE_BYTES, Error, ErrorCode, Frame, FrameStatus, SampleFormat, float32_to_pcm
from . import lipsync_pb2 as pb
from . import lipsync_pb2_grpc as pb_grpc


def from_pb(f: pb.Frame) -> Frame:
    b = f.bounds
    return Frame(seq=f.seq, status=FrameStatus(f.status), base_frame=f.base_frame, server_us=f.server_us,
                 bounds=(b.x0, b.y0, b.x1, b.y1), jpeg=f.jpeg, tier=f.tier)


def from_pb_error(e: pb.Error) -> Error:
    try:
        code = ErrorCode(e.code)
    except ValueError:
        code = e.code
    return Error(seq=e.seq, code=code, text=e.text)


class GrpcClient(BaseClient):
    """One channel to a ``lipsync-serve --grpc-port`` server.

    Parameters
    ----------
    url : str
        ``grpc://HOST:PORT`` or ``grpcs://HOST:PORT``, optionally ``?token=T``.
    package : str, optional
        The package :meth:`stream` uses unless told otherwise.
    root_certificates : bytes, optional
        PEM of the CA (or self-signed certificate) to trust for ``grpcs://``.
    """

    def __init__(self, url: str, package: str | None = None, timeout: float = 10.0,
                 root_certificates: bytes | None = None, max_size: int = MAX_MESSAGE_BYTES):
        parts = urlsplit(url)
        if parts.scheme not in ("grpc", "grpcs") or not parts.hostname or not parts.port:
            raise InputError(f"{url}: expected grpc://HOST:PORT or grpcs://HOST:PORT")
        self.url, self.package, self.timeout = url, package, timeout
        self.target = f"[{parts.hostname}]:{parts.port}" if ":" in parts.hostname else f"{parts.hostname}:{parts.port}"
        token = (parse_qs(parts.query).get("token") or [None])[0]
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.tls, self.root_certificates, self.max_size = parts.scheme == "grpcs", root_certificates, max_size
        self.channel = None
        self.stub = None
        self.capabilities = None
        self.lost: list[Error] = []

    async def connect(self):
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", self.max_size)]
        if self.tls:
            creds = grpc.ssl_channel_credentials(root_certificates=self.root_certificates)
            self.channel = grpc.aio.secure_channel(self.target, creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(self.target, options=options)
        self.stub = pb_grpc.LipsyncStub(self.channel)
        try:
            await asyncio.wait_for(self.channel.channel_ready(), self.timeout)
            names = [p.name for p in await self.packages()]
        except (asyncio.TimeoutError, grpc.aio.AioRpcError) as exc:
            await self.close()
            if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise Unreachable(f"{self.url}: the server wants its token: add ?token=TOKEN to the URL") from None
            detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "no answer"
            raise Unreachable(f"{self.url}: no lipsync gRPC server answers ({detail}); start one with "
                              "`lipsync-serve models/ --grpc-port PORT`") from None
        self.capabilities = SimpleNamespace(packages=tuple(names))
        return self.capabilities

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    # ------------------------------------------------------------ calls
    async def health(self, service: str = "") -> str:
        """The standard health service's answer for ``service``: "SERVING", ..."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def packages(self) -> list:
        return list((await self.stub.ListPackages(pb.ListPackagesRequest(), metadata=self.metadata,
                                                  timeout=self.timeout)).packages)

    async def package_info(self, name: str):
        return await self.stub.GetPackageInfo(pb.PackageRequest(name=name), metadata=self.metadata,
                                              timeout=self.timeout)

    async def load(self, name: str):
        return await self.stub.LoadPackage(pb.PackageRequest(name=name), metadata=self.metadata, timeout=60)

    async def unload(self, name: str) -> None:
        await self.stub.UnloadPackage(pb.PackageRequest(name=name), metadata=self.metadata, timeout=self.timeout)

    def _window(self, frame_id: int, samples: np.ndarray, rate: int, fmt: SampleFormat, package: str):
        return pb.WindowRequest(seq=self.next_seq(), frame_id=frame_id, sample_rate=rate, sample_format=int(fmt),
                                package=package, pcm=float32_to_pcm(samples, fmt))

    async def window(self, frame_id: int, samples: np.ndarray, rate: int = SAMPLE_RATE,
                     fmt: SampleFormat = SampleFormat.INT16, package: str = "") -> Frame:
        """Generate: one 640 ms window centred on ``frame_id`` -> its Frame."""
        reply = await self.stub.Generate(self._window(frame_id, samples, rate, fmt, package),
                                         metadata=self.metadata, timeout=self.timeout)
        return from_pb(reply)

    async def windows(self, requests, rate: int = SAMPLE_RATE, fmt: SampleFormat = SampleFormat.INT16,
                      package: str = "") -> list[Frame | Error]:
        """GenerateBatch: ``requests`` = [(frame_id, samples), ...] -> a Frame or an Error for each, in order."""
        batch = pb.GenerateBatchRequest(windows=[self._window(f, x, rate, fmt, package) for f, x in requests])
        reply = await self.stub.GenerateBatch(batch, metadata=self.metadata, timeout=max(self.timeout, 60))
        return [from_pb(r.frame) if r.WhichOneof("message") == "frame" else from_pb_error(r.error)
                for r in reply.results]

    async def stream(self, samples: np.ndarray, rate: int = SAMPLE_RATE, fmt: SampleFormat = SampleFormat.INT16,
                     realtime: bool = False, package: str = "") -> AsyncIterator[tuple[Frame, float]]:
        """Stream: ``samples`` in 40 ms chunks; yields (Frame, round-trip seconds) in order.

        As :meth:`runtime.client.Client.stream`: the last partial chunk is padded
        with silence; ``realtime`` paces one chunk per 40 ms. An ERROR in the
        stream raises ServerError, but for ERROR INTERNAL (a frame the server could
        not render), which is kept in ``self.lost``. When the server ends the call first (idle,
        replies unread, shutdown), sending stops and its status is raised as
        ``grpc.aio.AioRpcError``; a call it ends with OK just ends the frames.
        """
        pieces = self.chunks(samples, rate)
        n = len(pieces)
        if n == 0:
            return
        package = package or self.package or ""
        sent: dict[int, float] = {}
        call = self.stub.Stream(metadata=self.metadata)
        writes = _Writes(call)

        async def send():
            if not await writes.connected():                  # refused (token, capacity): its status is read below
                return
            t0 = time.perf_counter()
            for i, piece in enumerate(pieces):
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + i * CHUNK_MS / 1000 - time.perf_counter()))
                seq = self.next_seq()
                sent[seq] = time.perf_counter()
                if not await writes.write(pb.StreamRequest(audio=pb.AudioChunk(
                        seq=seq, sample_rate=rate, sample_format=int(fmt), package=package,
                        pcm=float32_to_pcm(piece, fmt)))):
                    return
            await writes.close()

        writer = asyncio.create_task(send())
        got = 0
        try:
            while got < n:
                reply = await writes.read()
                if reply is None:                             # the server ended the call with OK
                    break
                kind = reply.WhichOneof("message")
                if kind == "error":
                    error = from_pb_error(reply.error)
                    if error.code != ErrorCode.INTERNAL:
                        raise ServerError(error)
                    self.lost.append(error)               # a frame the server could not render; go on
                    sent.pop(error.seq, None)
                    got += 1
                    continue
                if kind != "frame":
                    continue
                frame = from_pb(reply.frame)
                yield frame, time.perf_counter() - sent.pop(frame.seq, time.perf_counter())
                got += 1
        finally:
            writer.cancel()
            call.cancel()

    async def stats(self) -> dict:
        """The server's counters, asked inside a short stream."""
        seq = self.next_seq()
        call = self.stub.Stream(metadata=self.metadata)
        writes = _Writes(call)
        try:
            if await writes.connected() and await writes.write(pb.StreamRequest(stats=pb.StatsRequest(seq=seq))):
                while (reply := await writes.read()) is not None:
                    if reply.WhichOneof("message") == "stats":
                        return json.loads(reply.stats.json)
        finally:
            call.cancel()
        raise ServerError(Error(seq=seq, code=ErrorCode.INTERNAL, text="no STATS reply"))


class _Writes:
    """One Stream call's reads and writes, so that a call the server ended is never written to.

    A write into a call that the server has already ended fails inside grpc, and grpc then
    replaces the call's status with its own INTERNAL ("Internal error from Core"), hiding why
    the server ended it. So a write happens only while the call is open, a failed write stops
    the writing, and the status reported is the first one the call got: the server's.
    """

    def __init__(self, call):
        self.call = call
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self.failed_write = False
        call.add_done_callback(self._done)

    def _done(self, call) -> None:
        # Called as the call gets its first status; a later INTERNAL from a failed write does not
        # call it again. The status is set by now, so code() and details() finish without waiting.
        if self.status is None:
            self.status, self.details = _result(call.code()), _result(call.details())

    async def connected(self) -> bool:
        """Wait for the server to take the call; False when it ended it instead."""
        try:
            await self.call.wait_for_connection()
        except grpc.aio.AioRpcError:
            return False
        return not self.call.done()

    async def write(self, request) -> bool:
        """Send ``request``; False (and no more writes) once the call has ended."""
        if self.failed_write or self.call.done():
            return False
        try:
            await self.call.write(request)
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            self.failed_write = True
            return False
        return True

    async def close(self) -> None:
        """Half-close: the audio is over (the server answers what is pending)."""
        if not self.failed_write and not self.call.done():
            try:
                await self.call.done_writing()
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                self.failed_write = True

    async def read(self):
        """The next reply; None when the server ended the call with OK; its status raised otherwise."""
        try:
            reply = await self.call.read()
        except grpc.aio.AioRpcError as exc:
            if self.failed_write and self.status in (None, grpc.StatusCode.INTERNAL):
                # Our failed write's INTERNAL came first; the server's status is set once it is read.
                await asyncio.sleep(0.2)
                self.status, self.details = await self.call.code(), await self.call.details()
            raise self._server_status(exc) from None
        if reply is not grpc.aio.EOF:
            return reply
        code = await self.call.code()
        if code == grpc.StatusCode.OK:
            return None
        raise self._server_status(None)

    def _server_status(self, exc):
        if self.status is not None and self.status != grpc.StatusCode.OK:
            return grpc.aio.AioRpcError(self.status, grpc.aio.Metadata(), grpc.aio.Metadata(), self.details)
        return exc or grpc.aio.AioRpcError(grpc.StatusCode.UNKNOWN, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           "the call ended without a status")


def _result(coro):
    """The value of a coroutine that finishes without waiting (a finished call's code or details)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the call has no status yet")
